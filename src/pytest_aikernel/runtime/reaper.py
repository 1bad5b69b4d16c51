"""testcontainers' Ryuk reaper, asked to remove what should die with this process.

Ryuk removes everything that matches the filters its clients sent, once every client has been
gone for its reconnection timeout. The plugin creates testcontainers' own reaper once per process
(never from several threads: ``Reaper.get_instance`` is not thread-safe) and opens a connection of
its own to it, on which it sends one filter per stack that must die with this process
(``label=pytest-aikernel.session=<id>``). The connection is never closed: the process's end
closes it. Stacks that must outlive their process (reused stacks, ``aikernel up``, an xdist run's
stack that its controller removes) are never registered.

Where the reaper cannot run (``TESTCONTAINERS_RYUK_DISABLED``, or its image cannot be had), the
plugin's own cleanup remains: stacks are removed at the end of the session, and the leftovers of
killed sessions by the next session's sweeper or ``aikernel down``.
"""

from __future__ import annotations

import atexit
import contextlib
import socket
import threading
from collections.abc import Mapping

_lock = threading.Lock()
#: None until first asked; then "" (on) or why not
_status: str | None = None
_sockets: list[socket.socket] = []
_registered: set[str] = set()


@atexit.register
def _keep_open_until_exit() -> None:
    """Hand the sockets' descriptors to the process's end: the OS closes them when the process
    is gone (so Ryuk sees this client leave only then), and the interpreter's shutdown does not
    warn about sockets left open on purpose."""
    while _sockets:
        _sockets.pop().detach()


def _image() -> str:
    from testcontainers.core.config import testcontainers_config

    return str(testcontainers_config.ryuk_image)


def disabled_reason() -> str:
    """Why the reaper will not run ("" when it is enabled)."""
    from testcontainers.core.config import testcontainers_config

    if testcontainers_config.ryuk_disabled:
        return "off (TESTCONTAINERS_RYUK_DISABLED)"
    return ""


def status() -> str:
    """One line for the report header."""
    reason = disabled_reason()
    if reason:
        return f"Ryuk reaper {reason}; the plugin's own cleanup removes its containers"
    if _status:
        return (
            f"Ryuk reaper unavailable ({_status}); the plugin's own cleanup removes its containers"
        )
    return f"Ryuk reaper on ({_image()})"


def _address() -> tuple[str, int]:
    """Host and port of this process's Ryuk container, as testcontainers connects to it."""
    from testcontainers.core.container import Reaper

    container = getattr(Reaper, "_container", None)
    if container is None:
        raise RuntimeError("testcontainers started no reaper container")
    return str(container.get_container_host_ip()), int(container.get_exposed_port(8080))


def register(labels: Mapping[str, str]) -> str:
    """Have Ryuk remove every container and network with all of ``labels`` once this process is
    gone. Returns "" when registered, else why not (the caller goes on without it)."""
    global _status
    reason = disabled_reason()
    if reason:
        return reason
    line = "&".join(f"label={key}={value}" for key, value in sorted(labels.items()))
    with _lock:
        if line in _registered:
            return ""
        if _status:
            return _status
        try:
            from testcontainers.core.container import Reaper

            Reaper.get_instance()
            host, port = _address()
            sock = socket.create_connection((host, port), timeout=10)
        except Exception as exc:
            text = str(exc).strip().splitlines()
            _status = f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
            return _status
        try:
            sock.sendall(f"{line}\r\n".encode())
            answer = sock.recv(16)
        except OSError as exc:
            with contextlib.suppress(OSError):
                sock.close()
            _status = f"Ryuk did not acknowledge the filter ({exc})"
            return _status
        if not answer.startswith(b"ACK"):
            with contextlib.suppress(OSError):
                sock.close()
            _status = f"Ryuk answered {answer!r} instead of ACK"
            return _status
        sock.settimeout(None)
        _sockets.append(sock)
        _registered.add(line)
        _status = ""
        return ""


__all__ = ["disabled_reason", "register", "status"]
