"""The Kubernetes runtime without a cluster: what a ContainerSpec becomes, the settings, the
errors that need no API server, and that the plugin does not import the client at load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_aikernel.errors import ServiceError
from pytest_aikernel.runtime import ContainerSpec
from pytest_aikernel.runtime.docker import Owner
from pytest_aikernel.runtime.kubernetes import (
    KubernetesRuntime,
    KubernetesUnavailable,
    NotOnKubernetes,
    _label_value,
    cluster_configuration,
)
from pytest_aikernel.settings import ConfigError, resolve

from .test_settings import KNOWN, raw


class _NoPods:
    """Stands in for the API when a pod body is made: no pod runs yet."""

    def list_namespaced_pod(self, *_a: Any, **_k: Any) -> Any:
        raise RuntimeError("no cluster in unit tests")


def _runtime(**kwargs: Any) -> KubernetesRuntime:
    runtime = KubernetesRuntime("abc123", owner=Owner.current(), **kwargs)
    runtime._api = _NoPods()
    return runtime


def test_a_spec_becomes_a_pod() -> None:
    spec = ContainerSpec(
        image="example/postgres:15",
        env={"A": "1"},
        ports=(5432,),
        entrypoint=("sh", "-c", "exec postgres"),
        command=("-c", "fsync=off"),
        user="999:999",
        tmpfs={"/var/lib/postgresql/data": "mode=1777"},
        files={"/etc/app/app.conf": (b"x=1\n", 0o600)},
        memory_mb=768,
    )
    body = _runtime()._pod("postgres", spec, {"pytest-aikernel.reuse": "k1"})
    pod = body["spec"]
    (container,) = pod["containers"]
    assert body["metadata"]["name"] == "postgres"
    assert body["metadata"]["labels"]["pytest-aikernel.service"] == "postgres"
    assert body["metadata"]["labels"]["pytest-aikernel.session"] == "abc123"
    assert body["metadata"]["labels"]["pytest-aikernel.reuse"] == "k1"
    # the owner has colons: an annotation only
    assert "pytest-aikernel.owner" not in body["metadata"]["labels"]
    assert body["metadata"]["annotations"]["pytest-aikernel.owner"] == Owner.current().label()
    assert container["command"] == ["sh", "-c", "exec postgres"]
    assert container["args"] == ["-c", "fsync=off"]
    assert container["env"] == [{"name": "A", "value": "1"}]
    assert container["ports"] == [{"containerPort": 5432, "protocol": "TCP"}]
    assert container["securityContext"] == {"runAsUser": 999, "runAsGroup": 999}
    assert container["resources"] == {"requests": {"memory": "768Mi"}}
    assert {"name": "tmpfs0", "emptyDir": {"medium": "Memory"}} in pod["volumes"]
    assert {"name": "tmpfs0", "mountPath": "/var/lib/postgresql/data"} in container["volumeMounts"]
    source = next(v for v in pod["volumes"] if v["name"] == "files-src")
    assert source["configMap"] == {"name": "postgres-files", "items": [{"key": "f0", "path": "f0"}]}
    # copied into a writable emptyDir by an init container of the same image, as the same user
    assert {"name": "files", "emptyDir": {}} in pod["volumes"]
    (init,) = pod["initContainers"]
    assert init["image"] == "example/postgres:15"
    assert init["command"] == [
        "sh",
        "-c",
        "cp /aikernel-files-src/f0 /aikernel-files/f0 && chmod 600 /aikernel-files/f0",
    ]
    assert init["securityContext"] == container["securityContext"]
    assert {"name": "files", "mountPath": "/etc/app/app.conf", "subPath": "f0"} in container[
        "volumeMounts"
    ]
    # images read their own FOO_PORT variables: no service links
    assert pod["enableServiceLinks"] is False
    assert pod["automountServiceAccountToken"] is False
    assert pod["restartPolicy"] == "Never"


def test_without_entrypoint_the_images_own_is_kept() -> None:
    body = _runtime()._pod("redis", ContainerSpec(image="redis:7", command=("redis-server",)), None)
    (container,) = body["spec"]["containers"]
    assert "command" not in container
    assert container["args"] == ["redis-server"]
    assert "resources" not in container and "securityContext" not in container


def test_a_named_user_is_refused_with_the_reason() -> None:
    with pytest.raises(ServiceError, match="must be numeric"):
        _runtime()._pod("x", ContainerSpec(image="x", user="postgres"), None)


def test_headless_service_per_alias() -> None:
    body = _runtime()._service("kafka", ContainerSpec(image="k", ports=(9092, 29092)))
    assert body["metadata"]["name"] == "kafka"
    assert body["spec"]["clusterIP"] == "None"
    assert body["spec"]["publishNotReadyAddresses"] is True
    assert body["spec"]["selector"] == {
        "pytest-aikernel.session": "abc123",
        "pytest-aikernel.service": "kafka",
    }
    assert [p["port"] for p in body["spec"]["ports"]] == [9092, 29092]


def test_config_map_carries_binary_files() -> None:
    import base64

    spec = ContainerSpec(image="x", files={"/a": (b"\x00\xff", 0o644), "/b": (b"b", 0o755)})
    data = _runtime()._config_map("svc", spec)["binaryData"]
    assert base64.b64decode(data["f0"]) == b"\x00\xff"
    assert base64.b64decode(data["f1"]) == b"b"


def test_namespace_name_and_prefix() -> None:
    assert _runtime(prefix="ci-team").namespace == "ci-team-abc123"


def test_engine_faults_are_clear_errors() -> None:
    runtime = _runtime()
    for call in (runtime.stop, runtime.kill, runtime.pause, runtime.disconnect):
        with pytest.raises(NotOnKubernetes, match="needs the Docker runtime"):
            call("redis")


@pytest.mark.parametrize(
    ("value", "ok"),
    [("abc", True), ("a" * 63, True), ("a" * 64, False), ("host:1:2", False), ("", True)],
)
def test_label_values(value: str, ok: bool) -> None:
    assert (_label_value(value) is not None) is ok


def test_no_kubeconfig_names_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(KubernetesUnavailable, match="KUBECONFIG"):
        cluster_configuration(None)


def test_runtime_settings(tmp_path: Path) -> None:
    s = resolve(raw(tmp_path), KNOWN)
    assert (s.runtime, s.kube_context, s.kube_namespace_prefix) == ("docker", None, "aikernel")
    s = resolve(
        raw(
            tmp_path,
            env={"AIKERNEL_RUNTIME": "kubernetes", "AIKERNEL_KUBE_CONTEXT": "ci"},
            cli={"kube_namespace_prefix": "team-a"},
        ),
        KNOWN,
    )
    assert (s.runtime, s.kube_context, s.kube_namespace_prefix) == ("kubernetes", "ci", "team-a")
    assert s.source_of("runtime") == "env AIKERNEL_RUNTIME"
    with pytest.raises(ConfigError, match="'docker' or 'kubernetes'"):
        resolve(raw(tmp_path, cli={"runtime": "nomad"}), KNOWN)
    with pytest.raises(ConfigError, match="namespace prefix"):
        resolve(raw(tmp_path, cli={"kube_namespace_prefix": "Bad_Prefix"}), KNOWN)


def test_plugin_import_does_not_import_the_kubernetes_client() -> None:
    code = "import sys, pytest_aikernel.plugin; print('kubernetes' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"


def test_extra_hosts_become_host_aliases_and_the_test_machine_is_refused() -> None:
    body = _runtime()._pod("x", ContainerSpec(image="x", extra_hosts={"db": "10.0.0.7"}), None)
    assert body["spec"]["hostAliases"] == [{"ip": "10.0.0.7", "hostnames": ["db"]}]
    spec = ContainerSpec(image="p", extra_hosts={"host.docker.internal": "host-gateway"})
    with pytest.raises(ServiceError, match="cannot"):
        _runtime()._pod("prometheus", spec, None)


def test_forward_ports_stay_below_the_ephemeral_range() -> None:
    from pytest_aikernel.runtime.kubernetes import free_forward_port

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {free_forward_port() for _ in range(50)}
    assert all(10000 <= p < low for p in ports), sorted(ports)
