"""The port-forwarder of a stack on Kubernetes: one detached process per namespace and machine.

The test process reaches each service through 127.0.0.1: a port here is forwarded, one
connection at a time, to a port of the service's pod through the API server (the same
``portforward`` subresource ``kubectl port-forward`` uses, over a websocket). The forwarder is a
process of its own because the addresses must outlive the process that started the service:
xdist workers attach to what another worker started, ``aikernel up`` exits and leaves the stack,
and Kafka advertises the one host port its clients must come back to.

Its folder holds:

- ``config.json``: kubeconfig context, namespace and the owner of a non-reused stack;
- ``routes.json``: local port -> (pod, pod port), written by the runtime under ``routes.lock``;
- ``listening.json``: the ports it listens on now (the runtime waits for its routes there);
- ``forwarder.lock``: held (flock) by the live forwarder: one per folder;
- ``forwarder.log``.

It ends when its namespace is gone or being deleted, or on SIGTERM. When the stack's owner (the
process that started a plain stack, or the xdist controller) is dead, it deletes the namespace
first: the Kubernetes counterpart of Ryuk, so a killed run leaves nothing running.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

#: how often the routes file is checked for changes (seconds)
ROUTES_POLL = 0.05
#: how often the owner and the namespace are checked (seconds)
OWNER_POLL = 1.0
NAMESPACE_POLL = 3.0
#: a forwarder whose API server did not answer for this long ends (seconds)
UNREACHABLE_LIMIT = 60.0


def log(folder: Path, text: str) -> None:
    with contextlib.suppress(OSError), open(folder / "forwarder.log", "a", encoding="utf-8") as fh:
        fh.write(f"{time.strftime('%H:%M:%S')} {text}\n")


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    tmp.write_text(json.dumps(data, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def load_configuration(context: str | None) -> Any:
    """The kubernetes client configuration as kubectl would find it: KUBECONFIG or
    ~/.kube/config (with ``context``), else the in-cluster service account."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    cfg = client.Configuration()
    try:
        config.load_kube_config(context=context, client_configuration=cfg, persist_config=False)
    except (ConfigException, OSError) as first:
        if context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=cfg)
        else:
            raise ConfigException(str(first)) from None
    return cfg


def auth_headers(cfg: Any) -> dict[str, str]:
    """The Authorization header of a configuration (tokens; client certificates are in TLS)."""
    hook = getattr(cfg, "refresh_api_key_hook", None)
    if hook is not None:
        hook(cfg)
    token = cfg.get_api_key_with_prefix("authorization")
    return {"authorization": token} if token else {}


def open_stream(cfg: Any, namespace: str, pod: str, port: int) -> Any:
    """A websocket carrying one connection to ``pod``:``port``."""
    from kubernetes.stream.ws_client import create_websocket

    base = cfg.host.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
    url = f"{base}/api/v1/namespaces/{namespace}/pods/{pod}/portforward?ports={port}"
    return create_websocket(
        cfg, url, {**auth_headers(cfg), "sec-websocket-protocol": "v4.channel.k8s.io"}
    )


def pump(conn: socket.socket, ws: Any) -> str:
    """Copy bytes both ways between a local connection and a port-forward websocket until
    either side ends; returns why it ended."""
    from websocket import ABNF, WebSocketConnectionClosedException

    # each channel's first frame is the port number (2 bytes): data on 0, errors on 1
    first = {0: True, 1: True}
    raw = ws.sock
    while True:
        ready, _, _ = select.select([conn, raw], [], [], 30.0)
        if conn in ready:
            try:
                data = conn.recv(65536)
            except OSError as exc:
                return f"local side: {exc}"
            if not data:
                return "local side closed"
            ws.send(b"\x00" + data, opcode=ABNF.OPCODE_BINARY)
        if raw in ready:
            while True:
                try:
                    opcode, frame = ws.recv_data_frame(True)
                except (WebSocketConnectionClosedException, OSError):
                    return "pod side closed"
                if opcode == ABNF.OPCODE_CLOSE:
                    return "pod side closed"
                if opcode == ABNF.OPCODE_BINARY and frame.data:
                    channel, payload = frame.data[0], frame.data[1:]
                    if first.get(channel):
                        first[channel] = False
                        payload = payload[2:]
                    if channel == 0 and payload:
                        try:
                            conn.sendall(payload)
                        except OSError as exc:
                            return f"local side: {exc}"
                    elif channel == 1 and payload:
                        return "error: " + payload.decode("utf-8", "replace")
                pending = getattr(raw, "pending", None)
                if not (pending and pending()):
                    break


class Forwarder:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        conf = read_json(folder / "config.json")
        self.namespace = str(conf["namespace"])
        self.context = conf.get("context") or None
        self.owner = str(conf.get("owner") or "")
        self.cfg = load_configuration(self.context)
        self.listeners: dict[int, tuple[socket.socket, dict[str, Any]]] = {}
        self.routes_mtime = 0.0
        self.stop = threading.Event()
        #: the namespace is gone (or deleted here): the folder goes with the forwarder
        self.gone = False
        self.unreachable_since: float | None = None

    # ---- routes -------------------------------------------------------------------------------

    def sync_routes(self) -> None:
        path = self.folder / "routes.json"
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            mtime = 0
        if mtime == self.routes_mtime:
            return
        self.routes_mtime = mtime
        routes = {int(k): v for k, v in read_json(path).items()}
        for port in list(self.listeners):
            if port not in routes:
                sock, _ = self.listeners.pop(port)
                with contextlib.suppress(OSError):
                    sock.close()
        for port, route in routes.items():
            current = self.listeners.get(port)
            if current is not None:
                self.listeners[port] = (current[0], route)  # a pod made again: same port
                continue
            family = socket.AF_INET6 if ":" in str(route.get("bind", "")) else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((str(route.get("bind") or "127.0.0.1"), port))
                sock.listen(128)
            except OSError as exc:
                log(self.folder, f"cannot listen on {port}: {exc}")
                sock.close()
                continue
            self.listeners[port] = (sock, route)
            threading.Thread(target=self.accept, args=(port, sock), daemon=True).start()
        write_json(self.folder / "listening.json", sorted(self.listeners))

    def accept(self, port: int, sock: socket.socket) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            entry = self.listeners.get(port)
            if entry is None:
                conn.close()
                return
            threading.Thread(target=self.serve, args=(conn, dict(entry[1])), daemon=True).start()

    def serve(self, conn: socket.socket, route: dict[str, Any]) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ws = None
        try:
            ws = open_stream(self.cfg, self.namespace, str(route["pod"]), int(route["port"]))
            why = pump(conn, ws)
            if why.startswith("error"):
                log(self.folder, f"{route['pod']}:{route['port']}: {why}")
        except Exception as exc:  # the pod is not there (yet), the API server refused...
            log(self.folder, f"{route.get('pod')}:{route.get('port')}: {type(exc).__name__}: {exc}")
        finally:
            with contextlib.suppress(Exception):
                conn.close()
            if ws is not None:
                with contextlib.suppress(Exception):
                    ws.close()

    # ---- life ---------------------------------------------------------------------------------

    def owner_dead(self) -> bool:
        if not self.owner:
            return False
        from .docker import Owner

        owner = Owner.parse(self.owner)
        return owner is not None and owner.is_dead()

    def namespace_gone(self, api: Any) -> bool:
        from kubernetes.client.exceptions import ApiException

        try:
            ns = api.read_namespace(self.namespace, _request_timeout=10)
        except ApiException as exc:
            if exc.status == 404:
                return True
            unreachable = exc.status in (502, 503, 504)
        except Exception:
            unreachable = True
        else:
            self.unreachable_since = None
            return ns.metadata.deletion_timestamp is not None
        if not unreachable:
            self.unreachable_since = None
            return False
        # the API server may be back soon; but every forward goes through it, so a forwarder
        # of a cluster that stays gone (stopped, rebuilt) would only hold its ports
        now = time.monotonic()
        if self.unreachable_since is None:
            self.unreachable_since = now
        return now - self.unreachable_since >= UNREACHABLE_LIMIT

    def run(self) -> int:
        from kubernetes import client

        api = client.CoreV1Api(client.ApiClient(self.cfg))
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
        log(self.folder, f"forwarding for namespace {self.namespace} (pid {os.getpid()})")
        next_owner = next_ns = 0.0
        while not self.stop.is_set():
            self.sync_routes()
            now = time.monotonic()
            if now >= next_owner:
                next_owner = now + OWNER_POLL
                if self.owner_dead():
                    log(self.folder, f"owner {self.owner} is dead: deleting {self.namespace}")
                    with contextlib.suppress(Exception):
                        api.delete_namespace(self.namespace, grace_period_seconds=0)
                    self.gone = True
                    break
            if now >= next_ns:
                next_ns = now + NAMESPACE_POLL
                if self.namespace_gone(api):
                    self.gone = True
                    break
            self.stop.wait(ROUTES_POLL)
        for sock, _ in self.listeners.values():
            with contextlib.suppress(OSError):
                sock.close()
        with contextlib.suppress(OSError):
            (self.folder / "listening.json").unlink()
        if not self.gone:  # stopped by SIGTERM: after its stack deleted the namespace?
            self.gone = self.namespace_gone(api)
        if self.gone:  # nothing will route here again
            import shutil

            shutil.rmtree(self.folder, ignore_errors=True)
        else:
            log(self.folder, "forwarder ends")
        return 0


def main(argv: list[str]) -> int:
    import fcntl

    folder = Path(argv[0])
    lock = open(folder / "forwarder.lock", "a+b")  # noqa: SIM115 - held for the process's life
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # another forwarder serves this folder
    try:
        return Forwarder(folder).run()
    except Exception as exc:
        log(folder, f"forwarder failed: {type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
