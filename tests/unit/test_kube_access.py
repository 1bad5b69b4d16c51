"""NodePort access to a stack on Kubernetes, without a cluster: the settings, the node address
picked from node objects, node ports, what ``start()`` makes and returns in nodeport mode (with
a stand-in for the API), and the emptyDir volumes of a spec's caches."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pytest_aikernel.errors import ConfigError, ServiceError
from pytest_aikernel.runtime import ContainerSpec
from pytest_aikernel.runtime.docker import Owner
from pytest_aikernel.runtime.kubernetes import (
    NODE_PORT_RANGE,
    KubernetesRuntime,
    node_port_range,
    node_ports_in_use,
    pick_node_address,
)
from pytest_aikernel.settings import resolve

from .test_settings import KNOWN, raw

# ---- settings -------------------------------------------------------------------------------


def test_access_defaults_to_forward(tmp_path: Path) -> None:
    s = resolve(raw(tmp_path), KNOWN)
    assert (s.kube_access, s.kube_node_address) == ("forward", None)
    assert s.source_of("kube_access") == "default"


@pytest.mark.parametrize(
    ("cli", "env", "ini", "expected", "source"),
    [
        ("nodeport", "forward", "forward", "nodeport", "--aikernel-kube-access"),
        (None, "nodeport", "forward", "nodeport", "env AIKERNEL_KUBE_ACCESS"),
        (None, None, "NodePort", "nodeport", "ini aikernel_kube_access"),
        ("forward", "nodeport", None, "forward", "--aikernel-kube-access"),
    ],
)
def test_access_precedence(
    tmp_path: Path, cli: str | None, env: str | None, ini: str | None, expected: str, source: str
) -> None:
    environ = {"AIKERNEL_RUNTIME": "kubernetes"}
    if env is not None:
        environ["AIKERNEL_KUBE_ACCESS"] = env
    s = resolve(
        raw(tmp_path, cli={"kube_access": cli}, env=environ, ini={"kube_access": ini}), KNOWN
    )
    assert s.kube_access == expected
    assert s.source_of("kube_access").startswith(source)


def test_node_address_is_read_and_normalised(tmp_path: Path) -> None:
    env = {"AIKERNEL_RUNTIME": "kubernetes", "AIKERNEL_KUBE_ACCESS": "nodeport"}
    s = resolve(raw(tmp_path, env={**env, "AIKERNEL_KUBE_NODE_ADDRESS": "[fd00::7]"}), KNOWN)
    assert s.kube_node_address == "fd00::7"
    assert s.source_of("kube_node_address") == "env AIKERNEL_KUBE_NODE_ADDRESS"
    s = resolve(
        raw(
            tmp_path,
            env={**env, "AIKERNEL_KUBE_NODE_ADDRESS": "10.0.0.9"},
            cli={"kube_node_address": "Node-1.Example.com"},
        ),
        KNOWN,
    )
    assert s.kube_node_address == "node-1.example.com"
    assert s.source_of("kube_node_address") == "--aikernel-kube-node-address"
    s = resolve(raw(tmp_path, env=env, ini={"kube_node_address": "10.213.90.1"}), KNOWN)
    assert s.kube_node_address == "10.213.90.1"


def test_a_bad_access_names_the_setting_and_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(raw(tmp_path, cli={"runtime": "kubernetes", "kube_access": "ingress"}), KNOWN)
    assert str(info.value) == (
        "--aikernel-kube-access: expected 'forward', 'nodeport' or 'loadbalancer', got 'ingress'"
    )
    s = resolve(raw(tmp_path, cli={"runtime": "kubernetes", "kube_access": "LoadBalancer"}), KNOWN)
    assert s.kube_access == "loadbalancer"


def test_nodeport_needs_the_kubernetes_runtime(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(raw(tmp_path, env={"AIKERNEL_KUBE_ACCESS": "nodeport"}), KNOWN)
    text = str(info.value)
    assert text.startswith("env AIKERNEL_KUBE_ACCESS: nodeport access is for a stack on Kubernetes")
    assert "--aikernel-runtime kubernetes" in text and "docker by default" in text
    with pytest.raises(ConfigError, match="docker, from --aikernel-runtime"):
        resolve(raw(tmp_path, cli={"runtime": "docker", "kube_access": "nodeport"}), KNOWN)
    with pytest.raises(ConfigError, match="loadbalancer access is for a stack on Kubernetes"):
        resolve(raw(tmp_path, ini={"kube_access": "loadbalancer"}), KNOWN)
    # forward, the default, is harmless with any runtime
    assert resolve(raw(tmp_path, cli={"kube_access": "forward"}), KNOWN).kube_access == "forward"


def test_a_node_address_without_nodeport_access_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(
            raw(tmp_path, cli={"runtime": "kubernetes", "kube_node_address": "10.0.0.5"}), KNOWN
        )
    text = str(info.value)
    assert text.startswith("--aikernel-kube-node-address: a node address is only used with")
    assert "--aikernel-kube-access nodeport" in text and "forward by default" in text


@pytest.mark.parametrize("bad", ["10.0.0.5:30001", "http://node", "node_1", "-node", "1.2.3"])
def test_a_bad_node_address_says_what_to_give(tmp_path: Path, bad: str) -> None:
    env = {
        "AIKERNEL_RUNTIME": "kubernetes",
        "AIKERNEL_KUBE_ACCESS": "nodeport",
        "AIKERNEL_KUBE_NODE_ADDRESS": bad,
    }
    with pytest.raises(ConfigError) as info:
        resolve(raw(tmp_path, env=env), KNOWN)
    text = str(info.value)
    assert text.startswith(f"env AIKERNEL_KUBE_NODE_ADDRESS: {bad!r} is not a node address")
    assert "without a port" in text and "leave it unset" in text


def test_help_of_the_node_address_says_how_it_is_picked() -> None:
    from pytest_aikernel.settings import OPTIONS_BY_FIELD

    opt = OPTIONS_BY_FIELD["kube_node_address"]
    assert "ExternalIP of a Ready node" in opt.help and "InternalIP" in opt.help
    assert OPTIONS_BY_FIELD["kube_access"].choices == ("forward", "nodeport", "loadbalancer")


# ---- the node address and node ports --------------------------------------------------------


def _node(name: str, ready: bool, **addresses: str) -> Any:
    return SimpleNamespace(
        metadata=SimpleNamespace(name=name),
        status=SimpleNamespace(
            conditions=[
                SimpleNamespace(type="MemoryPressure", status="False"),
                SimpleNamespace(type="Ready", status="True" if ready else "False"),
            ],
            addresses=[
                SimpleNamespace(type="Hostname", address=name),
                *(SimpleNamespace(type=k, address=v) for k, v in addresses.items()),
            ],
        ),
    )


def test_an_external_ip_of_a_ready_node_comes_first() -> None:
    nodes = [
        _node("b", True, InternalIP="10.0.0.2"),
        _node("a", False, ExternalIP="203.0.113.1", InternalIP="10.0.0.1"),
        _node("c", True, InternalIP="10.0.0.3", ExternalIP="203.0.113.3"),
    ]
    assert pick_node_address(nodes) == ("203.0.113.3", "ExternalIP of node c")


def test_else_the_internal_ip_of_the_first_ready_node_by_name() -> None:
    nodes = [
        _node("z", True, InternalIP="10.0.0.26"),
        _node("a", False, InternalIP="10.0.0.1"),
        _node("m", True, InternalIP="10.0.0.13"),
    ]
    assert pick_node_address(nodes) == ("10.0.0.13", "InternalIP of node m")


def test_no_ready_node_with_an_address_gives_none() -> None:
    assert pick_node_address([_node("a", False, InternalIP="10.0.0.1"), _node("b", True)]) is None
    assert pick_node_address([]) is None


def test_node_ports_in_use_and_the_range_an_api_server_names() -> None:
    def svc(*ports: int | None) -> Any:
        return SimpleNamespace(
            spec=SimpleNamespace(ports=[SimpleNamespace(node_port=p) for p in ports])
        )

    headless = SimpleNamespace(spec=SimpleNamespace(ports=None))
    assert node_ports_in_use([svc(30001, None), headless, svc(32000)]) == {30001, 32000}
    message = (
        '{"message":"Service \\"x\\" is invalid: spec.ports[0].nodePort: Invalid value: 1: '
        'provided port is not in the valid range. The range of valid ports is 20000-22767"}'
    )
    assert node_port_range(message) == (20000, 22767)
    assert node_port_range("forbidden") is None
    assert NODE_PORT_RANGE == (30000, 32767)


# ---- the runtime, with a stand-in for the API -----------------------------------------------


class FakeApi:
    """What the runtime calls on CoreV1Api, recorded; pods run as soon as they are made."""

    def __init__(self, used: tuple[int, ...] = (), refuse: str = "") -> None:
        self.used = set(used)
        self.refuse = refuse
        self.services: dict[str, dict[str, Any]] = {}
        self.deleted: list[str] = []
        self.calls: list[str] = []
        self.ingress = ""  # the address a load-balancer controller gives LoadBalancer Services
        self.api_client = SimpleNamespace(configuration=SimpleNamespace(host="https://k8s:6443"))

    def create_namespace(self, body: Any) -> None:
        self.calls.append("create_namespace")

    def list_node(self, **_kw: Any) -> Any:
        self.calls.append("list_node")
        return SimpleNamespace(items=[_node("n1", True, InternalIP="10.213.90.1")])

    def list_service_for_all_namespaces(self, **_kw: Any) -> Any:
        return SimpleNamespace(
            items=[
                SimpleNamespace(
                    spec=SimpleNamespace(ports=[SimpleNamespace(node_port=p) for p in self.used])
                )
            ]
        )

    def create_namespaced_service(self, namespace: str, body: dict[str, Any], **kw: Any) -> Any:
        from kubernetes.client.exceptions import ApiException as Real

        if body["spec"].get("ports", [{}])[0].get("nodePort") == 1:
            exc = Real(status=422, reason="Invalid")
            exc.body = (
                '{"message":"spec.ports[0].nodePort: Invalid value: 1: provided port is not in '
                'the valid range. The range of valid ports is 30000-30009"}'
            )
            raise exc
        name = body["metadata"]["name"]
        if self.refuse and name.endswith("-nodeport"):
            exc = Real(status=422, reason="Invalid")
            exc.body = json.dumps({"message": self.refuse})
            raise exc
        self.services[name] = body
        ports = []
        for i, port in enumerate(body["spec"].get("ports", [])):
            node_port = port.get("nodePort")
            if body["spec"].get("type") == "NodePort" and node_port is None:
                node_port = 31000 + i
            ports.append(SimpleNamespace(port=port["port"], node_port=node_port))
        return SimpleNamespace(spec=SimpleNamespace(ports=ports))

    def read_namespaced_service(self, name: str, namespace: str, **_kw: Any) -> Any:
        self.calls.append(f"read_service/{name}")
        ingress = [SimpleNamespace(ip=self.ingress, hostname=None)] if self.ingress else None
        return SimpleNamespace(
            status=SimpleNamespace(load_balancer=SimpleNamespace(ingress=ingress))
        )

    def create_namespaced_pod(self, namespace: str, body: dict[str, Any]) -> Any:
        self.pod = body
        return SimpleNamespace(metadata=SimpleNamespace(uid="uid-1"))

    def read_namespaced_pod(self, name: str, namespace: str) -> Any:
        running = SimpleNamespace(running=SimpleNamespace(), terminated=None, waiting=None)
        return SimpleNamespace(
            status=SimpleNamespace(
                phase="Running",
                pod_ip="10.213.90.20",
                conditions=[],
                container_statuses=[SimpleNamespace(state=running)],
            )
        )

    def list_namespaced_pod(self, *_a: Any, **_k: Any) -> Any:
        return SimpleNamespace(items=[])

    def _delete(self, kind: str) -> Any:
        def call(name: str, namespace: str, **_kw: Any) -> None:
            self.deleted.append(f"{kind}/{name}")

        return call

    def __getattr__(self, name: str) -> Any:
        if name.startswith("delete_namespaced_"):
            return self._delete(name[len("delete_namespaced_") :])
        raise AttributeError(name)


def _runtime(api: FakeApi, **kwargs: Any) -> KubernetesRuntime:
    runtime = KubernetesRuntime("abc123", owner=Owner.current(), **kwargs)
    runtime._api = api
    runtime._cfg = api.api_client.configuration
    return runtime


def test_nodeport_start_makes_a_node_port_service_and_returns_the_node_ports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    api = FakeApi()
    runtime = _runtime(api, access="nodeport")
    running = runtime.start("redis", ContainerSpec(image="redis:7", ports=(6379, 6380)))
    # the node address picked from the nodes, the node ports the API server assigned
    assert running.host == "10.213.90.1"
    assert dict(running.ports) == {6379: 31000, 6380: 31001}
    body = api.services["redis-nodeport"]
    assert body["spec"]["type"] == "NodePort"
    assert body["spec"]["selector"] == {
        "pytest-aikernel.session": "abc123",
        "pytest-aikernel.service": "redis",
    }
    assert body["metadata"]["labels"]["pytest-aikernel.service"] == "redis"
    assert body["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "pytest-aikernel"
    assert [p.get("nodePort") for p in body["spec"]["ports"]] == [None, None]
    # the headless Service stays as in forward mode
    assert api.services["redis"]["spec"]["clusterIP"] == "None"
    # no forwarder: nothing was written where its folder would be
    assert not (tmp_path / "pytest-aikernel" / "kube").exists()
    engine = runtime.engine
    assert (engine.host, engine.access) == ("10.213.90.1", "nodeport")
    assert "through NodePort Services" in engine.describe()
    assert "InternalIP of node n1" in engine.describe()
    assert api.calls.count("list_node") == 1  # asked once
    record = runtime.describe()
    assert (record["access"], record["node_address"]) == ("nodeport", "10.213.90.1")


def test_a_fixed_port_is_asked_for_as_the_node_port() -> None:
    api = FakeApi()
    runtime = _runtime(api, access="nodeport", node_address="192.0.2.50")
    spec = ContainerSpec(image="kafka", ports=(29092,), host_ports={29092: 30005})
    running = runtime.start("kafka", spec)
    assert api.services["kafka-nodeport"]["spec"]["ports"][0]["nodePort"] == 30005
    assert (running.host, dict(running.ports)) == ("192.0.2.50", {29092: 30005})
    assert "list_node" not in api.calls  # the configured address is used as it is
    assert "--aikernel-kube-node-address" in runtime.engine.describe()


def test_free_port_is_a_node_port_no_service_holds() -> None:
    api = FakeApi(used=(30000, 30001, 30002, 30004, 30006, 30008))
    runtime = _runtime(api, access="nodeport")
    picked = {runtime.free_port() for _ in range(4)}
    # the range the API server named (refusing node port 1), minus the ports in use, never twice
    assert picked == {30003, 30005, 30007, 30009}
    assert runtime.node_port_range() == (30000, 30009)
    with pytest.raises(ServiceError, match="every node port of the cluster's range 30000-30009"):
        runtime.free_port()


def test_forward_mode_keeps_its_loopback_ports() -> None:
    runtime = _runtime(FakeApi())
    assert not runtime.nodeport
    assert 10000 <= runtime.free_port() < 32768
    assert runtime.describe()["access"] == "forward" and "node_address" not in runtime.describe()


@pytest.mark.parametrize(
    "refusal",
    [
        'Service "kafka-nodeport" is invalid: spec.ports[0].nodePort: Invalid value: '
        "30005: provided port is already allocated",
        'Service "kafka-nodeport" is invalid: spec.ports[0].nodePort: Invalid value: '
        "30005: provided port is not in the valid range. The range of valid ports is "
        "20000-22767",
    ],
)
def test_a_refused_node_port_is_a_clear_error_naming_the_setting(refusal: str) -> None:
    api = FakeApi(refuse=refusal)
    runtime = _runtime(api, access="nodeport", node_address="192.0.2.50")
    spec = ContainerSpec(image="kafka", ports=(29092,), host_ports={29092: 30005})
    with pytest.raises(ServiceError) as info:
        runtime.start("kafka", spec)
    text = str(info.value)
    assert text.startswith(
        "kafka: the cluster refused the node ports of its Service kafka-nodeport"
    )
    assert "asked for: 30005" in text
    assert "--aikernel-kube-access nodeport needs free node ports" in text
    assert "--aikernel-kube-access forward" in text
    assert refusal.rsplit(": ", maxsplit=1)[-1] in text
    # the stack retries a taken port with another one: the phrase it looks for is kept
    if "already allocated" in refusal:
        assert "port is already allocated" in text


def test_remove_deletes_the_node_port_service_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    api = FakeApi()
    runtime = _runtime(api)  # forward: a reused stack may hold services of either access

    def gone(service: str, namespace: str) -> Any:
        from kubernetes.client.exceptions import ApiException as Real

        raise Real(status=404)

    api.read_namespaced_pod = gone  # type: ignore[method-assign]
    runtime.remove(["kafka"])
    assert api.deleted == [
        "pod/kafka",
        "service/kafka",
        "service/kafka-nodeport",
        "service/kafka-lb",
        "config_map/kafka-files",
    ]


def test_the_settings_reach_the_runtime_and_the_reuse_keys(tmp_path: Path) -> None:
    from pytest_aikernel.lease import service_keys
    from pytest_aikernel.stack import make_runtime

    env = {"AIKERNEL_RUNTIME": "kubernetes", "AIKERNEL_KUBE_ACCESS": "nodeport"}
    settings = resolve(raw(tmp_path, env={**env, "AIKERNEL_KUBE_NODE_ADDRESS": "10.0.0.5"}), KNOWN)
    runtime = make_runtime(settings, "abc123")
    assert isinstance(runtime, KubernetesRuntime)
    assert (runtime.access, runtime.node_address) == ("nodeport", "10.0.0.5")
    forward = resolve(raw(tmp_path, env={"AIKERNEL_RUNTIME": "kubernetes"}), KNOWN)
    runtime = make_runtime(forward, "abc123")
    assert isinstance(runtime, KubernetesRuntime) and runtime.access == "forward"
    # a reused service started with one access is replaced, not reached, by a run with another
    keys = {
        s.kube_access + str(s.kube_node_address): service_keys(s, ["redis"])["redis"]
        for s in (
            settings,
            forward,
            dataclasses.replace(settings, kube_node_address=None),
        )
    }
    assert len(set(keys.values())) == 3
    # forward keeps the keys it had before NodePort access existed (the runtime is not in
    # them: the reused stack's project id has it)
    assert service_keys(forward, ["redis"]) == service_keys(
        resolve(raw(tmp_path), KNOWN), ["redis"]
    )


def test_caches_become_empty_dirs_in_either_access() -> None:
    spec = ContainerSpec(
        image="es", volumes={"jvm-cds": "/usr/share/elasticsearch/cds", "b": "/var/cache/b"}
    )
    for access in ("forward", "nodeport"):
        body = _runtime(FakeApi(), access=access)._pod("elasticsearch", spec, None)
        pod = body["spec"]
        (container,) = pod["containers"]
        assert {"name": "cache0", "emptyDir": {}} in pod["volumes"]
        assert {"name": "cache1", "emptyDir": {}} in pod["volumes"]
        assert {"name": "cache0", "mountPath": "/var/cache/b"} in container["volumeMounts"]
        assert {"name": "cache1", "mountPath": "/usr/share/elasticsearch/cds"} in container[
            "volumeMounts"
        ]


def test_an_unknown_access_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="forward, nodeport or loadbalancer"):
        KubernetesRuntime("abc123", access="ingress")


# ---- LoadBalancer access ------------------------------------------------------------------------


def test_loadbalancer_start_reaches_the_service_at_its_ingress_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    api = FakeApi()
    api.ingress = "10.213.92.7"
    runtime = _runtime(api, access="loadbalancer")
    running = runtime.start("redis", ContainerSpec(image="redis:7", ports=(6379,)))
    assert running.host == "10.213.92.7"
    assert dict(running.ports) == {6379: 6379}
    body = api.services["redis-lb"]
    assert body["spec"]["type"] == "LoadBalancer"
    assert body["spec"]["ports"] == [
        {"name": "p6379", "port": 6379, "targetPort": 6379, "protocol": "TCP"}
    ]
    assert body["spec"]["selector"] == {
        "pytest-aikernel.session": "abc123",
        "pytest-aikernel.service": "redis",
    }
    assert "redis-nodeport" not in api.services
    assert runtime.engine.access == "loadbalancer"
    assert "addresses of their LoadBalancer Services" in runtime.engine.describe()
    assert runtime.describe()["access"] == "loadbalancer"
    # no forwarder: nothing was written for one
    assert not (tmp_path / "pytest-aikernel" / "kube").exists()


def test_a_published_port_makes_the_load_balancer_before_the_pod(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kafka advertises its host address before it starts: publish() makes its Service and
    waits for the address; the start then uses that Service, not a second one."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    api = FakeApi()
    api.ingress = "lb.example.com"
    runtime = _runtime(api, access="loadbalancer")
    assert runtime.publish("kafka", 19092) == ("lb.example.com", 19092)
    made = api.services["kafka-lb"]
    spec = ContainerSpec(image="kafka", ports=(19092,), host_ports={19092: 19092})
    running = runtime.start("kafka", spec)
    assert api.services["kafka-lb"] is made
    assert (running.host, dict(running.ports)) == ("lb.example.com", {19092: 19092})


def test_a_load_balancer_without_an_address_names_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    api = FakeApi()  # no controller: the status never gets an ingress address
    runtime = _runtime(api, access="loadbalancer", startup_timeout=0.3)
    with pytest.raises(ServiceError) as info:
        runtime.start("redis", ContainerSpec(image="redis:7", ports=(6379,)))
    text = str(info.value)
    assert "redis: its LoadBalancer Service redis-lb in namespace aikernel-abc123 got no " in text
    assert "its status has no ingress address" in text
    assert "--aikernel-kube-access nodeport or forward" in text
    assert "--aikernel-startup-timeout" in text
