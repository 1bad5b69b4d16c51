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
from typing import Any

_lock = threading.Lock()
#: None until first asked; then "" (on) or why not
_status: str | None = None
_sockets: list[socket.socket] = []
_registered: set[str] = set()
#: testcontainers' Reaper class, when this plugin made its reaper and left it to end by itself
_left_to_end: Any = None


@atexit.register
def _keep_open_until_exit() -> None:
    """Hand the sockets' descriptors to the process's end: the OS closes them when the process
    is gone (so Ryuk sees this client leave only then), and the interpreter's shutdown does not
    warn about sockets left open on purpose."""
    while _sockets:
        _sockets.pop().detach()
    if _left_to_end is not None:  # testcontainers' own connection to the reaper, likewise
        sock = getattr(_left_to_end, "_socket", None)
        if sock is not None:
            with contextlib.suppress(Exception):
                sock.detach()


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


#: how long to keep trying to reach a reaper that testcontainers says has started
CONNECT_WINDOW = 10.0


def _send_filter(host: str, port: int, line: str) -> tuple[socket.socket | None, str]:
    """A connection to Ryuk on which ``line`` was acknowledged, or (None, why not).

    Docker's port proxy accepts a connection to a just published port before it can reach the
    server behind it, and then closes it: such a connection answers nothing (b""), so it is
    tried again, for up to ``CONNECT_WINDOW`` seconds.
    """
    import time

    deadline = time.monotonic() + CONNECT_WINDOW
    why = ""
    while True:
        sock: socket.socket | None = None
        try:
            sock = socket.create_connection((host, port), timeout=5)
            sock.sendall(f"{line}\r\n".encode())
            answer = sock.recv(16)
            if answer.startswith(b"ACK"):
                return sock, ""
            why = f"Ryuk answered {answer!r} instead of ACK"
        except OSError as exc:
            why = f"Ryuk did not acknowledge the filter ({exc})"
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        if time.monotonic() >= deadline:
            return None, why
        time.sleep(0.1)


def _let_ryuk_end_by_itself(reaper_class: Any) -> None:
    """testcontainers removes its reaper's container at the interpreter's exit (a forced
    removal: about 0.25 s at the end of every session here). The reaper this plugin had made
    is left to end as Ryuk is made to: once its last client is gone (the process's end closes
    the socket) and none is back within RYUK_RECONNECTION_TIMEOUT, it removes what its filters
    match and exits, and Docker removes its container (testcontainers starts it auto-removed)."""
    global _left_to_end
    with contextlib.suppress(Exception):
        atexit.unregister(reaper_class.delete_instance)
        _left_to_end = reaper_class


def _filter_line(labels: Mapping[str, str]) -> str:
    """Ryuk's filter for containers and networks that carry all of ``labels``."""
    return "&".join(f"label={key}={value}" for key, value in sorted(labels.items()))


def register(labels: Mapping[str, str]) -> str:
    """Have Ryuk remove every container and network with all of ``labels`` once this process is
    gone. Returns "" when registered, else why not (the caller goes on without it)."""
    global _status
    reason = disabled_reason()
    if reason:
        return reason
    line = _filter_line(labels)
    with _lock:
        if line in _registered:
            return ""
        if _status:
            return _status
        try:
            from testcontainers.core.container import Reaper

            created_here = getattr(Reaper, "_instance", None) is None
            Reaper.get_instance()
            if created_here:
                _let_ryuk_end_by_itself(Reaper)
            host, port = _address()
        except Exception as exc:
            text = str(exc).strip().splitlines()
            _status = f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
            return _status
        sock, why = _send_filter(host, port, line)
        if sock is None:
            _status = why
            return _status
        sock.settimeout(None)
        _sockets.append(sock)
        _registered.add(line)
        _status = ""
        return ""


def holds(labels: Mapping[str, str]) -> bool:
    """Whether Ryuk acknowledged a filter of exactly ``labels`` from this process (it removes
    what they match once the process is gone)."""
    line = _filter_line(labels)
    with _lock:
        return line in _registered and _status == ""


__all__ = ["disabled_reason", "holds", "register", "status"]
