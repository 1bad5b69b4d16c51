"""--aikernel-jvm-tuning on, on real containers: Elasticsearch, Neo4j and Kafka through their real
clients; class-data archives made in the background, then mapped by the next start; a damaged or
foreign archive in the volume never stops a start.

The damaged-archive tests run ZooKeeper from an image of their own (the stand-in with one more
label: another image id, hence a cache volume no other run uses); they remove it and its volume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import secrets
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from pytest_aikernel import Settings, Stack
from pytest_aikernel.runtime.docker import (
    LABEL_CACHE,
    LABEL_CACHE_IMAGE,
    LABEL_SESSION,
    cache_volume_name,
)
from pytest_aikernel.services import _jvm, image_for, registry

from .test_snapshots import _aikernel

DATA = ("elasticsearch", "neo4j", "kafka")
#: the archive job waits CHECK_DELAY, then dumps niced: Elasticsearch's takes ~1 min here
ARCHIVE_TIMEOUT = 600.0


def tuned(settings: Settings, **changes: object) -> Settings:
    return dataclasses.replace(settings, jvm_tuning=True, runtime="docker", **changes)


def archive(settings: Settings, service: str) -> str:
    """The path of the service's archive with ``settings`` (Neo4j's name carries its knobs)."""
    knobs = registry()[service].jvm_knobs(settings)  # type: ignore[attr-defined]
    return _jvm.archive_path(_jvm.archive_of(knobs))


def archive_job(stack: Stack, service: str, timeout: float = ARCHIVE_TIMEOUT) -> str:
    """Wait until the service's archive job has ended; its log."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        code, text = stack.runtime.exec(service, _jvm.JOB_STATUS, {})
        if code == 0 and _jvm.job_ended(text):
            return text
        time.sleep(0.5)
    pytest.fail(f"{service}: the archive job did not end within {timeout:g} s: {text!r}")


def find_jvm(path: str) -> str:
    """Shell that sets ``pid`` to the JVM started with the archive ``path``."""
    return (
        'for d in /proc/[0-9]*; do if tr "\\0" "\\n" <"$d/cmdline" 2>/dev/null | '
        f'grep -qxF -e "-XX:SharedArchiveFile={path}"; then pid=${{d#/proc/}}; fi; done; '
    )


def maps_archive(stack: Stack, service: str) -> bool:
    """Whether the service's JVM (pid 1 in these stand-ins, or the one started with the archive)
    has its archive mapped."""
    path = archive(stack.settings, service)
    script = find_jvm(path) + f'[ -n "$pid" ] && grep -qF "{path}" "/proc/$pid/maps" && echo MAPPED'
    # as the JVM's own user: /proc/<pid>/maps of another user's process is not readable
    user = stack.runtime.exec(service, ["sh", "-c", "stat -c %u /proc/1"], {})[1].strip()
    text = stack.runtime.exec(service, ["sh", "-c", script], {}, user=user)[1]
    return "MAPPED" in text


# ---- the data services through their real clients -------------------------------------------


@pytest.fixture(scope="module")
def tuned_stack(aikernel_settings: Settings) -> Iterator[Stack]:
    stack = Stack(tuned(aikernel_settings))
    try:
        stack.start(DATA)
        yield stack
    finally:
        stack.stop()


def test_the_containers_run_with_the_knobs_and_a_cache_volume(
    tuned_stack: Stack, docker_api: docker.DockerClient
) -> None:
    for service in ("elasticsearch", "neo4j", "zookeeper", "kafka"):
        raw = docker_api.containers.get(tuned_stack.running(service).container_id)
        env = dict(e.split("=", 1) for e in raw.attrs["Config"]["Env"])
        variable = {"elasticsearch": "ES_JAVA_OPTS", "neo4j": "NEO4J_server_jvm_additional"}.get(
            service, "KAFKA_OPTS"
        )
        assert f"-XX:SharedArchiveFile={archive(tuned_stack.settings, service)}" in env[variable]
        [mount] = [m for m in raw.attrs["Mounts"] if m["Destination"] == _jvm.CDS_DIR]
        image_id = raw.attrs["Image"]
        assert mount["Name"] == cache_volume_name(_jvm.volume_name(service), image_id)
        labels = docker_api.volumes.get(mount["Name"]).attrs["Labels"]
        assert labels[LABEL_CACHE] == _jvm.volume_name(service)
        assert labels[LABEL_CACHE_IMAGE] == image_id
        assert LABEL_SESSION not in labels  # it outlives the stack


@pytest.mark.parametrize("service", ["elasticsearch", "neo4j"])
def test_the_heap_is_not_touched_up_front(tuned_stack: Stack, service: str) -> None:
    """no-pretouch: the image's own options ask for -XX:+AlwaysPreTouch; the JVM's command line
    ends with -XX:-AlwaysPreTouch after it (the last of a flag wins)."""
    path = archive(tuned_stack.settings, service)
    script = find_jvm(path) + 'tr "\\0" "\\n" <"/proc/$pid/cmdline" | grep AlwaysPreTouch'
    flags = tuned_stack.runtime.exec(service, ["sh", "-c", script], {})[1].split()
    assert flags[0] == "-XX:+AlwaysPreTouch", flags  # what the image asks for
    assert flags[-1] == "-XX:-AlwaysPreTouch", flags


def test_elasticsearch_client_indexes_and_searches(tuned_stack: Stack) -> None:
    es = tuned_stack["elasticsearch"]
    if not es.is_elasticsearch:
        pytest.skip("not Elasticsearch: elasticsearch-py 8 refuses other products")
    client = es.client()
    index = f"jvm-tuning-{uuid.uuid4().hex[:8]}"
    client.index(index=index, document={"name": "tuned", "n": 1}, refresh=True)
    hits = client.search(index=index, query={"match": {"name": "tuned"}})["hits"]["hits"]
    assert [h["_source"]["n"] for h in hits] == [1]
    assert client.count(index=index)["count"] == 1


def test_neo4j_driver_writes_and_reads(tuned_stack: Stack) -> None:
    with tuned_stack["neo4j"].driver() as driver:
        token = uuid.uuid4().hex
        driver.execute_query("CREATE (:Tuned {token: $t})", t=token)
        records, _, _ = driver.execute_query(
            "MATCH (n:Tuned {token: $t}) RETURN count(n) AS n", t=token
        )
        assert records[0]["n"] == 1


def test_kafka_produces_and_consumes(tuned_stack: Stack) -> None:
    from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

    kafka = tuned_stack["kafka"]
    topic = f"jvm-tuning-{uuid.uuid4().hex[:8]}"
    admin = kafka.admin()  # kept: a client that goes away fails its futures
    for future in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        future.result(timeout=30)
    payload = uuid.uuid4().hex.encode()
    kafka.produce(topic, payload)
    msg = kafka.consume_until(topic, lambda m: m.value() == payload, timeout=30)
    assert msg.value() == payload


def test_archives_are_made_in_the_background_and_mapped_by_the_next_start(
    tuned_stack: Stack, aikernel_settings: Settings
) -> None:
    for service in ("zookeeper", "kafka", "neo4j", "elasticsearch"):
        log = archive_job(tuned_stack, service)
        path = archive(tuned_stack.settings, service)
        assert f"made {path}" in log or "is in use" in log, log
    again = Stack(tuned(aikernel_settings))
    try:
        again.start(["kafka"])  # and its zookeeper
        for service in ("zookeeper", "kafka"):
            assert maps_archive(again, service), service
            assert "is in use" in archive_job(again, service)
        assert again["kafka"].admin().list_topics(timeout=10).brokers
    finally:
        again.stop()


# ---- damaged and foreign archives ------------------------------------------------------------


@pytest.fixture
def own_zookeeper(
    aikernel_settings: Settings, docker_api: docker.DockerClient
) -> Iterator[Settings]:
    """Settings that run ZooKeeper from an image of this test's own (a new image id)."""
    base = image_for("zookeeper", aikernel_settings)
    tag = f"aikernel-jvmtest/zookeeper:{secrets.token_hex(4)}"
    dockerfile = f"FROM {base}\nLABEL aikernel.jvm-test={tag}\n".encode()
    image, _ = docker_api.images.build(fileobj=io.BytesIO(dockerfile), tag=tag, pull=False, rm=True)
    try:
        yield tuned(aikernel_settings, images={**aikernel_settings.images, "zookeeper": tag})
    finally:
        name = cache_volume_name(_jvm.volume_name("zookeeper"), str(image.id))
        for remove in (
            lambda: docker_api.volumes.get(name).remove(force=True),
            lambda: docker_api.images.remove(tag, force=True),
        ):
            with contextlib.suppress(docker.errors.NotFound):
                remove()


def start_zookeeper(settings: Settings) -> Stack:
    stack = Stack(settings)
    try:
        stack.start(["zookeeper"])
    except BaseException:
        stack.stop()
        raise
    return stack


def damage(stack: Stack, how: str) -> None:
    """Damage the archive in ZooKeeper's volume (as the JVM's user, who owns it)."""
    path = _jvm.archive_path("zookeeper")
    commands = {
        # a valid header, 64 KiB of garbage in the middle: only checksums find it
        "middle": f"chmod u+w {path} && size=$(stat -c %s {path}) && "
        f"dd if=/dev/urandom of={path} bs=65536 count=1 seek=$((size / 131072)) conv=notrunc",
        "garbage": f"rm -f {path} && head -c 100000 /dev/urandom > {path}",
        "truncated": f"chmod u+w {path} && truncate -s 4096 {path}",
    }
    code, text = stack.runtime.exec("zookeeper", ["sh", "-c", commands[how]], {})
    assert code == 0, text


@pytest.mark.parametrize("how", ["middle", "garbage", "truncated"])
def test_a_damaged_archive_does_not_stop_a_start_and_is_made_again(
    own_zookeeper: Settings, how: str
) -> None:
    first = start_zookeeper(own_zookeeper)
    try:
        assert f"made {_jvm.archive_path('zookeeper')}" in archive_job(first, "zookeeper")
        damage(first, how)
    finally:
        first.stop()
    second = start_zookeeper(own_zookeeper)  # ready: its probe (srvr) passed
    try:
        assert not maps_archive(second, "zookeeper")
        log = archive_job(second, "zookeeper")
        assert "has no usable" in log and f"made {_jvm.archive_path('zookeeper')}" in log, log
    finally:
        second.stop()
    third = start_zookeeper(own_zookeeper)
    try:
        assert maps_archive(third, "zookeeper")
    finally:
        third.stop()


def test_tuning_off_mounts_no_volume_and_adds_no_options(
    aikernel_settings: Settings, docker_api: docker.DockerClient
) -> None:
    stack = Stack(dataclasses.replace(aikernel_settings, jvm_tuning=False))
    try:
        stack.start(["zookeeper"])
        raw = docker_api.containers.get(stack.running("zookeeper").container_id)
        assert not [m for m in raw.attrs["Mounts"] if m["Destination"] == _jvm.CDS_DIR]
        env = dict(e.split("=", 1) for e in raw.attrs["Config"]["Env"])
        assert env["KAFKA_OPTS"] == (
            "-Dzookeeper.4lw.commands.whitelist=ruok,srvr -XX:TieredStopAtLevel=1"
        )
    finally:
        stack.stop()


def _neo4j_jvm(settings: Settings, docker_api: docker.DockerClient) -> tuple[str, list[str]]:
    """(NEO4J_server_jvm_additional, the server JVM's command line) of a Neo4j started with
    ``settings``, which answers a query."""
    stack = Stack(settings)
    try:
        stack.start(["neo4j"])
        raw = docker_api.containers.get(stack.running("neo4j").container_id)
        mounted = [m for m in raw.attrs["Mounts"] if m["Destination"] == _jvm.CDS_DIR]
        code, out = raw.exec_run(
            ["sh", "-c", "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done"]
        )
        assert code == 0, out
        java = [ln for ln in out.decode().splitlines() if ln and ln.split()[0].endswith("java")]
        assert java, out.decode()[-2000:]
        with stack["neo4j"].driver() as driver:
            assert driver.execute_query("RETURN 1 AS one").records[0]["one"] == 1
        env = dict(e.split("=", 1) for e in raw.attrs["Config"]["Env"])
        assert bool(mounted) == (archive(settings, "neo4j") in java[0])
        return env.get("NEO4J_server_jvm_additional", ""), java[0].split()
    finally:
        stack.stop()


def test_a_list_of_knobs_starts_the_jvm_with_those_only(
    aikernel_settings: Settings, docker_api: docker.DockerClient
) -> None:
    """--aikernel-jvm-tuning c1 and cds: Neo4j's JVM gets the options of the named one only
    (its archive and volume with cds alone, C1 with c1 alone)."""
    extra, java = _neo4j_jvm(tuned(aikernel_settings, jvm_knobs=("c1",)), docker_api)
    assert extra.split() == ["-XX:TieredStopAtLevel=1"]
    assert f"-XX:SharedArchiveFile={_jvm.archive_path('neo4j')}" not in java
    extra, java = _neo4j_jvm(tuned(aikernel_settings, jvm_knobs=("cds",)), docker_api)
    assert "-XX:TieredStopAtLevel=1" not in extra.split()
    assert f"-XX:SharedArchiveFile={_jvm.archive_path('neo4j')}" in extra.split()
    assert f"-XX:SharedArchiveFile={_jvm.archive_path('neo4j')}" in java


# ---- carried between machines: aikernel snapshots export / import ---------------------------


def test_neo4j_reads_its_signed_jar_as_unsigned_and_archives_its_classes(
    tuned_stack: Stack,
) -> None:
    """unsigned-jars: the properties file is in the container and named on the JVM's command
    line, and the archive made with it holds the classes of the signed eclipse-collections jar
    (an archive leaves out the classes of a jar the JVM reads as signed)."""
    assert archive_job(tuned_stack, "neo4j")
    path = archive(tuned_stack.settings, "neo4j")
    assert path.endswith("/neo4j.unsigned.jsa")
    code, text = tuned_stack.runtime.exec("neo4j", ["cat", _jvm.JAR_SECURITY_FILE], {})
    assert code == 0 and f"jdk.jar.disabledAlgorithms={_jvm.JAR_DISABLED}" in text, text
    # the JVM's own java and class path, its security properties; the archive's dictionary
    script = find_jvm(path) + (
        'java=$(tr "\\0" "\\n" </proc/$pid/cmdline | head -1); '
        'cp=$(tr "\\0" "\\n" </proc/$pid/cmdline | grep -A1 -xF -e -cp | tail -1); '
        'props=$(tr "\\0" "\\n" </proc/$pid/cmdline | grep -e "^-Djava.security.properties="); '
        f'"$java" -Xshare:on -XX:SharedArchiveFile={path} "$props" '
        '-XX:+PrintSharedArchiveAndExit -XX:+PrintSharedDictionary -cp "$cp" 2>&1 | '
        'grep -c "org.eclipse.collections.impl."'
    )
    code, text = tuned_stack.runtime.exec("neo4j", ["sh", "-c", script], {})
    assert int(text.strip() or 0) > 100, text
    # and the transaction logs are not filled up front (no-prealloc)
    with tuned_stack["neo4j"].driver() as driver:
        records = driver.execute_query(
            "SHOW SETTINGS YIELD name, value WHERE name = 'db.tx_log.preallocate' RETURN value"
        ).records
    assert [r["value"] for r in records] == ["false"]


def test_export_and_import_carry_an_archive_to_an_engine_without_it(
    own_zookeeper: Settings, docker_api: docker.DockerClient, tmp_path: Path
) -> None:
    first = start_zookeeper(own_zookeeper)
    try:
        assert f"made {_jvm.archive_path('zookeeper')}" in archive_job(first, "zookeeper")
        image_id = docker_api.containers.get(first.running("zookeeper").container_id).attrs["Image"]
    finally:
        first.stop()
    name = cache_volume_name(_jvm.volume_name("zookeeper"), image_id)
    folder = tmp_path / "ci-cache"
    out = _aikernel(tmp_path / "xdg", "snapshots", "export", str(folder)).stderr
    assert f"exported cache volume {name}" in out, out
    assert (folder / f"cache-{name}.tar").stat().st_size > 1_000_000  # the archive, not a stub
    docker_api.volumes.get(name).remove()  # as on a new CI machine
    out = _aikernel(tmp_path / "xdg", "snapshots", "import", str(folder)).stderr
    assert f"imported cache volume {name}" in out, out
    labels = docker_api.volumes.get(name).attrs["Labels"]
    assert labels[LABEL_CACHE] == _jvm.volume_name("zookeeper")
    assert labels[LABEL_CACHE_IMAGE] == image_id
    # the imported volume is not written over by a second import
    again = _aikernel(tmp_path / "xdg", "snapshots", "import", str(folder)).stderr
    assert f"the cache volume {name} exists" in again, again
    second = start_zookeeper(own_zookeeper)
    try:
        assert maps_archive(second, "zookeeper")  # the first start on this "machine" maps it
    finally:
        second.stop()
