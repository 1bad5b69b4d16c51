"""The stack on Kubernetes: a single-node cluster built and started by ``tests/k8s/cluster``
(its own containerd, no Docker), the stand-in images imported into it. The foundation tests,
per-test fixtures under xdist, Kafka through its advertised forward, reuse, a killed run's
namespace and an unschedulable pod run with ``--aikernel-runtime kubernetes``; none of them
may leave a container on the Docker engine or a namespace on the cluster.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from .test_in_container import SELECTION

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "tests" / "k8s" / "cluster"
LABEL = "pytest-aikernel.session"


def _missing() -> str:
    if os.geteuid() != 0:
        return "root (the cluster makes a bridge, network namespaces and cgroups)"
    for tool in ("containerd", "runc", "ip", "openssl"):
        if shutil.which(tool) is None:
            return f"the {tool} command"
    if shutil.which("go") is None and not Path("/usr/local/go/bin/go").exists():
        return "Go (to build the cluster's binaries)"
    if not Path("/usr/lib/cni/bridge").exists():
        return "the CNI plugins (Debian package containernetworking-plugins)"
    if not os.environ.get("AIKERNEL_IMAGE_POSTGRES"):
        return "the stand-in images (AIKERNEL_IMAGE_* from tests/images/build)"
    try:
        import kubernetes  # noqa: F401
    except ImportError:
        return "the kubernetes client (pip install 'pytest-aikernel[kubernetes]')"
    return ""


pytestmark = pytest.mark.skipif(
    bool(_missing()), reason=f"a Kubernetes cluster here needs {_missing()}"
)


@pytest.fixture(scope="module")
def kube() -> Iterator[dict[str, str]]:
    """The environment of inner runs on the cluster (KUBECONFIG, the runtime setting)."""
    running = (
        subprocess.run(
            [str(CLUSTER), "status"], capture_output=True, timeout=120, check=False
        ).returncode
        == 0
    )
    began = time.monotonic()
    up = subprocess.run(
        [str(CLUSTER), "up"], capture_output=True, text=True, timeout=3600, check=False
    )
    assert up.returncode == 0, up.stderr[-4000:]
    match = re.search(r"^export KUBECONFIG=(\S+)$", up.stdout, re.MULTILINE)
    assert match is not None, up.stdout
    print(f"cluster up in {time.monotonic() - began:.1f} s")
    env = dict(os.environ)
    env["KUBECONFIG"] = match.group(1)
    env["AIKERNEL_RUNTIME"] = "kubernetes"
    yield env
    if not running:  # a cluster that ran before this module stays
        subprocess.run([str(CLUSTER), "down"], capture_output=True, timeout=300, check=False)


def _api(env: dict[str, str]) -> Any:
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(
        config_file=env["KUBECONFIG"], client_configuration=cfg, persist_config=False
    )
    return client.CoreV1Api(client.ApiClient(cfg))


def _namespaces(env: dict[str, str], session: str) -> list[str]:
    """Namespaces of ``session`` that are not being deleted."""
    items = _api(env).list_namespace(label_selector=f"{LABEL}={session}").items
    return [n.metadata.name for n in items if n.metadata.deletion_timestamp is None]


def _gone(env: dict[str, str], session: str, within: float = 60.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not _namespaces(env, session):
            return True
        time.sleep(0.5)
    return False


def _docker_containers(session: str) -> list[str]:
    try:
        client = docker.DockerClient(base_url="unix:///var/run/docker.sock")
    except Exception:
        return []
    try:
        return [
            c.name
            for c in client.containers.list(all=True, filters={"label": f"{LABEL}={session}"})
        ]
    finally:
        client.close()


def _pytest(
    env: dict[str, str], *args: str, cwd: Path = ROOT, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _aikernel_down(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``aikernel down`` in ``cwd`` (its reuse project) with ``env``."""
    return subprocess.run(
        [sys.executable, "-m", "pytest_aikernel", "down"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _session(text: str) -> str:
    found = re.search(r"\bsession (r?[0-9a-f]{12})\b", text) or re.search(
        r"\bnamespace [a-z-]+-(r?[0-9a-f]{12})\b", text
    )
    assert found is not None, text[-3000:]
    return found.group(1)


#: the foundation selection without its two Docker-only tests (container labels and published
#: ports; a container on the stack's Docker network)
K8S_SELECTION = [
    *SELECTION,
    "--deselect",
    "tests/integration/test_services.py::"
    "test_containers_are_labelled_and_published_on_the_bind_address_only",
    "--deselect",
    "tests/integration/test_services.py::"
    "test_a_container_on_the_stack_network_reaches_services_by_alias",
]


def test_foundation_tests_pass_on_kubernetes(kube: dict[str, str]) -> None:
    done = _pytest(kube, *K8S_SELECTION)
    text = done.stdout + done.stderr
    assert done.returncode == 0, text[-6000:]
    assert re.search(r"aikernel: Kubernetes https://\S+ \(context ", text), text[:3000]
    assert " failed" not in text and re.search(r"\b\d+ passed\b", text), text[-3000:]
    session = _session(text)
    assert _docker_containers(session) == [], "the Docker engine got containers"
    assert _gone(kube, session), f"the namespace of session {session} is still there"


SUITE = """
import pytest

def test_clone(aikernel_pg, aikernel_redis_db):
    aikernel_pg.execute("CREATE TABLE t (x int)")
    aikernel_pg.execute("INSERT INTO t VALUES (1)")
    aikernel_redis_db.set("k", "v")
    assert aikernel_redis_db.dbsize() == 1
    assert aikernel_pg.execute("SELECT count(*) FROM t").fetchone() == (1,)

def test_other_clone(aikernel_pg, aikernel_redis_db):
    assert aikernel_pg.execute(
        "SELECT count(*) FROM pg_tables WHERE tablename = 't'"
    ).fetchone() == (0,)
    assert aikernel_redis_db.dbsize() == 0

def test_replica_streams(aikernel_postgres_replica):
    with aikernel_postgres_replica.connect("postgres") as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)

def test_an_engine_fault_is_a_clear_error(aikernel_redis):
    with pytest.raises(Exception) as info:
        aikernel_redis.kill()
    assert "needs the Docker runtime" in str(info.value)
    assert "--aikernel-runtime docker" in str(info.value)
"""


def test_xdist_per_test_fixtures_and_faults_on_kubernetes(
    kube: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "test_kube_suite.py").write_text(SUITE)
    (tmp_path / "pytest.ini").write_text("[pytest]\nfilterwarnings = error\n")
    done = _pytest(kube, "-p", "no:cacheprovider", "-n", "2", cwd=tmp_path)
    text = done.stdout + done.stderr
    assert done.returncode == 0, text[-6000:]
    assert "4 passed" in text, text[-3000:]
    session = _session(text)
    assert _docker_containers(session) == []
    assert _gone(kube, session), f"the namespace of session {session} is still there"


def test_data_and_observability_services_on_kubernetes(kube: dict[str, str]) -> None:
    """Neo4j, Elasticsearch, Kafka (through the forward it advertises), ZooKeeper, Prometheus
    scraping services by name (cluster DNS, also for services started later) and its
    configuration rewritten in the pod (exec)."""
    done = _pytest(
        kube,
        "tests/integration/test_data_services.py",
        "tests/integration/test_observability.py",
        "--deselect",
        "tests/integration/test_data_services.py::"
        "test_a_container_on_the_stack_network_reaches_the_broker_by_alias",
        "--deselect",
        "tests/integration/test_observability.py::test_extra_scrape_target_on_the_host_is_scraped",
        "-p",
        "no:cacheprovider",
    )
    text = done.stdout + done.stderr
    assert done.returncode == 0, text[-6000:]
    assert " failed" not in text and " error" not in text, text[-3000:]
    passed = re.search(r"\b(\d+) passed\b", text)
    assert passed is not None and int(passed.group(1)) >= 14, text[-3000:]


def test_reuse_keeps_the_namespace_and_down_removes_it(
    kube: dict[str, str], tmp_path: Path
) -> None:
    env = {**kube, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    (tmp_path / "test_reuse.py").write_text(
        "def test_pg(aikernel_postgres):\n"
        "    with aikernel_postgres.connect('postgres') as conn:\n"
        "        assert conn.execute('SELECT 1').fetchone() == (1,)\n"
    )
    (tmp_path / "pytest.ini").write_text("[pytest]\n")

    def down() -> subprocess.CompletedProcess[str]:
        return _aikernel_down(env, tmp_path)

    try:
        first = _pytest(env, "-p", "no:cacheprovider", "--aikernel-reuse", cwd=tmp_path)
        text = first.stdout + first.stderr
        assert first.returncode == 0, text[-6000:]
        session = _session(text)
        assert _namespaces(kube, session), "the reused namespace was removed"
        began = time.monotonic()
        second = _pytest(env, "-p", "no:cacheprovider", "--aikernel-reuse", cwd=tmp_path)
        text2 = second.stdout + second.stderr
        assert second.returncode == 0, text2[-6000:]
        assert f"reusing postgres (session {session})" in text2, text2[-3000:]
        print(f"second (reused) run: {time.monotonic() - began:.1f} s")
        done = down()
        assert done.returncode == 0, done.stderr[-3000:]
        assert "removed reused postgres" in done.stderr, done.stderr
        assert _gone(kube, session), "aikernel down left the reused namespace"
    finally:
        down()  # whatever a failed assertion left


KILLED = """
import os, signal, time

def test_wait(aikernel_redis, tmp_path_factory):
    print("READY", flush=True)
    open(os.environ["K8S_TEST_MARK"], "w").write("up")
    time.sleep(600)
"""


def test_a_killed_runs_namespace_is_deleted(kube: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "test_killed.py").write_text(KILLED)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    mark = tmp_path / "mark"
    env = {**kube, "K8S_TEST_MARK": str(mark)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-s"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not mark.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert mark.exists(), "the inner run did not get its stack"
        api = _api(kube)
        live = [
            n.metadata.name
            for n in api.list_namespace(label_selector=LABEL).items
            if n.metadata.deletion_timestamp is None
            and (n.metadata.annotations or {}).get("pytest-aikernel.owner", "").split(":")[3]
            == str(proc.pid)
        ]
        assert len(live) == 1, live
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    session = live[0].rsplit("-", 1)[1]
    began = time.monotonic()
    assert _gone(kube, session, within=60), "the killed run's namespace was left"
    print(f"killed run's namespace deleted {time.monotonic() - began:.1f} s after the kill")


def test_the_next_run_deletes_a_namespace_whose_owner_and_forwarder_died(
    kube: dict[str, str], tmp_path: Path
) -> None:
    """Nothing watches a namespace whose forwarder died with its run (a reboot, kill -9 of
    both): the next run deletes it, as its owner is surely dead."""
    (tmp_path / "test_killed.py").write_text(KILLED)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    mark = tmp_path / "mark"
    env = {**kube, "K8S_TEST_MARK": str(mark), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-s"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while not mark.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert mark.exists(), "the inner run did not get its stack"
        (log,) = (tmp_path / "cache" / "pytest-aikernel" / "kube").glob("*/forwarder.log")
        forwarder = int(re.findall(r"\(pid (\d+)\)", log.read_text())[-1])
        session = log.parent.name.rsplit("-", 1)[1]
        os.kill(forwarder, signal.SIGKILL)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    time.sleep(3)
    assert _namespaces(kube, session), "nothing should have deleted it yet"
    (tmp_path / "test_killed.py").unlink()
    (tmp_path / "test_next.py").write_text("def test_redis(aikernel_redis):\n    pass\n")
    done = _pytest(env, "-p", "no:cacheprovider", cwd=tmp_path)
    text = done.stdout + done.stderr
    assert done.returncode == 0, text[-3000:]
    assert f"removed leftovers of dead sessions: aikernel-{session}" in text, text[-3000:]
    assert _gone(kube, session, within=30)


UNSCHEDULABLE = """
import dataclasses

def pytest_aikernel_container(service, spec):
    if service == "redis":
        return dataclasses.replace(spec, memory_mb=64 * 1024 * 1024)
    return None
"""


def test_an_unschedulable_pod_is_reported_with_its_events(
    kube: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "conftest.py").write_text(UNSCHEDULABLE)
    (tmp_path / "test_unschedulable.py").write_text(
        "def test_redis(aikernel_redis):\n    aikernel_redis.client().ping()\n"
    )
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    began = time.monotonic()
    done = _pytest(
        kube,
        "-p",
        "no:cacheprovider",
        "--aikernel-startup-timeout",
        "8",
        "--aikernel-kube-namespace-prefix",
        "ci-team",
        cwd=tmp_path,
    )
    text = done.stdout + done.stderr
    assert done.returncode != 0, text[-3000:]
    assert "redis: its pod cannot be scheduled" in text, text[-6000:]
    assert "Insufficient memory" in text or "FailedScheduling" in text, text[-6000:]
    assert "--aikernel-kube-context" in text, text[-6000:]
    assert time.monotonic() - began < 120
    # the namespace prefix setting names it
    namespace = re.search(r"Events of pod redis in ci-team-([0-9a-f]{12})", text)
    assert namespace is not None, text[-3000:]
    session = namespace.group(1)
    assert f"Every pod this start made was deleted from namespace ci-team-{session}" in text
    assert _gone(kube, session), "the failed run's namespace was left"


def test_an_unknown_context_is_a_clear_error(kube: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "test_ctx.py").write_text("def test_pg(aikernel_postgres):\n    pass\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {**kube, "CI": "true"}  # fail, not skip, when the runtime is missing
    done = _pytest(
        env, "-p", "no:cacheprovider", "--aikernel-kube-context", "no-such-context", cwd=tmp_path
    )
    text = done.stdout + done.stderr
    assert done.returncode == 4, text[-3000:]  # a usage error
    assert "context 'no-such-context' (--aikernel-kube-context)" in text, text[-3000:]
    assert "Traceback" not in text, text[-3000:]


@contextlib.contextmanager
def _limited_user(
    kube: dict[str, str], tmp_path: Path, rules: list[dict[str, Any]]
) -> Iterator[str]:
    """A kubeconfig of a service account bound cluster-wide to ``rules`` only (a token of 10
    minutes); the account, role and binding are deleted afterwards."""
    import yaml
    from kubernetes import client

    name = f"aikernel-limited-{os.getpid()}"
    core = _api(kube)
    rbac = client.RbacAuthorizationV1Api(core.api_client)
    core.create_namespaced_service_account("default", {"metadata": {"name": name}})
    try:
        rbac.create_cluster_role({"metadata": {"name": name}, "rules": rules})
        rbac.create_cluster_role_binding(
            {
                "metadata": {"name": name},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": name,
                },
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": "default"}],
            }
        )
        token = core.create_namespaced_service_account_token(
            name, "default", {"spec": {"expirationSeconds": 600}}
        ).status.token
        admin = yaml.safe_load(Path(kube["KUBECONFIG"]).read_text())
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": admin["clusters"],
            "users": [{"name": name, "user": {"token": token}}],
            "contexts": [
                {
                    "name": name,
                    "context": {"cluster": admin["clusters"][0]["name"], "user": name},
                }
            ],
            "current-context": name,
        }
        path = tmp_path / "limited.kubeconfig"
        path.write_text(yaml.safe_dump(config))
        yield str(path)
    finally:
        for delete in (
            lambda: rbac.delete_cluster_role_binding(name),
            lambda: rbac.delete_cluster_role(name),
            lambda: core.delete_namespaced_service_account(name, "default"),
        ):
            with contextlib.suppress(Exception):
                delete()


def test_an_rbac_denial_names_the_permission_and_the_role(
    kube: dict[str, str], tmp_path: Path
) -> None:
    """A kubeconfig user that may make namespaces and pods but not Services: the start fails
    with the API server's refusal (the resource and the verb) and the Role to give; its
    namespace is deleted."""
    rules = [
        {
            "apiGroups": [""],
            "resources": ["namespaces"],
            "verbs": ["get", "list", "create", "delete", "patch"],
        },
        {
            "apiGroups": [""],
            "resources": ["pods", "pods/log", "pods/exec", "pods/portforward", "configmaps"],
            "verbs": ["*"],
        },
        {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "list"]},
    ]
    (tmp_path / "test_rbac.py").write_text(
        "def test_redis(aikernel_redis):\n    aikernel_redis.client().ping()\n"
    )
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    with _limited_user(kube, tmp_path, rules) as kubeconfig:
        env = {**kube, "KUBECONFIG": kubeconfig, "XDG_CACHE_HOME": str(tmp_path / "cache")}
        done = _pytest(env, "-p", "no:cacheprovider", cwd=tmp_path, timeout=300)
    text = done.stdout + done.stderr
    assert done.returncode != 0, text[-3000:]
    assert 'cannot create resource \\"services\\"' in text or (
        'cannot create resource "services"' in text
    ), text[-4000:]
    assert "lacks a permission: give it the Role of docs/kubernetes.md" in text, text[-4000:]
    assert "Traceback" not in text, text[-4000:]
    session = _session(text)
    assert _gone(kube, session), f"the namespace of session {session} is still there"


def test_network_faults_work_on_kubernetes(kube: dict[str, str]) -> None:
    """Toxiproxy is a service like the others: its proxies, latency, resets and cut-offs work
    through the forwards (the in-network path test needs aikernel_container: Docker only)."""
    done = _pytest(
        kube,
        "tests/integration/test_toxics.py",
        "--deselect",
        "tests/integration/test_toxics.py::test_in_network_path_goes_through_the_proxy",
        "-p",
        "no:cacheprovider",
    )
    text = done.stdout + done.stderr
    assert done.returncode == 0, text[-6000:]
    passed = re.search(r"\b(\d+) passed\b", text)
    assert passed is not None and int(passed.group(1)) >= 9, text[-3000:]
    assert " failed" not in text, text[-3000:]


def test_an_image_the_cluster_cannot_pull_names_the_setting(
    kube: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "test_pull.py").write_text(
        "def test_redis(aikernel_redis):\n    aikernel_redis.client().ping()\n"
    )
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {k: v for k, v in kube.items() if k != "AIKERNEL_IMAGE_REDIS"}
    # a registry on loopback that refuses: the pull fails at once, nothing leaves the machine
    done = _pytest(
        env, "-p", "no:cacheprovider", "--aikernel-image", "redis=localhost:1/none:1", cwd=tmp_path
    )
    text = done.stdout + done.stderr
    assert done.returncode != 0, text[-3000:]
    assert "redis: the cluster cannot get the image 'localhost:1/none:1'" in text, text[-4000:]
    assert "--aikernel-image redis=IMAGE" in text, text[-4000:]
    assert "Events of pod redis" in text, text[-4000:]


# ---- NodePort access ----------------------------------------------------------------------------

#: the test cluster's node: its InternalIP (tests/k8s/cluster NODE_IP), on the bridge it made;
#: kube-proxy opens node ports only on that bridge's subnet
NODE_IP = "10.213.90.1"

NODEPORT_SUITE = """
import contextlib
import os
from pathlib import Path

NODE = os.environ["K8S_NODE_IP"]


def _node_port(port):
    return 30000 <= port <= 32767


def _forwarders():
    cache = os.environ["XDG_CACHE_HOME"]
    found = []
    for proc in Path("/proc").iterdir():
        try:
            args = (proc / "cmdline").read_bytes().split(b"\\0")
        except OSError:
            continue
        if b"pytest_aikernel.runtime.kubeforward" in args and any(
            a.decode(errors="replace").startswith(cache) for a in args
        ):
            found.append(proc.name)
    return found


def _node_port_services():
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(client_configuration=cfg, persist_config=False)
    api = client.CoreV1Api(client.ApiClient(cfg))
    # the run's stack: the only one on the test cluster while this runs
    items = api.list_service_for_all_namespaces(label_selector="pytest-aikernel.session").items
    return {
        s.metadata.name: [p.node_port for p in s.spec.ports]
        for s in items
        if s.spec.type == "NodePort"
    }


def test_postgres_through_its_node_port(aikernel_postgres):
    assert aikernel_postgres.host == NODE and _node_port(aikernel_postgres.port)
    with aikernel_postgres.connect("postgres") as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("aikernel",)
        conn.execute("CREATE TEMP TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (7)")
        assert conn.execute("SELECT x FROM t").fetchone() == (7,)


def test_redis_through_its_node_port(aikernel_redis):
    assert aikernel_redis.host == NODE and _node_port(aikernel_redis.port)
    cache = aikernel_redis.client()
    cache.set("greeting", "hello")
    assert cache.get("greeting") == b"hello"


def test_kafka_advertises_the_node_address(aikernel_kafka):
    host, _, port = aikernel_kafka.bootstrap_servers.rpartition(":")
    assert host == NODE and _node_port(int(port))
    # what the broker tells its clients to come back to: the node address and node port
    metadata = aikernel_kafka.admin().list_topics(timeout=30)
    (broker,) = metadata.brokers.values()
    assert (broker.host, broker.port) == (NODE, int(port))
    aikernel_kafka.produce("nodeport-topic", b"through the node port", timeout=30)
    message = aikernel_kafka.consume_until(
        "nodeport-topic", lambda m: m.value() == b"through the node port", timeout=60
    )
    assert message.value() == b"through the node port"


def test_the_node_ports_are_the_services_and_no_forwarder_runs(
    aikernel_postgres, aikernel_redis, aikernel_kafka
):
    services = _node_port_services()
    assert services["postgres-nodeport"] == [aikernel_postgres.port]
    assert services["redis-nodeport"] == [aikernel_redis.port]
    assert services["kafka-nodeport"] == [int(aikernel_kafka.bootstrap_servers.rsplit(":", 1)[1])]
    assert _forwarders() == []
    kube = Path(os.environ["XDG_CACHE_HOME"]) / "pytest-aikernel" / "kube"
    assert not list(kube.glob("*/forwarder.log")), list(kube.iterdir())
"""


def test_nodeport_access_reaches_postgres_redis_and_kafka(
    kube: dict[str, str], tmp_path: Path
) -> None:
    """``--aikernel-kube-access nodeport`` on a cluster with kube-proxy, under xdist: psycopg,
    redis and confluent-kafka reach the services at the node address picked from the node (its
    InternalIP) on node ports; Kafka advertises that address; no forwarder runs; the namespace
    (with its NodePort Services) is deleted at the end."""
    (tmp_path / "test_nodeport.py").write_text(NODEPORT_SUITE)
    (tmp_path / "pytest.ini").write_text("[pytest]\nfilterwarnings = error\n")
    env = {**kube, "K8S_NODE_IP": NODE_IP, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    # under xdist: one worker starts what the other attaches to, reached the same way
    done = _pytest(
        env, "-p", "no:cacheprovider", "-n", "2", "--aikernel-kube-access", "nodeport", cwd=tmp_path
    )
    text = done.stdout + done.stderr
    assert done.returncode == 0, text[-6000:]
    assert "4 passed" in text, text[-3000:]
    header = f"services at {NODE_IP} (InternalIP of node aik8s-node) through NodePort Services"
    assert header in text, text[:3000]
    session = _session(text)
    assert _docker_containers(session) == []
    assert _gone(kube, session), f"the namespace of session {session} is still there"


def test_nodeport_access_uses_the_configured_node_address(
    kube: dict[str, str], tmp_path: Path
) -> None:
    """The node address setting is what the services are reached at: 127.0.0.1 here, where
    kube-proxy opens no node port (only on the cluster's bridge), so the start fails there,
    naming that address; the namespace is still deleted."""
    (tmp_path / "test_address.py").write_text(
        "def test_redis(aikernel_redis):\n    aikernel_redis.client().ping()\n"
    )
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {
        **kube,
        "AIKERNEL_KUBE_ACCESS": "nodeport",
        "AIKERNEL_KUBE_NODE_ADDRESS": "127.0.0.1",
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }
    done = _pytest(env, "-p", "no:cacheprovider", "--aikernel-startup-timeout", "6", cwd=tmp_path)
    text = done.stdout + done.stderr
    assert done.returncode != 0, text[-3000:]
    assert "services at 127.0.0.1 (--aikernel-kube-node-address)" in text, text[:3000]
    assert "redis (" in text and "was not ready after" in text, text[-4000:]
    session = _session(text)
    assert _gone(kube, session), f"the namespace of session {session} is still there"


def test_nodeport_access_under_reuse_is_reached_the_same_way(
    kube: dict[str, str], tmp_path: Path
) -> None:
    """A reused stack started with NodePort access is found again and reached at the node
    port it was recorded with; the state records the access; `aikernel down` removes it."""
    import json

    env = {
        **kube,
        "AIKERNEL_KUBE_ACCESS": "nodeport",
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "K8S_NODE_IP": NODE_IP,
    }
    (tmp_path / "test_reuse.py").write_text(
        "import os\n\n"
        "def test_redis(aikernel_redis):\n"
        "    assert aikernel_redis.host == os.environ['K8S_NODE_IP']\n"
        "    print('REDIS-PORT', aikernel_redis.port)\n"
        "    assert aikernel_redis.client().ping()\n"
    )
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    try:
        first = _pytest(env, "-p", "no:cacheprovider", "-s", "--aikernel-reuse", cwd=tmp_path)
        text = first.stdout + first.stderr
        assert first.returncode == 0, text[-6000:]
        session = _session(text)
        (state_file,) = (tmp_path / "cache" / "pytest-aikernel" / "reuse").glob("*/stack.json")
        state = json.loads(state_file.read_text())
        assert state["runtime"]["access"] == "nodeport", state["runtime"]
        assert state["runtime"]["node_address"] == NODE_IP, state["runtime"]
        assert state["services"]["redis"]["host"] == NODE_IP
        second = _pytest(env, "-p", "no:cacheprovider", "-s", "--aikernel-reuse", cwd=tmp_path)
        text2 = second.stdout + second.stderr
        assert second.returncode == 0, text2[-6000:]
        assert f"reusing redis (session {session})" in text2, text2[-3000:]
        ports = re.findall(r"REDIS-PORT (\d+)", text + text2)
        assert len(ports) == 2 and ports[0] == ports[1], ports
    finally:
        done = _aikernel_down(env, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "removed reused redis" in done.stderr, done.stderr
    assert _gone(kube, session), "aikernel down left the reused namespace"


# ---- LoadBalancer access ------------------------------------------------------------------------

#: what the test's load-balancer controller gives LoadBalancer Services (tests/k8s/cluster
#: routes it to its bridge, where kube-proxy carries it to the pods)
LB_POOL = "10.213.92."


@contextlib.contextmanager
def _load_balancer_controller(env: dict[str, str]) -> Iterator[dict[str, str]]:
    """What a cloud provider, MetalLB or k3s's ServiceLB does, reduced to the part the plugin
    sees: each LoadBalancer Service of a stack gets an address of LB_POOL in its status.
    Yields service name -> address given."""
    api = _api(env)
    given: dict[str, str] = {}
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(0.1):
            try:
                items = api.list_service_for_all_namespaces(label_selector=LABEL).items
            except Exception:
                continue
            for svc in items:
                lb = svc.status.load_balancer if svc.status else None
                if svc.spec.type != "LoadBalancer" or (lb and lb.ingress):
                    continue
                key = f"{svc.metadata.namespace}/{svc.metadata.name}"
                address = given.setdefault(key, f"{LB_POOL}{10 + len(given)}")
                body = {"status": {"loadBalancer": {"ingress": [{"ip": address}]}}}
                with contextlib.suppress(Exception):
                    api.patch_namespaced_service_status(
                        svc.metadata.name, svc.metadata.namespace, body
                    )

    thread = threading.Thread(target=run, name="lb-controller", daemon=True)
    thread.start()
    try:
        yield given
    finally:
        stop.set()
        thread.join(timeout=5)


LOADBALANCER_SUITE = """
import contextlib
import os

POOL = "10.213.92."


def test_postgres_at_its_load_balancer(aikernel_postgres):
    assert aikernel_postgres.host.startswith(POOL) and aikernel_postgres.port == 5432
    with aikernel_postgres.connect("postgres") as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("aikernel",)


def test_redis_at_its_load_balancer(aikernel_redis):
    assert aikernel_redis.host.startswith(POOL) and aikernel_redis.port == 6379
    cache = aikernel_redis.client()
    cache.set("greeting", "hello")
    assert cache.get("greeting") == b"hello"


def test_kafka_advertises_its_load_balancer(aikernel_kafka, aikernel_redis, aikernel_postgres):
    host, _, port = aikernel_kafka.bootstrap_servers.rpartition(":")
    assert host.startswith(POOL) and int(port) == 29092
    # an address of its own: each service has its LoadBalancer Service
    assert len({host, aikernel_redis.host, aikernel_postgres.host}) == 3
    metadata = aikernel_kafka.admin().list_topics(timeout=30)
    (broker,) = metadata.brokers.values()
    assert (broker.host, broker.port) == (host, 29092)
    aikernel_kafka.produce("lb-topic", b"through the load balancer", timeout=30)
    message = aikernel_kafka.consume_until(
        "lb-topic", lambda m: m.value() == b"through the load balancer", timeout=60
    )
    assert message.value() == b"through the load balancer"
    print("LB-HOSTS", host, aikernel_redis.host, aikernel_postgres.host)
"""


def test_loadbalancer_access_reaches_postgres_redis_and_kafka(
    kube: dict[str, str], tmp_path: Path
) -> None:
    """``--aikernel-kube-access loadbalancer``: each service gets a LoadBalancer Service and is
    reached at the address the controller put in its status, on the container's port; Kafka
    advertises its own; the namespace (with the Services) is deleted at the end."""
    (tmp_path / "test_lb.py").write_text(LOADBALANCER_SUITE)
    (tmp_path / "pytest.ini").write_text("[pytest]\nfilterwarnings = error\n")
    env = {**kube, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    with _load_balancer_controller(kube) as given:
        done = _pytest(
            env,
            "-p",
            "no:cacheprovider",
            "-s",
            "--aikernel-kube-access",
            "loadbalancer",
            cwd=tmp_path,
        )
    text = done.stdout + done.stderr
    assert done.returncode == 0, text[-6000:]
    assert "3 passed" in text, text[-3000:]
    assert "addresses of their LoadBalancer Services" in text, text[:3000]
    session = _session(text)
    named = {k.split("/", 1)[1]: v for k, v in given.items() if session in k}
    assert {"postgres-lb", "redis-lb", "kafka-lb"} <= named.keys(), given
    hosts = re.search(r"LB-HOSTS (\S+) (\S+) (\S+)", text)
    assert hosts is not None, text[-3000:]
    assert hosts.groups() == (named["kafka-lb"], named["redis-lb"], named["postgres-lb"])
    assert _gone(kube, session), f"the namespace of session {session} is still there"


def test_loadbalancer_access_without_a_controller_names_the_setting(
    kube: dict[str, str], tmp_path: Path
) -> None:
    """No load-balancer controller: the start fails within the start-up timeout, saying which
    Service got no address and what to use instead; the namespace is deleted."""
    (tmp_path / "test_nolb.py").write_text(
        "def test_redis(aikernel_redis):\n    aikernel_redis.client().ping()\n"
    )
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {
        **kube,
        "AIKERNEL_KUBE_ACCESS": "loadbalancer",
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }
    began = time.monotonic()
    done = _pytest(env, "-p", "no:cacheprovider", "--aikernel-startup-timeout", "5", cwd=tmp_path)
    took = time.monotonic() - began
    text = done.stdout + done.stderr
    assert done.returncode != 0, text[-3000:]
    assert "redis: its LoadBalancer Service redis-lb in namespace" in text, text[-4000:]
    assert "--aikernel-kube-access nodeport or forward" in text, text[-4000:]
    assert took < 120, took
    session = _session(text)
    assert _gone(kube, session), f"the namespace of session {session} is still there"
