"""--aikernel-jvm-tuning: the JVM services' specs with it on and off, checked without Docker."""

from __future__ import annotations

import io
import shlex
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from pytest_aikernel.lease import service_keys
from pytest_aikernel.runtime import ContainerSpec
from pytest_aikernel.runtime.docker import (
    LABEL_CACHE,
    LABEL_CACHE_IMAGE,
    DockerRuntime,
    _tar_dirs,
    cache_volume_name,
)
from pytest_aikernel.secrets import SecretStore
from pytest_aikernel.services import StackContext, _jvm, registry
from pytest_aikernel.settings import Settings

from .test_specs import running

JVM_SERVICES = ("elasticsearch", "neo4j", "zookeeper", "kafka")
#: the archive of each service's JVM with tuning on; Neo4j's holds the classes of its signed jar
NAME = {**{s: s for s in JVM_SERVICES}, "neo4j": "neo4j.unsigned"}
ARCHIVE = {s: f"/aikernel-jvm/{NAME[s]}.jsa" for s in JVM_SERVICES}


def spec_of(service: str, **settings: Any) -> tuple[ContainerSpec, StackContext]:
    ctx = StackContext(
        settings=Settings(**settings), secrets=SecretStore(), services=frozenset(JVM_SERVICES)
    )
    ctx.running["zookeeper"] = running("zookeeper", {2181: 40000})
    return registry()[service].container(ctx), ctx


def old_spec(service: str, ctx: StackContext, new: ContainerSpec) -> ContainerSpec:
    """The spec each service had before --aikernel-jvm-tuning existed."""
    if service == "elasticsearch":
        return ContainerSpec(
            image="docker.elastic.co/elasticsearch/elasticsearch:8.17.4",
            env={
                "discovery.type": "single-node",
                "xpack.security.enabled": "false",
                "cluster.routing.allocation.disk.threshold_enabled": "false",
                "ES_JAVA_OPTS": "-Xms512m -Xmx512m",
            },
            ports=(9200,),
            tmpfs={"/usr/share/elasticsearch/data": "mode=0777"},
            memory_mb=512 + 384,  # a pod's memory request: heap and the JVM's own
        )
    if service == "neo4j":
        return ContainerSpec(
            image="neo4j:5.26",
            env={
                "NEO4J_AUTH": f"neo4j/{ctx.secrets.get('neo4j.password')}",
                "NEO4J_server_memory_heap_initial__size": "256m",
                "NEO4J_server_memory_heap_max__size": "256m",
                "NEO4J_server_memory_pagecache_size": "64m",
                "NEO4J_dbms_usage__report_enabled": "false",
            },
            ports=(7687, 7474),
            tmpfs={"/data": ""},
            memory_mb=256 + 64 + 256,  # a pod's memory request: heap, page cache, the JVM's own
        )
    if service == "zookeeper":
        return ContainerSpec(
            image="confluentinc/cp-zookeeper:7.5.3",
            env={
                "ZOOKEEPER_CLIENT_PORT": "2181",
                "ZOOKEEPER_TICK_TIME": "2000",
                "KAFKA_HEAP_OPTS": "-Xms64m -Xmx128m",
                "KAFKA_OPTS": "-Dzookeeper.4lw.commands.whitelist=ruok,srvr -XX:TieredStopAtLevel=1",
            },
            ports=(2181,),
        )
    host_port = new.host_ports[29092]  # chosen free when the spec is made
    return ContainerSpec(
        image="confluentinc/cp-kafka:7.5.3",
        env={
            "KAFKA_BROKER_ID": "1",
            "KAFKA_ZOOKEEPER_CONNECT": "zookeeper:2181",
            "KAFKA_LISTENERS": "INTERNAL://0.0.0.0:9092,HOST://0.0.0.0:29092",
            "KAFKA_ADVERTISED_LISTENERS": f"INTERNAL://kafka:9092,HOST://127.0.0.1:{host_port}",
            "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "INTERNAL:PLAINTEXT,HOST:PLAINTEXT",
            "KAFKA_INTER_BROKER_LISTENER_NAME": "INTERNAL",
            "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
            "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
            "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
            "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
            "KAFKA_ZOOKEEPER_SESSION_TIMEOUT_MS": "6000",
            "KAFKA_HEAP_OPTS": "-Xms256m -Xmx256m",
            "KAFKA_OPTS": "-XX:TieredStopAtLevel=1",
        },
        ports=(29092,),
        host_ports={29092: host_port},
    )


@pytest.mark.parametrize("service", JVM_SERVICES)
def test_tuning_off_gives_the_spec_of_before(service: str) -> None:
    spec, ctx = spec_of(service, jvm_tuning=False)
    assert spec == old_spec(service, ctx, spec)
    assert spec.volumes == {}
    assert registry()[service].jvm_knobs(ctx.settings) == ()  # type: ignore[attr-defined]


@pytest.mark.parametrize("service", JVM_SERVICES)
def test_tuning_on_only_adds_to_the_documented_variables(service: str) -> None:
    on, ctx = spec_of(service)  # the default is on
    off = old_spec(service, ctx, on)
    variable = registry()[service].jvm_options_env  # type: ignore[attr-defined]
    documented = {
        "elasticsearch": "ES_JAVA_OPTS",
        "neo4j": "NEO4J_server_jvm_additional",
        "zookeeper": "KAFKA_OPTS",
        "kafka": "KAFKA_OPTS",
    }
    assert variable == documented[service]
    # what the spec had stays, first; the knobs' options come after it (later options win)
    before = off.env.get(variable, "")
    assert on.env[variable].startswith(before)
    added = shlex.split(on.env[variable][len(before) :])
    assert "\n" not in on.env[variable]  # Neo4j's entrypoint appends one line
    for key, value in off.env.items():
        if key != variable:
            assert on.env[key] == value
    assert {k: v for k, v in on.env.items() if k not in off.env and k != variable} == {
        # Elasticsearch's launcher JVM (bin/elasticsearch's CLI) gets C1 through its variable
        "elasticsearch": {"xpack.ml.enabled": "false", "CLI_JAVA_OPTS": "-XX:TieredStopAtLevel=1"},
        # a setting of the official image's form (db.tx_log.preallocate)
        "neo4j": {"NEO4J_db_tx__log_preallocate": "false"},
    }.get(service, {})
    # class-data sharing: the archive in a volume of its own, checked, never required
    assert added[:5] == [
        "-Xshare:auto",
        f"-XX:SharedArchiveFile={ARCHIVE[service]}",
        "-XX:+VerifySharedSpaces",
        f"-XX:DumpLoadedClassList=/tmp/aikernel-jvm.{NAME[service]}.classlist",
        "-Xlog:cds=off",
    ]
    assert on.volumes == {f"jvm-{service}": "/aikernel-jvm"}
    if service in ("elasticsearch", "neo4j"):
        assert "-XX:TieredStopAtLevel=1" in added
        # the heap is not touched up front (their own options ask for it): last, so it wins
        assert added[-1] == "-XX:-AlwaysPreTouch"
    else:
        assert not any("AlwaysPreTouch" in a for a in added)
    assert "AlwaysPreTouch" not in on.env.get("CLI_JAVA_OPTS", "")
    files = dict(off.files)
    if service == "neo4j":
        # its signed jar is read as unsigned: a properties file of the JDK's, named by an option
        assert "-Djava.security.properties=/tmp/aikernel-jvm.security" in added
        content, mode = on.files["/tmp/aikernel-jvm.security"]
        assert mode == 0o644
        assert content.decode().splitlines()[-1] == (
            "jdk.jar.disabledAlgorithms=MD2, MD5, RSA, DSA, EC, SHA1 denyAfter 2019-01-01"
        )
        files["/tmp/aikernel-jvm.security"] = (content, mode)
    else:
        assert not any("java.security" in a for a in added)
    # nothing else of the spec changes
    assert (on.image, on.ports, on.tmpfs, on.files, on.command, on.entrypoint, on.user) == (
        off.image,
        off.ports,
        off.tmpfs,
        files,
        off.command,
        off.entrypoint,
        off.user,
    )


@pytest.mark.parametrize("service", JVM_SERVICES)
def test_no_archive_where_the_runtime_keeps_no_volumes(service: str) -> None:
    spec, ctx = spec_of(service, runtime="kubernetes")
    knobs = registry()[service].jvm_knobs(ctx.settings)  # type: ignore[attr-defined]
    assert "cds" not in [k.name for k in knobs]
    assert spec.volumes == {}
    assert "SharedArchiveFile" not in " ".join(spec.env.values())
    # nor a file: on Kubernetes it would cost the pod an init container
    assert "unsigned-jars" not in [k.name for k in knobs]
    assert spec.files == {}


def test_the_archive_is_named_after_what_it_can_hold() -> None:
    # Neo4j with its signed jar read as unsigned gets an archive of its own: one made before
    # (without those classes) is not kept by the job
    for chosen, name in [
        (("cds", "c1", "unsigned-jars"), "neo4j.unsigned"),
        (("cds", "c1"), "neo4j"),
    ]:
        knobs = registry()["neo4j"].jvm_knobs(Settings(jvm_knobs=chosen))  # type: ignore[attr-defined]
        assert _jvm.archive_of(knobs) == name
        [cds] = [k for k in knobs if k.name == "cds"]
        assert cds.volumes == {"jvm-neo4j": "/aikernel-jvm"}  # one volume per service either way
    assert _jvm.archive_of([_jvm.C1]) == ""
    # the other services have no knob with a tag
    for service in ("elasticsearch", "zookeeper", "kafka"):
        knobs = registry()[service].jvm_knobs(Settings())  # type: ignore[attr-defined]
        assert _jvm.archive_of(knobs) == service


def test_the_archive_job_reads_the_jvms_security_properties() -> None:
    # what the JVM reads as signed decides which classes the dump may archive
    assert '-Djava.security.properties=*) set -- "$@" "$a" ;;' in _jvm.JOB_SCRIPT


@pytest.mark.parametrize("service", JVM_SERVICES)
def test_jvm_tuning_is_part_of_the_reuse_key(service: str) -> None:
    assert "jvm_tuning" in registry()[service].shaped_by
    on = service_keys(Settings(jvm_tuning=True), [service])[service]
    off = service_keys(Settings(jvm_tuning=False), [service])[service]
    assert on != off


def test_other_services_do_not_depend_on_jvm_tuning() -> None:
    jvm = set(JVM_SERVICES)
    for name, svc in registry().items():
        if name not in jvm:
            assert "jvm_tuning" not in svc.shaped_by, name


def test_with_knobs_appends_options_and_adds_env_and_volumes() -> None:
    spec = ContainerSpec(image="i", env={"OPTS": "-Xmx1g", "A": "1"}, volumes={"v": "/v"})
    knobs = [
        _jvm.Knob("a", options=("-XX:X", "-XX:Y"), env={"B": "2"}),
        _jvm.Knob("b", options=("-XX:Z",), more={"CLI": ("-XX:C",)}, volumes={"w": "/w"}),
    ]
    out = _jvm.with_knobs(spec, "OPTS", knobs)
    assert out.env == {"OPTS": "-Xmx1g -XX:X -XX:Y -XX:Z", "A": "1", "B": "2", "CLI": "-XX:C"}
    assert out.volumes == {"v": "/v", "w": "/w"}
    assert out.files == {}
    with_file = _jvm.with_knobs(spec, "OPTS", [_jvm.Knob("f", files={"/tmp/f": (b"x", 0o600)})])
    assert with_file.files == {"/tmp/f": (b"x", 0o600)}
    assert _jvm.with_knobs(ContainerSpec(image="i"), "OPTS", knobs[:1]).env["OPTS"] == (
        "-XX:X -XX:Y"
    )
    assert _jvm.with_knobs(spec, "OPTS", []) == spec


class RecordingContext:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, list[str], Mapping[str, str]]] = []
        self.fail = fail

    def exec(self, service: str, cmd: list[str], env: Mapping[str, str]) -> tuple[int, str]:
        self.calls.append((service, cmd, env))
        if self.fail:
            raise RuntimeError("no container")
        return 0, ""


def test_after_ready_starts_the_archive_job_only_with_cds() -> None:
    ctx = RecordingContext()
    _jvm.after_ready(ctx, "neo4j", [_jvm.C1])  # type: ignore[arg-type]
    assert ctx.calls == []
    _jvm.after_ready(ctx, "neo4j", [_jvm.cds("neo4j"), _jvm.C1], delay=2)  # type: ignore[arg-type]
    [(service, cmd, env)] = ctx.calls
    assert service == "neo4j"
    assert cmd[:3] == ["sh", "-c", _jvm._LAUNCH]
    assert cmd[4:] == ["2", "/aikernel-jvm/neo4j.jsa", "/tmp/aikernel-jvm.neo4j.classlist"]
    assert env == {"AIKERNEL_JVM_JOB": _jvm.JOB_SCRIPT}
    # the exec returns at once: the job runs detached
    assert "nohup" in _jvm._LAUNCH and _jvm._LAUNCH.rstrip().endswith("&")
    # an exec that fails (external mode, a container gone) is not the test's problem
    _jvm.after_ready(RecordingContext(fail=True), "neo4j", [_jvm.cds("neo4j")])  # type: ignore[arg-type]


def test_one_job_checks_every_archive_of_a_container() -> None:
    knob = _jvm.cds("elasticsearch", {"CLI_JAVA_OPTS": "elasticsearch-cli"})
    assert knob.more == {"CLI_JAVA_OPTS": _jvm.cds_options("elasticsearch-cli")}
    ctx = RecordingContext()
    _jvm.after_ready(ctx, "elasticsearch", [knob], delay=0)  # type: ignore[arg-type]
    [(_service, cmd, _env)] = ctx.calls
    assert cmd[4:] == [
        "0",
        "/aikernel-jvm/elasticsearch.jsa",
        "/tmp/aikernel-jvm.elasticsearch.classlist",
        "/aikernel-jvm/elasticsearch-cli.jsa",
        "/tmp/aikernel-jvm.elasticsearch-cli.classlist",
    ]


def test_the_archive_job_keeps_a_good_archive_and_renames_a_new_one_into_place() -> None:
    script = _jvm.JOB_SCRIPT
    # a mapped, checksum-verified archive is kept; only then nothing is dumped
    assert '-Xshare:on -XX:SharedArchiveFile="$archive"' in script
    assert "-XX:+VerifySharedSpaces" in script
    # the new archive is written beside it and renamed (readers never see half a file)
    assert 'SharedArchiveFile="$tmp"' in script and 'mv -f "$tmp" "$archive"' in script
    # one job per container, and nothing outside a writable volume
    assert "mkdir /tmp/aikernel-jvm.lock" in script
    assert '[ -d "$dir" ] && [ -w "$dir" ]' in script


def test_cache_volume_names_and_mounts() -> None:
    image_id = "sha256:" + "ab" * 32
    assert cache_volume_name("jvm-kafka", image_id) == "aikernel-cache-jvm-kafka-abababababab"
    assert cache_volume_name("jvm-kafka", "") == "aikernel-cache-jvm-kafka-unknown"

    class Images:
        def get(self, _image: str) -> Any:
            return type("Image", (), {"id": image_id})()

    runtime = DockerRuntime("s1")
    runtime._client = type("Client", (), {"images": Images()})()  # type: ignore[assignment]
    spec = ContainerSpec(image="x:1", volumes={"jvm-kafka": "/aikernel-jvm"})
    [mount] = runtime._cache_volumes(spec)
    assert mount["Type"] == "volume"
    assert mount["Source"] == "aikernel-cache-jvm-kafka-abababababab"
    assert mount["Target"] == "/aikernel-jvm"
    labels = mount["VolumeOptions"]["Labels"]
    # no session label: removing a stack (or a dead session's leftovers) keeps it
    assert labels == {LABEL_CACHE: "jvm-kafka", LABEL_CACHE_IMAGE: image_id}


def test_cache_volume_roots_are_writable_by_any_user() -> None:
    data = _tar_dirs(["/aikernel-jvm", "/x/y"], 0o1777)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
    assert [(m.name, m.isdir(), m.mode) for m in members] == [
        ("aikernel-jvm", True, 0o1777),
        ("x/y", True, 0o1777),
    ]


@pytest.mark.parametrize(
    ("service", "changes", "expected"),
    [
        ("elasticsearch", {"elasticsearch_heap": "1g"}, 1024 + 384),
        ("elasticsearch", {"elasticsearch_heap": "786432k"}, 768 + 384),
        ("neo4j", {"neo4j_heap": "2g", "neo4j_pagecache": "128m"}, 2048 + 128 + 256),
    ],
)
def test_memory_request_follows_the_memory_settings(
    service: str, changes: dict[str, str], expected: int
) -> None:
    spec, _ = spec_of(service, **changes)
    assert spec.memory_mb == expected


def test_mebibytes_rounds_up() -> None:
    from pytest_aikernel.services.base import mebibytes

    assert mebibytes("1") == 1
    assert mebibytes("1048576") == 1
    assert mebibytes("1048577") == 2
    assert mebibytes("64M") == 64
    assert mebibytes("3g") == 3072


# ---- choosing the settings one by one ----------------------------------------------------------


def _resolve(value: str) -> Settings:
    from pytest_aikernel.settings import RawSources, resolve

    here = Path.cwd()
    raw = RawSources(cli={}, ini={}, env={"AIKERNEL_JVM_TUNING": value}, ini_dir=here, cwd=here)
    return resolve(raw, list(registry()))


@pytest.mark.parametrize(
    ("value", "knobs"),
    [
        ("on", ("cds", "c1", "no-ml", "unsigned-jars", "no-prealloc", "no-pretouch")),
        ("off", ()),
        ("no-prealloc,unsigned-jars", ("unsigned-jars", "no-prealloc")),
        ("c1", ("c1",)),
        ("no-ml, CDS", ("cds", "no-ml")),
    ],
)
def test_the_setting_chooses_which_knobs(value: str, knobs: tuple[str, ...]) -> None:
    settings = _resolve(value)
    assert settings.jvm_knobs == knobs
    assert settings.jvm_tuning == bool(knobs)


def test_an_unknown_knob_names_the_setting_and_the_choices() -> None:
    from pytest_aikernel.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        _resolve("c1,c2")
    assert str(info.value) == (
        "env AIKERNEL_JVM_TUNING: expected on, off or a comma-separated list of cds, c1, no-ml, "
        "unsigned-jars, no-prealloc, no-pretouch; "
        "got 'c1,c2' (c2 is not one of them)"
    )


def test_only_the_chosen_knobs_reach_the_spec() -> None:
    c1, _ = spec_of("elasticsearch", jvm_knobs=("c1",))
    opts = c1.env["ES_JAVA_OPTS"].split()
    assert "-XX:TieredStopAtLevel=1" in opts
    assert not any("SharedArchiveFile" in o for o in opts) and c1.volumes == {}
    assert "xpack.ml.enabled" not in c1.env
    assert "-XX:TieredStopAtLevel=1" in c1.env["CLI_JAVA_OPTS"].split()
    cds, _ = spec_of("elasticsearch", jvm_knobs=("cds", "no-ml"))
    opts = cds.env["ES_JAVA_OPTS"].split()
    assert "-XX:TieredStopAtLevel=1" not in opts
    assert f"-XX:SharedArchiveFile={ARCHIVE['elasticsearch']}" in opts
    assert cds.env["xpack.ml.enabled"] == "false"
    assert cds.volumes
    assert "-XX:-AlwaysPreTouch" not in opts  # no-pretouch not chosen
    kept, _ = spec_of("elasticsearch", jvm_knobs=("no-pretouch",))
    assert kept.env["ES_JAVA_OPTS"].split()[-1] == "-XX:-AlwaysPreTouch"
    # Neo4j has no machine learning: no-ml alone leaves it as with tuning off
    neo, ctx = spec_of("neo4j", jvm_knobs=("no-ml",))
    assert neo == old_spec("neo4j", ctx, neo)


def test_the_chosen_knobs_are_part_of_the_reuse_key() -> None:
    for service in JVM_SERVICES:
        assert "jvm_knobs" in registry()[service].shaped_by
    keys = {
        knobs: service_keys(Settings(jvm_knobs=knobs), ["elasticsearch"])["elasticsearch"]
        for knobs in [("cds", "c1", "no-ml"), ("c1",), ("cds",)]
    }
    assert len(set(keys.values())) == 3
