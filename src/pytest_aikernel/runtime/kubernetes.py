"""The Kubernetes runtime: each spec becomes a Pod and a headless Service in a namespace per stack.

Like the Docker runtime it knows no service. A :class:`ContainerSpec` becomes:

- a Pod named like the service's in-network alias (``postgres``, ``kafka``...), with the spec's
  env, entrypoint (``command``) and command (``args``), ports, tmpfs paths as ``emptyDir`` volumes
  of medium ``Memory``, files from a ConfigMap, and ``hostAliases`` for the stack's pods that
  run already (in-network addresses work where the cluster has no DNS);
- a headless Service of the same name (cluster DNS resolves the alias to the pod where the
  cluster has DNS, also for services started later);
- with ``--aikernel-kube-access forward`` (the default): forwards on 127.0.0.1 of this machine,
  kept by the stack's forwarder process (``kubeforward.py``), so the test process and every
  process of the run reach the same ports;
- with ``--aikernel-kube-access nodeport``: a Service ``<alias>-nodeport`` of type NodePort,
  reached at a node's address (``--aikernel-kube-node-address``, else picked from the nodes);
  no forwarder runs;
- with ``--aikernel-kube-access loadbalancer``: a Service ``<alias>-lb`` of type LoadBalancer,
  reached at the address the cluster's load-balancer controller puts in its status; no
  forwarder runs.

The namespace is ``<prefix>-<session>``, labelled with the session (and the reuse project) and
annotated with its owner; removing the stack deletes it. The Kubernetes client is imported only
when this runtime is used (``pip install pytest-aikernel[kubernetes]``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ContainerExited, DockerUnavailable, ImageUnavailable, ServiceError
from . import ContainerSpec, Running
from .docker import LABEL_OWNER, LABEL_SERVICE, LABEL_SESSION, Owner, free_loopback_port
from .engine import LOOPBACK
from .kubeforward import load_configuration, read_json, write_json

LABEL_MANAGED = "app.kubernetes.io/managed-by"
MANAGER = "pytest-aikernel"
#: a pod that cannot be scheduled for this long is reported (seconds; at most the startup timeout)
UNSCHEDULABLE_GRACE = 20.0
#: waiting reasons of a container whose image cannot be had
_IMAGE_REASONS = ("ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName")
#: the API server's default --service-node-port-range (the range in use is asked for once)
NODE_PORT_RANGE = (30000, 32767)
#: the name of a service's NodePort Service is its alias with this suffix
NODE_PORT_SUFFIX = "-nodeport"
#: the name of a service's LoadBalancer Service is its alias with this suffix
LOAD_BALANCER_SUFFIX = "-lb"
#: where the init container of a pod with files finds them (a ConfigMap) and puts them
FILES_SRC = "/aikernel-files-src"
FILES_DST = "/aikernel-files"
_CONFIG_REASONS = ("CreateContainerConfigError", "CreateContainerError", "RunContainerError")


class KubernetesUnavailable(DockerUnavailable):
    """No cluster answered, or the kubernetes client is not installed (the plugin treats it
    like an absent Docker engine: skip or fail, by --aikernel-docker-missing)."""


class NotOnKubernetes(ServiceError):
    """A call that needs the Docker engine (a fault, a snapshot) on the Kubernetes runtime."""


def require_client() -> None:
    try:
        import kubernetes  # noqa: F401
    except ImportError:
        raise KubernetesUnavailable(
            "--aikernel-runtime kubernetes needs the kubernetes client: pip install "
            "'pytest-aikernel[kubernetes]'"
        ) from None


def cluster_configuration(context: str | None) -> Any:
    """The client configuration of the cluster kubectl would use; KubernetesUnavailable."""
    require_client()
    from kubernetes.config.config_exception import ConfigException

    where = os.environ.get("KUBECONFIG") or "~/.kube/config"
    try:
        return load_configuration(context)
    except (ConfigException, OSError) as exc:
        ctx = f" context {context!r} (--aikernel-kube-context)" if context else ""
        raise KubernetesUnavailable(
            f"no Kubernetes cluster configured{ctx}: {exc}. Point KUBECONFIG at a kubeconfig "
            f"(looked at {where}) or run in a pod with a service account."
        ) from None


def current_context(context: str | None) -> str:
    """The kubeconfig context in use: ``context``, else the kubeconfig's current one ("" in a
    pod with a service account and no kubeconfig)."""
    if context:
        return context
    from kubernetes import config

    try:
        _contexts, active = config.list_kube_config_contexts()
    except Exception:
        return ""
    return str((active or {}).get("name", ""))


def _short(exc: BaseException) -> str:
    body = getattr(exc, "body", None)
    if body:
        import json

        try:
            message = json.loads(body).get("message")
        except (ValueError, AttributeError):
            message = None
        if message:
            return f"{getattr(exc, 'status', '')} {message}".strip()
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _label_value(value: str) -> str | None:
    """``value`` if Kubernetes accepts it as a label value, else None (it goes to an
    annotation only)."""
    import re

    if len(value) <= 63 and re.fullmatch(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?", value):
        return value
    return None


@dataclass(frozen=True)
class Cluster:
    """A cluster and how the test process reaches what runs on it (the Kubernetes
    counterpart of ``engine.Engine``)."""

    endpoint: str
    context: str
    #: where services are reached from the test process: forwards on this address, or the
    #: node address of NodePort access
    host: str = LOOPBACK
    bind: str = LOOPBACK
    bind_source: str = "default"
    container: str = ""
    local: bool = True
    source: str = "kubeconfig"
    host_source: str = "port-forward"
    #: "forward", "nodeport" or "loadbalancer" (--aikernel-kube-access)
    access: str = "forward"

    @property
    def attached(self) -> bool:
        return False

    @property
    def exposed(self) -> bool:
        return False

    def describe(self) -> str:
        where = f"Kubernetes {self.endpoint} (context {self.context or 'in-cluster'})"
        if self.access == "nodeport":
            return (
                f"{where}; services at {self.host} ({self.host_source}) through NodePort "
                "Services (--aikernel-kube-access nodeport)"
            )
        if self.access == "loadbalancer":
            return (
                f"{where}; services at the addresses of their LoadBalancer Services "
                "(--aikernel-kube-access loadbalancer)"
            )
        return f"{where}; services at {self.host} through the stack's port-forwards"


def pick_node_address(nodes: Iterable[Any]) -> tuple[str, str] | None:
    """(address, where it came from) of the node the test process connects to for NodePort
    access: the first ExternalIP of a Ready node (by node name) if any Ready node has one, else
    the first InternalIP of a Ready node; None when no Ready node has either."""
    ready = []
    for node in nodes:
        conditions = (node.status.conditions if node.status else None) or []
        if any(c.type == "Ready" and c.status == "True" for c in conditions):
            ready.append(node)
    ready.sort(key=lambda n: str(n.metadata.name))
    for kind in ("ExternalIP", "InternalIP"):
        for node in ready:
            for address in node.status.addresses or []:
                if address.type == kind and address.address:
                    return str(address.address), f"{kind} of node {node.metadata.name}"
    return None


def node_ports_in_use(services: Iterable[Any]) -> set[int]:
    """The node ports that ``services`` (V1Service objects of the whole cluster) hold."""
    used: set[int] = set()
    for svc in services:
        for port in (svc.spec.ports if svc.spec else None) or []:
            if port.node_port:
                used.add(int(port.node_port))
    return used


def node_port_range(message: str) -> tuple[int, int] | None:
    """The node-port range an API server names when it refuses a node port out of it."""
    import re

    found = re.search(r"range of valid ports is (\d+)-(\d+)", message)
    if found is None:
        return None
    low, high = int(found.group(1)), int(found.group(2))
    return (low, high) if 0 < low <= high < 65536 else None


@dataclass(frozen=True)
class PodState:
    """What a start waits on."""

    phase: str
    running: bool
    #: a reason that ends the wait: an image that cannot be had, a crash, a bad config
    reason: str = ""
    message: str = ""
    exit_code: int | None = None
    ip: str = ""
    unschedulable: str = ""


class KubernetesRuntime:
    """Starts :class:`ContainerSpec` objects as pods in the stack's namespace."""

    kind = "kubernetes"

    def __init__(
        self,
        session_id: str,
        owner: Owner | None = None,
        extra_labels: Mapping[str, str] | None = None,
        *,
        context: str | None = None,
        prefix: str = "aikernel",
        startup_timeout: float = 120.0,
        reused: bool = False,
        access: str = "forward",
        node_address: str | None = None,
    ) -> None:
        self.session_id = session_id
        self.owner = owner or Owner.current()
        self.extra_labels = dict(extra_labels or {})
        self.context = context
        self.namespace = f"{prefix}-{session_id}".lower()
        self.network_name = f"namespace {self.namespace}"
        self.startup_timeout = startup_timeout
        #: a reused stack has no owner process: its forwarder never deletes it
        self.reused = reused
        #: "forward": the stack's port-forwards on 127.0.0.1; "nodeport": NodePort Services
        #: reached at ``node_address`` (None: picked from the cluster's nodes); "loadbalancer":
        #: LoadBalancer Services reached at the addresses their status gives
        if access not in ("forward", "nodeport", "loadbalancer"):
            raise ValueError(f"access must be forward, nodeport or loadbalancer, not {access!r}")
        self.access = access
        self.node_address = node_address
        self._node: tuple[str, str] | None = None  # (address, where it came from)
        self._node_port_range: tuple[int, int] | None = None
        self._picked: set[int] = set()  # node ports chosen here, maybe not yet taken
        #: service -> container port -> Service port of its LoadBalancer Service, once made
        self._balanced: dict[str, dict[int, int]] = {}
        self._cfg: Any = None
        self._api: Any = None
        self._namespace_ready = False
        self._services: dict[str, str] = {}  # service -> pod uid
        self._lock = threading.Lock()
        self._exec_lock = threading.Lock()

    # ---- the cluster --------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The CoreV1Api of the cluster (KubernetesUnavailable when none answers)."""
        with self._lock:
            if self._api is None:
                from kubernetes import client

                self._cfg = cluster_configuration(self.context)
                api = client.CoreV1Api(client.ApiClient(self._cfg))
                try:
                    api.get_api_resources(_request_timeout=10)
                except Exception as exc:
                    raise KubernetesUnavailable(
                        f"the Kubernetes API server at {self._cfg.host} did not answer "
                        f"({_short(exc)}). Check KUBECONFIG / --aikernel-kube-context."
                    ) from None
                self._api = api
            return self._api

    @property
    def nodeport(self) -> bool:
        """Whether the services are reached through NodePort Services (no forwarder)."""
        return self.access == "nodeport"

    @property
    def loadbalancer(self) -> bool:
        """Whether the services are reached through LoadBalancer Services (no forwarder)."""
        return self.access == "loadbalancer"

    @property
    def forwarded(self) -> bool:
        """Whether the stack's forwarder carries the services' ports to 127.0.0.1."""
        return self.access == "forward"

    @property
    def engine(self) -> Cluster:
        api = self.client
        endpoint = str(api.api_client.configuration.host)
        context = current_context(self.context)
        if self.nodeport:
            address, where = self.node()
            return Cluster(
                endpoint=endpoint,
                context=context,
                host=address,
                bind=address,
                bind_source=where,
                host_source=where,
                access="nodeport",
            )
        if self.loadbalancer:
            # each service has an address of its own (Running.host); this one is never used
            # to connect
            return Cluster(
                endpoint=endpoint,
                context=context,
                host_source="LoadBalancer Services",
                access="loadbalancer",
            )
        return Cluster(endpoint=endpoint, context=context)

    @property
    def removal_note(self) -> str:
        """What a failed start left, for its error: nothing it made."""
        return f"Every pod this start made was deleted from namespace {self.namespace}."

    def publish(self, service: str, port: int) -> tuple[str, int]:
        """(address, port) at which the test process will reach container port ``port`` of
        ``service``, known before it starts (Kafka advertises it): a forward's free port on
        127.0.0.1, a free node port at the node address, or the address the LoadBalancer
        Service made here now gets from the cluster, with the container's port."""
        if not self.loadbalancer:
            return self.engine.host, self.free_port()
        self.create_network()
        self._create_load_balancer(service, {port: port})
        return self._load_balancer_address(service, time.monotonic()), port

    def node(self) -> tuple[str, str]:
        """(address, where it came from) of the node that NodePort access connects to:
        --aikernel-kube-node-address, else one picked from the cluster's nodes."""
        with self._lock:
            if self._node is not None:
                return self._node
        found: tuple[str, str] | None = None
        if self.node_address:
            found = (self.node_address, "--aikernel-kube-node-address")
        else:
            try:
                nodes = self.client.list_node(_request_timeout=10).items
            except Exception as exc:
                raise ServiceError(
                    "stack",
                    f"--aikernel-kube-access nodeport: cannot list the cluster's nodes to pick "
                    f"the address to connect to ({_short(exc)}). Set "
                    "--aikernel-kube-node-address to a node address this machine reaches, or "
                    "give the kubeconfig's user 'list' on nodes.",
                ) from None
            found = pick_node_address(nodes)
            if found is None:
                raise ServiceError(
                    "stack",
                    "--aikernel-kube-access nodeport: no Ready node of the cluster has an "
                    "ExternalIP or InternalIP address. Set --aikernel-kube-node-address to a "
                    "node address this machine reaches, or use --aikernel-kube-access forward.",
                )
        with self._lock:
            self._node = found
            return self._node

    def free_port(self) -> int:
        """A host port chosen before the service starts (Kafka advertises it): a free port on
        127.0.0.1 for a forward, or a node port no Service of the cluster holds."""
        if not self.nodeport:
            return free_forward_port()
        import random

        low, high = self.node_port_range()
        try:
            services = self.client.list_service_for_all_namespaces(_request_timeout=10).items
            used = node_ports_in_use(services)
        except Exception:
            used = set()  # not allowed to list them all: the API server refuses a taken one
        with self._lock:
            free = [p for p in range(low, high + 1) if p not in used and p not in self._picked]
            if not free:
                raise ServiceError(
                    "stack",
                    f"--aikernel-kube-access nodeport: every node port of the cluster's range "
                    f"{low}-{high} is taken. Delete Services of type NodePort, or use "
                    "--aikernel-kube-access forward.",
                )
            port = random.choice(free)
            self._picked.add(port)
        return port

    def node_port_range(self) -> tuple[int, int]:
        """The cluster's node-port range, asked for once: the API server names it when it
        refuses a Service that asks for node port 1 (a dry run is not enough: it does not check
        the range); 30000-32767 when it does not say."""
        if self._node_port_range is not None:
            return self._node_port_range
        from kubernetes.client.exceptions import ApiException

        found = None
        self.create_network()
        name = f"range-probe{NODE_PORT_SUFFIX}"
        probe = {
            "metadata": {"name": name, "labels": self.labels()},
            "spec": {
                "type": "NodePort",
                "selector": {LABEL_SESSION: self.session_id, LABEL_SERVICE: "none"},
                "ports": [{"port": 1, "targetPort": 1, "nodePort": 1, "protocol": "TCP"}],
            },
        }
        try:
            self.client.create_namespaced_service(self.namespace, probe, _request_timeout=10)
        except ApiException as exc:
            found = node_port_range(str(exc.body or ""))
        except Exception:
            found = None
        else:  # a range with port 1 in it: nothing to learn, and the probe goes
            with contextlib.suppress(Exception):
                self.client.delete_namespaced_service(name, self.namespace)
        self._node_port_range = found or NODE_PORT_RANGE
        return self._node_port_range

    def engine_version(self) -> str:
        from kubernetes import client

        info = client.VersionApi(self.client.api_client).get_code()
        return str(info.git_version)

    def labels(self, service: str | None = None, **extra: str) -> dict[str, str]:
        labels = {**self.extra_labels, LABEL_SESSION: self.session_id, LABEL_MANAGED: MANAGER}
        labels.update(extra)
        if service is not None:
            labels[LABEL_SERVICE] = service
        return {k: v for k, v in labels.items() if _label_value(v) is not None}

    def annotations(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {**self.extra_labels, LABEL_OWNER: self.owner.label(), **dict(extra or {})}

    def container_name(self, service: str) -> str:
        return f"{self.namespace}/{service}"

    def prepare_start(self, in_network: bool) -> None:
        """Before services start: their namespace, whatever they talk to."""
        self.create_network()

    def create_network(self) -> None:
        """The stack's namespace (made once; another process of the run may have made it)."""
        if self._namespace_ready:
            return
        from kubernetes.client.exceptions import ApiException

        body = {
            "metadata": {
                "name": self.namespace,
                "labels": self.labels(),
                "annotations": self.annotations(),
            }
        }
        try:
            self.client.create_namespace(body)
        except ApiException as exc:
            if exc.status != 409:
                raise ServiceError(
                    "stack",
                    f"cannot create the namespace {self.namespace}: {_short(exc)}"
                    + _rbac_hint(exc),
                ) from None
        self._namespace_ready = True
        self._ensure_forwarder()

    def use_network(self, name: str) -> None:
        return

    # ---- the forwarder ------------------------------------------------------------------------

    @property
    def forward_folder(self) -> Path:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        self.client  # noqa: B018 - the configuration
        where = hashlib.sha256(f"{self._cfg.host}\0{self.context}".encode()).hexdigest()[:8]
        return Path(base) / "pytest-aikernel" / "kube" / f"{where}-{self.namespace}"

    def _ensure_forwarder(self) -> None:
        """Start the namespace's forwarder on this machine unless one runs (none with NodePort
        access: nothing is forwarded)."""
        import fcntl

        if not self.forwarded:
            return
        folder = self.forward_folder
        folder.mkdir(parents=True, exist_ok=True)
        owner = "" if self.reused else self.owner.label()
        write_json(
            folder / "config.json",
            {"namespace": self.namespace, "context": self.context, "owner": owner},
        )
        with open(folder / "forwarder.lock", "a+b") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # it runs
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        log = os.open(folder / "forwarder.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.close(log)
        pid = os.posix_spawn(
            sys.executable,
            [sys.executable, "-m", "pytest_aikernel.runtime.kubeforward", str(folder)],
            dict(os.environ),
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (
                    os.POSIX_SPAWN_OPEN,
                    1,
                    str(folder / "forwarder.log"),
                    os.O_WRONLY | os.O_APPEND,
                    0,
                ),
                (
                    os.POSIX_SPAWN_OPEN,
                    2,
                    str(folder / "forwarder.log"),
                    os.O_WRONLY | os.O_APPEND,
                    0,
                ),
            ],
            setsid=True,
        )
        # collect it when it ends (no zombie while this process lives)
        threading.Thread(
            target=_reap, args=(pid,), name="aikernel-forward-reap", daemon=True
        ).start()

    def _forward(self, service: str, ports: Mapping[int, int]) -> None:
        """Route each local port of ``ports`` (container port -> local port) to ``service``'s
        pod and wait until the forwarder listens on them."""
        from ..shared import locked

        folder = self.forward_folder
        with locked(folder, name="routes.lock"):
            routes = read_json(folder / "routes.json")
            for container_port, local in ports.items():
                routes[str(local)] = {"pod": service, "port": container_port, "bind": LOOPBACK}
            write_json(folder / "routes.json", routes)
        self._ensure_forwarder()
        deadline = time.monotonic() + 15
        wanted = set(ports.values())
        while True:
            listening = set(_read_list(folder / "listening.json"))
            if wanted <= listening:
                return
            if time.monotonic() > deadline:
                tail = _tail(folder / "forwarder.log", 10)
                raise ServiceError(
                    service,
                    f"{service}: the port-forwarder did not listen on "
                    f"{', '.join(str(p) for p in sorted(wanted - listening))} within 15 s "
                    f"(its log, {folder / 'forwarder.log'}):\n{tail}",
                )
            time.sleep(0.02)

    def _unroute(self, services: Iterable[str]) -> None:
        from ..shared import locked

        doomed = set(services)
        folder = self.forward_folder
        if not folder.is_dir():
            return
        with locked(folder, name="routes.lock"):
            routes = read_json(folder / "routes.json")
            kept = {k: v for k, v in routes.items() if v.get("pod") not in doomed}
            if kept != routes:
                write_json(folder / "routes.json", kept)

    # ---- start --------------------------------------------------------------------------------

    def ensure_image(self, service: str, image: str, setting_hint: str) -> None:
        """Images are the cluster's business: one it cannot pull is reported from the pod's
        events when the pod waits for it."""
        return

    def start(
        self,
        service: str,
        spec: ContainerSpec,
        labels: Mapping[str, str] | None = None,
        *,
        host_ports: Mapping[int, int] | None = None,
    ) -> Running:
        from kubernetes.client.exceptions import ApiException

        self.create_network()
        api = self.client
        fixed = {**dict(host_ports or {}), **spec.host_ports}
        if self.nodeport:
            host = self.node()[0]
            ports: dict[int, int] = {}  # node ports: known once the Service is made
        elif self.loadbalancer:
            host = ""  # known once the cluster gives the Service an address
            ports = {port: fixed.get(port) or port for port in spec.ports}
        else:
            host = LOOPBACK
            ports = {port: fixed.get(port) or self.free_port() for port in spec.ports}
        started = time.monotonic()
        try:
            if spec.files:
                api.create_namespaced_config_map(self.namespace, self._config_map(service, spec))
            api.create_namespaced_service(self.namespace, self._service(service, spec))
            if self.nodeport and spec.ports:
                ports = self._create_node_port_service(service, spec, fixed)
            if self.loadbalancer and spec.ports:
                ports = self._create_load_balancer(service, ports)
            pod = api.create_namespaced_pod(self.namespace, self._pod(service, spec, labels))
        except ApiException as exc:
            raise ServiceError(
                service,
                f"{service}: the cluster refused its pod ({spec.image}): {_short(exc)}"
                + _rbac_hint(exc),
            ) from None
        with self._lock:
            self._services[service] = str(pod.metadata.uid)
        self._wait_running(service, spec, started)
        if self.forwarded:
            self._forward(service, ports)
        elif self.loadbalancer:
            host = self._load_balancer_address(service, started) if ports else LOOPBACK
        return Running(
            service=service,
            image=spec.image,
            container_id=f"{self.namespace}/{service}/{pod.metadata.uid}",
            host=host,
            ports=ports,
            internal_host=service,
            started_at=started,
        )

    def _create_node_port_service(
        self, service: str, spec: ContainerSpec, fixed: Mapping[int, int]
    ) -> dict[int, int]:
        """Make ``service``'s NodePort Service; container port -> node port. A fixed port
        (Kafka's advertised one) is asked for; the API server assigns the others."""
        from kubernetes.client.exceptions import ApiException

        body = self._node_port_service(service, spec, fixed)
        try:
            made = self.client.create_namespaced_service(self.namespace, body)
        except ApiException as exc:
            if exc.status != 422:
                raise
            asked = ", ".join(str(fixed[p]) for p in spec.ports if fixed.get(p)) or "none"
            low, high = self._node_port_range or NODE_PORT_RANGE
            raise ServiceError(
                service,
                f"{service}: the cluster refused the node ports of its Service "
                f"{service}{NODE_PORT_SUFFIX} (asked for: {asked}): {_short(exc)}. "
                f"--aikernel-kube-access nodeport needs free node ports in the cluster's range "
                f"(the API server's --service-node-port-range; {low}-{high} was assumed): "
                "another Service took the port since it was chosen, the port is out of the "
                "range, or the range is full. Delete unused NodePort Services, or use "
                "--aikernel-kube-access forward.",
            ) from None
        out = {int(p.port): int(p.node_port) for p in made.spec.ports or [] if p.node_port}
        missing = [p for p in spec.ports if p not in out]
        if missing:
            raise ServiceError(
                service,
                f"{service}: its Service {service}{NODE_PORT_SUFFIX} got no node port for "
                f"{', '.join(map(str, missing))} (--aikernel-kube-access nodeport)",
            )
        return out

    def _create_load_balancer(self, service: str, ports: Mapping[int, int]) -> dict[int, int]:
        """Make ``service``'s LoadBalancer Service (once: Kafka's is made before its pod, to
        learn the address it advertises); container port -> Service port."""
        from kubernetes.client.exceptions import ApiException

        with self._lock:
            made = self._balanced.get(service)
        if made is not None:
            return dict(made)
        body = {
            "metadata": {
                "name": f"{service}{LOAD_BALANCER_SUFFIX}",
                "labels": self.labels(service),
            },
            "spec": {
                "type": "LoadBalancer",
                "publishNotReadyAddresses": True,
                "selector": {LABEL_SESSION: self.session_id, LABEL_SERVICE: service},
                "ports": [
                    {"name": f"p{port}", "port": ports[port], "targetPort": port, "protocol": "TCP"}
                    for port in sorted(ports)
                ],
            },
        }
        try:
            self.client.create_namespaced_service(self.namespace, body)
        except ApiException as exc:
            raise ServiceError(
                service,
                f"{service}: the cluster refused its LoadBalancer Service "
                f"{service}{LOAD_BALANCER_SUFFIX} (--aikernel-kube-access loadbalancer): "
                f"{_short(exc)}" + _rbac_hint(exc),
            ) from None
        with self._lock:
            self._balanced[service] = dict(ports)
        return dict(ports)

    def _load_balancer_address(self, service: str, started: float) -> str:
        """The first ingress address (IP, else host name) of ``service``'s LoadBalancer
        Service, waited for until the start's timeout."""
        name = f"{service}{LOAD_BALANCER_SUFFIX}"
        deadline = started + self.startup_timeout
        last = ""
        while True:
            try:
                svc = self.client.read_namespaced_service(name, self.namespace, _request_timeout=10)
                ingress = (svc.status.load_balancer.ingress if svc.status else None) or []
                for entry in ingress:
                    if entry.ip or entry.hostname:
                        return str(entry.ip or entry.hostname)
                last = "its status has no ingress address"
            except Exception as exc:
                last = f"reading it failed: {_short(exc)}"
            if time.monotonic() >= deadline:
                break
            time.sleep(0.25)
        waited = time.monotonic() - started
        raise ServiceError(
            service,
            f"{service}: its LoadBalancer Service {name} in namespace {self.namespace} got no "
            f"address in {waited:.0f} s ({last}); --aikernel-kube-access loadbalancer needs a "
            "load-balancer controller in the cluster (the cloud provider's, MetalLB, k3s's "
            "ServiceLB, cloud-provider-kind for kind, `minikube tunnel`). Use "
            "--aikernel-kube-access nodeport or forward on a cluster without one, or raise "
            "--aikernel-startup-timeout if its controller is slow.",
        )

    def _pod(
        self, service: str, spec: ContainerSpec, labels: Mapping[str, str] | None
    ) -> dict[str, Any]:
        container: dict[str, Any] = {
            "name": service,
            "image": spec.image,
            "imagePullPolicy": "IfNotPresent",
            "env": [{"name": k, "value": str(v)} for k, v in spec.env.items()],
            "ports": [{"containerPort": p, "protocol": "TCP"} for p in spec.ports],
        }
        if spec.entrypoint is not None:
            container["command"] = list(spec.entrypoint)
        if spec.command is not None:
            container["args"] = list(spec.command)
        if spec.memory_mb is not None:
            container["resources"] = {"requests": {"memory": f"{spec.memory_mb}Mi"}}
        if spec.user is not None:
            uid, _, gid = spec.user.partition(":")
            if not uid.isdigit() or (gid and not gid.isdigit()):
                raise ServiceError(
                    service,
                    f"{service}: user {spec.user!r} is a name; a pod's user must be numeric "
                    "(uid[:gid])",
                )
            container["securityContext"] = {"runAsUser": int(uid)}
            if gid:
                container["securityContext"]["runAsGroup"] = int(gid)
        volumes: list[dict[str, Any]] = []
        mounts: list[dict[str, Any]] = []
        for i, (path, _options) in enumerate(sorted(spec.tmpfs.items())):
            volumes.append({"name": f"tmpfs{i}", "emptyDir": {"medium": "Memory"}})
            mounts.append({"name": f"tmpfs{i}", "mountPath": path})
        # caches that outlive a stack on Docker: nothing outlives a pod here, so each is an
        # empty folder (writable by any user) that lives as long as the pod
        for i, (_name, path) in enumerate(sorted(spec.volumes.items())):
            volumes.append({"name": f"cache{i}", "emptyDir": {}})
            mounts.append({"name": f"cache{i}", "mountPath": path})
        init: list[dict[str, Any]] = []
        if spec.files:
            # A ConfigMap volume is read-only, and a file of it mounted by subPath never
            # changes; services rewrite some of their files (Prometheus' configuration when the
            # stack grows). So an init container of the same image copies each file into an
            # emptyDir, which the service mounts file by file: writable, and the image's other
            # files in those folders stay visible.
            items, copies = [], []
            for i, (path, (_content, mode)) in enumerate(sorted(spec.files.items())):
                items.append({"key": f"f{i}", "path": f"f{i}"})
                copies.append(
                    f"cp {FILES_SRC}/f{i} {FILES_DST}/f{i} && chmod {mode:o} {FILES_DST}/f{i}"
                )
                mounts.append({"name": "files", "mountPath": path, "subPath": f"f{i}"})
            volumes.append(
                {"name": "files-src", "configMap": {"name": f"{service}-files", "items": items}}
            )
            volumes.append({"name": "files", "emptyDir": {}})
            init.append(
                {
                    "name": "files",
                    "image": spec.image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["sh", "-c", " && ".join(copies)],
                    "volumeMounts": [
                        {"name": "files-src", "mountPath": FILES_SRC},
                        {"name": "files", "mountPath": FILES_DST},
                    ],
                    **(
                        {"securityContext": container["securityContext"]}
                        if "securityContext" in container
                        else {}
                    ),
                }
            )
        if mounts:
            container["volumeMounts"] = mounts
        pod_spec: dict[str, Any] = {
            "containers": [container],
            **({"initContainers": init} if init else {}),
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            # no FOO_SERVICE_HOST/FOO_PORT variables: images read their own (KAFKA_PORT...)
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 2,
            "hostname": service,
            "volumes": volumes,
        }
        aliases = self._host_aliases(service)
        for name, address in sorted(spec.extra_hosts.items()):
            if address == "host-gateway":
                raise ServiceError(
                    service,
                    f"{service}: it must reach the machine that runs pytest ({name}), which a "
                    "pod on Kubernetes cannot (e.g. a --aikernel-prometheus-scrape target on "
                    "127.0.0.1): scrape an address the cluster reaches, or use --aikernel-runtime "
                    "docker",
                )
            aliases.append({"ip": address, "hostnames": [name]})
        if aliases:
            pod_spec["hostAliases"] = aliases
        return {
            "metadata": {
                "name": service,
                "labels": {**self.labels(service), **_valid(labels)},
                "annotations": self.annotations(labels),
            },
            "spec": pod_spec,
        }

    def _host_aliases(self, service: str) -> list[dict[str, Any]]:
        """The stack's running pods by alias: in-network names that resolve without DNS."""
        try:
            pods = self.client.list_namespaced_pod(
                self.namespace, label_selector=f"{LABEL_SESSION}={self.session_id}"
            ).items
        except Exception:
            return []
        out = []
        for pod in pods:
            name = (pod.metadata.labels or {}).get(LABEL_SERVICE, "")
            ip = pod.status.pod_ip if pod.status else None
            if name and name != service and ip:
                out.append({"ip": ip, "hostnames": [name]})
        return out

    def _service(self, service: str, spec: ContainerSpec) -> dict[str, Any]:
        body: dict[str, Any] = {
            "metadata": {"name": service, "labels": self.labels(service)},
            "spec": {
                "clusterIP": "None",
                "publishNotReadyAddresses": True,
                "selector": {LABEL_SESSION: self.session_id, LABEL_SERVICE: service},
            },
        }
        if spec.ports:
            body["spec"]["ports"] = [
                {"name": f"p{p}", "port": p, "targetPort": p, "protocol": "TCP"} for p in spec.ports
            ]
        return body

    def _node_port_service(
        self, service: str, spec: ContainerSpec, fixed: Mapping[int, int]
    ) -> dict[str, Any]:
        """The NodePort Service of ``service``: each port of the spec on a node port of every
        node (kube-proxy, or what stands in for it, carries it to the pod)."""
        ports = []
        for port in spec.ports:
            entry: dict[str, Any] = {
                "name": f"p{port}",
                "port": port,
                "targetPort": port,
                "protocol": "TCP",
            }
            if fixed.get(port):
                entry["nodePort"] = fixed[port]
            ports.append(entry)
        return {
            "metadata": {"name": f"{service}{NODE_PORT_SUFFIX}", "labels": self.labels(service)},
            "spec": {
                "type": "NodePort",
                "publishNotReadyAddresses": True,
                "selector": {LABEL_SESSION: self.session_id, LABEL_SERVICE: service},
                "ports": ports,
            },
        }

    def _config_map(self, service: str, spec: ContainerSpec) -> dict[str, Any]:
        data = {
            f"f{i}": base64.b64encode(content).decode("ascii")
            for i, (_path, (content, _mode)) in enumerate(sorted(spec.files.items()))
        }
        return {
            "metadata": {"name": f"{service}-files", "labels": self.labels(service)},
            "binaryData": data,
        }

    def pod_state(self, service: str) -> PodState | None:
        from kubernetes.client.exceptions import ApiException

        try:
            pod = self.client.read_namespaced_pod(service, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        status = pod.status
        phase = str(status.phase or "")
        unschedulable = ""
        for cond in status.conditions or []:
            if cond.type == "PodScheduled" and cond.status == "False":
                unschedulable = f"{cond.reason}: {cond.message}"
        for cs in status.container_statuses or []:
            state = cs.state
            if state.running is not None:
                return PodState(phase, True, ip=str(status.pod_ip or ""))
            if state.terminated is not None:
                t = state.terminated
                return PodState(
                    phase, False, str(t.reason or "Terminated"), str(t.message or ""), t.exit_code
                )
            if state.waiting is not None and state.waiting.reason not in (
                None,
                "ContainerCreating",
            ):
                return PodState(
                    phase, False, str(state.waiting.reason), str(state.waiting.message or "")
                )
        return PodState(phase, False, unschedulable=unschedulable)

    def _wait_running(self, service: str, spec: ContainerSpec, started: float) -> None:
        """Until the pod's container runs; errors for an image that cannot be had, a container
        that cannot be made or that ended, a pod that cannot be scheduled."""
        grace = min(UNSCHEDULABLE_GRACE, self.startup_timeout)
        deadline = started + self.startup_timeout
        while True:
            state = self.pod_state(service)
            now = time.monotonic()
            if state is not None:
                if state.running:
                    return
                if state.reason in _IMAGE_REASONS:
                    raise ImageUnavailable(
                        service,
                        f"{service}: the cluster cannot get the image {spec.image!r} "
                        f"({state.reason}: {state.message}). Push it to a registry the cluster "
                        "pulls from, load it into the cluster's nodes, or set another image "
                        f"(--aikernel-image {service}=IMAGE).\n{self.events(service)}",
                    )
                if state.reason in _CONFIG_REASONS:
                    raise ServiceError(
                        service,
                        f"{service}: its container could not be made ({state.reason}: "
                        f"{state.message}).\n{self.events(service)}",
                    )
                if state.exit_code is not None or state.reason == "CrashLoopBackOff":
                    raise ContainerExited(
                        service,
                        f"{service}: container ({spec.image}) exited with code "
                        f"{state.exit_code} ({state.reason}) before it was ready",
                    )
                if state.unschedulable and now - started >= grace:
                    raise ServiceError(
                        service,
                        f"{service}: its pod cannot be scheduled after {now - started:.0f} s "
                        f"({state.unschedulable}). Free capacity in the cluster, lower the "
                        "service's memory settings (--aikernel-elasticsearch-heap, "
                        "--aikernel-neo4j-heap), or use another cluster "
                        f"(--aikernel-kube-context).\n{self.events(service)}",
                    )
            if now >= deadline:
                raise ServiceError(
                    service,
                    f"{service}: its pod did not start within {self.startup_timeout:g} s "
                    f"(phase {state.phase if state else 'unknown'}; --aikernel-startup-timeout)."
                    f"\n{self.events(service)}",
                )
            time.sleep(0.1)

    def events(self, service: str, limit: int = 10) -> str:
        """The last events of ``service``'s pod, one per line."""
        try:
            items = self.client.list_namespaced_event(
                self.namespace, field_selector=f"involvedObject.name={service}"
            ).items
        except Exception as exc:
            return f"Events of pod {service}: unavailable ({_short(exc)})"
        items.sort(
            key=lambda e: str(e.last_timestamp or e.event_time or e.metadata.creation_timestamp)
        )
        lines = [f"  | {e.type} {e.reason}: {str(e.message or '').strip()}" for e in items[-limit:]]
        return f"Events of pod {service} in {self.namespace}:\n" + (
            "\n".join(lines) or "  | (none)"
        )

    # ---- while it runs ------------------------------------------------------------------------

    def check_alive(self, running: Running) -> None:
        try:
            state = self.pod_state(running.service)
        except Exception:
            return
        if state is None:
            raise ContainerExited(running.service, f"{running.service}: its pod is gone")
        if state.exit_code is not None or state.reason == "CrashLoopBackOff":
            raise ContainerExited(
                running.service,
                f"{running.service}: container ({running.image}) exited with code "
                f"{state.exit_code} ({state.reason}) before it was ready",
            )

    def is_running(self, container_id: str) -> bool:
        """Whether the recorded pod (``namespace/name/uid``) runs; its forwards are made sure
        of (a forwarder that ended with a reboot starts again on the recorded ports)."""
        namespace, _, rest = container_id.partition("/")
        name, _, uid = rest.partition("/")
        if namespace != self.namespace:
            return False
        try:
            pod = self.client.read_namespaced_pod(name, namespace)
        except Exception:
            return False
        if str(pod.metadata.uid) != uid or pod.status.phase != "Running":
            return False
        with contextlib.suppress(Exception):
            self._ensure_forwarder()
        return True

    def adopt(self, service: str, container_id: str) -> None:
        with self._lock:
            self._services[service] = container_id.rsplit("/", 1)[-1]
        self._namespace_ready = True

    def exec(
        self, service: str, cmd: list[str], env: Mapping[str, str] | None = None, user: str = ""
    ) -> tuple[int, str]:
        from kubernetes import client
        from kubernetes.stream import stream

        if user:
            raise NotOnKubernetes(service, f"{service}: exec as another user needs Docker")
        command = ["env", *(f"{k}={v}" for k, v in (env or {}).items()), *cmd] if env else cmd
        api = client.CoreV1Api(client.ApiClient(self.client.api_client.configuration))
        try:
            with self._exec_lock:
                resp = stream(
                    api.connect_get_namespaced_pod_exec,
                    service,
                    self.namespace,
                    container=service,
                    command=command,
                    stderr=True,
                    stdout=True,
                    stdin=False,
                    tty=False,
                    _preload_content=False,
                )
            resp.run_forever(timeout=120)
            code = resp.returncode  # before read_all(), which drops the status channel
            output = resp.read_all()
            resp.close()
        except Exception as exc:
            raise ServiceError(service, f"{service}: exec failed: {_short(exc)}") from None
        return int(code or 0), str(output)

    def put_file(self, service: str, path: str, content: bytes, mode: int = 0o644) -> bool:
        data = base64.b64encode(content).decode("ascii")
        code, _out = self.exec(
            service,
            [
                "sh",
                "-c",
                'printf %s "$1" | base64 -d > "$0" && chmod "$2" "$0"',
                path,
                data,
                f"{mode:o}",
            ],
        )
        return code == 0

    def logs(self, service: str, tail: int = 50) -> str:
        try:
            text = self.client.read_namespaced_pod_log(
                service, self.namespace, container=service, tail_lines=tail
            )
        except Exception as exc:
            return f"(no logs: {_short(exc)})\n{self.events(service)}"
        state = None
        with contextlib.suppress(Exception):
            state = self.pod_state(service)
        if state is not None and not state.running:
            return f"{text}\n{self.events(service)}"
        return str(text)

    def log_timestamps(self, service: str) -> list[tuple[str, str]]:
        text = self.client.read_namespaced_pod_log(
            service, self.namespace, container=service, timestamps=True
        )
        out = []
        for line in str(text).splitlines():
            stamp, _, rest = line.partition(" ")
            out.append((stamp, rest))
        return out

    # ---- what needs an engine -----------------------------------------------------------------

    def _engine_only(self, service: str, what: str) -> NotOnKubernetes:
        return NotOnKubernetes(
            service,
            f"{service}: {what} needs the Docker runtime; on Kubernetes (--aikernel-runtime "
            "kubernetes) a pod cannot be stopped, paused or cut off and come back the same. "
            "Use the network faults of the aikernel_faults fixture, or run this test with "
            "--aikernel-runtime docker.",
        )

    def state(self, service: str) -> Any:
        raise self._engine_only(service, "a fault")

    def stop(self, service: str, timeout: float = 10.0) -> None:
        raise self._engine_only(service, "stop()")

    def kill(self, service: str, signal: str = "SIGKILL") -> None:
        raise self._engine_only(service, "kill()")

    def start_again(self, service: str) -> None:
        raise self._engine_only(service, "start()")

    def pause(self, service: str) -> None:
        raise self._engine_only(service, "pause()")

    def unpause(self, service: str) -> None:
        raise self._engine_only(service, "unpause()")

    def disconnect(self, service: str) -> None:
        raise self._engine_only(service, "disconnect()")

    def reconnect(self, service: str) -> None:
        raise self._engine_only(service, "reconnect()")

    def recreate(
        self, service: str, spec: ContainerSpec, labels: Mapping[str, str] | None = None
    ) -> Running:
        raise self._engine_only(service, "promote()")

    def image_id(self, image: str) -> str:
        """No snapshots on Kubernetes: images live on the cluster's nodes."""
        return ""

    def find_snapshot(self, service: str, key: str, base_id: str) -> tuple[str, dict[str, str]]:
        return "", {}

    def capture(self, service: str, paths: Iterable[str]) -> dict[str, bytes]:
        raise self._engine_only(service, "a snapshot")

    def build_snapshot(self, service: str, **_kwargs: Any) -> str:
        raise self._engine_only(service, "a snapshot")

    def remove_image(self, image: str) -> None:
        return

    # ---- removal ------------------------------------------------------------------------------

    def remove(self, services: Iterable[str]) -> None:
        services = list(services)
        if not services:
            return
        self._unroute(services)
        api = self.client
        for service in services:
            with self._lock:
                self._services.pop(service, None)
                self._balanced.pop(service, None)
            # the NodePort and LoadBalancer Services too whatever this runtime's access: a
            # reused stack's services may have been started with another one
            for call, name in (
                (api.delete_namespaced_pod, service),
                (api.delete_namespaced_service, service),
                (api.delete_namespaced_service, f"{service}{NODE_PORT_SUFFIX}"),
                (api.delete_namespaced_service, f"{service}{LOAD_BALANCER_SUFFIX}"),
                (api.delete_namespaced_config_map, f"{service}-files"),
            ):
                with contextlib.suppress(Exception):
                    call(name, self.namespace, grace_period_seconds=0)
        # a pod of the same name cannot be made before the old one is gone
        deadline = time.monotonic() + 30
        for service in services:
            while time.monotonic() < deadline:
                try:
                    if self.pod_state(service) is None:
                        break
                except Exception:
                    break
                time.sleep(0.1)

    def remove_service(self, service: str, container_id: str) -> None:
        self.remove([service])

    def orphans(self, known: Iterable[str]) -> list[str]:
        """Services with a pod in the namespace that ``known`` (recorded pod ids) lacks."""
        ids = {k.rsplit("/", 1)[-1] for k in known}
        try:
            pods = self.client.list_namespaced_pod(self.namespace).items
        except Exception:
            return []
        return [str(p.metadata.name) for p in pods if str(p.metadata.uid) not in ids]

    def remove_orphans(self, known: Iterable[str]) -> None:
        self.remove(self.orphans(known))

    def sweep_dead(self) -> list[str]:
        return sweep_dead_namespaces(self.client)

    def start_container(self, container_id: str) -> bool:
        return False

    def find(self, service: str) -> bool:
        """Whether a pod of ``service`` exists in the namespace."""
        try:
            return self.pod_state(service) is not None
        except Exception:
            return False

    def describe(self) -> dict[str, Any]:
        """What ``aikernel down`` needs to find this runtime's stack again."""
        out: dict[str, Any] = {
            "kind": "kubernetes",
            "context": self.context,
            "prefix": self.namespace[: -len(self.session_id) - 1],
            "namespace": self.namespace,
            "access": self.access,
        }
        if self.nodeport:
            out["node_address"] = self._node[0] if self._node else self.node_address
        return out

    def detach(self) -> None:
        """This process lets go; the stack stays (xdist, reuse)."""
        return

    def close(self) -> None:
        """Delete the namespace (with everything in it); the forwarder ends when it sees it."""
        if self._api is None and not self._services and not self.reused:
            return
        delete_namespace(self.client, self.namespace)
        self._stop_forwarder()

    def _stop_forwarder(self) -> None:
        import signal

        folder = self.forward_folder
        pid = _forwarder_pid(folder)
        if pid:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)


def free_forward_port() -> int:
    """A free port on 127.0.0.1 below the kernel's ephemeral range, for a forward.

    The forwarder listens on IPv4 loopback only. A port from the ephemeral range could be the
    one the Docker engine gives a container's IPv6 binding next (``[::]:PORT``, which does not
    conflict with ``127.0.0.1:PORT``): a client of that container that connects to
    127.0.0.1:PORT would reach the forwarder instead (testcontainers' Ryuk did, here).
    """
    import random
    import socket

    low = 32768
    with (
        contextlib.suppress(OSError, ValueError),
        open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as fh,
    ):
        low = int(fh.read().split()[0])
    top = max(low - 1, 11000)
    for _ in range(200):
        port = random.randint(10000, top)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                continue
        return port
    return free_loopback_port(LOOPBACK)


def _valid(labels: Mapping[str, str] | None) -> dict[str, str]:
    return {k: v for k, v in (labels or {}).items() if _label_value(v) is not None}


def _rbac_hint(exc: Any) -> str:
    if getattr(exc, "status", None) == 403:
        return (
            ". The kubeconfig's user lacks a permission: give it the Role of docs/kubernetes.md "
            "(namespaces, pods, pods/log, pods/exec, pods/portforward, services, configmaps, "
            "events)"
        )
    return ""


def delete_namespace(api: Any, namespace: str) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        api.delete_namespace(namespace, grace_period_seconds=0, propagation_policy="Background")
    except ApiException as exc:
        return exc.status != 404
    return True


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, 0)


def _read_list(path: Path) -> list[int]:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [int(p) for p in data] if isinstance(data, list) else []


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "  | (no log)"
    return "\n".join(f"  | {line}" for line in text.splitlines()[-lines:]) or "  | (empty)"


def _forwarder_pid(folder: Path) -> int:
    """The pid of the forwarder serving ``folder`` (0 when none runs)."""
    try:
        text = (folder / "forwarder.log").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return 0
    import re

    found = re.findall(r"\(pid (\d+)\)", text)
    if not found:
        return 0
    pid = int(found[-1])
    try:
        os.kill(pid, 0)
    except OSError:
        return 0
    return pid


def sweep_dead_namespaces(api: Any) -> list[str]:
    """Delete the namespaces of stacks whose owner is surely dead (never a live one, never a
    reused one); returns their names."""
    out: list[str] = []
    try:
        items = api.list_namespace(label_selector=f"{LABEL_MANAGED}={MANAGER}").items
    except Exception:
        return out
    for ns in items:
        if ns.metadata.deletion_timestamp is not None:
            continue
        owner = Owner.parse((ns.metadata.annotations or {}).get(LABEL_OWNER, ""))
        if owner is not None and owner.is_dead() and delete_namespace(api, str(ns.metadata.name)):
            out.append(str(ns.metadata.name))
    return out


def remove_session(context: str | None, session_id: str) -> int:
    """Delete every namespace of ``session_id`` (the xdist controller's teardown)."""
    try:
        from kubernetes import client

        api = client.CoreV1Api(client.ApiClient(cluster_configuration(context)))
        items = api.list_namespace(label_selector=f"{LABEL_SESSION}={session_id}").items
    except Exception:
        return 0
    for ns in items:
        if ns.metadata is not None:
            delete_namespace(api, str(ns.metadata.name))
    return len(items)


__all__ = ["Cluster", "KubernetesRuntime", "KubernetesUnavailable", "NotOnKubernetes"]
