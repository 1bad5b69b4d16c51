"""Which Docker engine the stack runs on, and where its published ports are.

The engine is found as the Docker CLI finds it: ``DOCKER_HOST`` (``unix://``, ``tcp://``,
``ssh://``), else the current ``docker context`` (``DOCKER_CONTEXT``, else ``currentContext`` in
``~/.docker/config.json``), else the default socket. The address the test process uses for the
services' published ports is ``TESTCONTAINERS_HOST_OVERRIDE`` or ``TC_HOST`` when set (as for
testcontainers), else the engine's host for a remote engine, else loopback. Ports are published on
``--aikernel-bind-address``, by default loopback on a local engine and the engine's address on a
remote one.

When pytest itself runs in a container of a local engine (its socket mounted, no host network),
the published ports of the engine's host are out of its reach: the plugin then puts its own
container on each stack network and reaches the services by their network aliases
("attached" mode).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

LOOPBACK = "127.0.0.1"
DEFAULT_SOCKET = "unix:///var/run/docker.sock"


@dataclass(frozen=True)
class Engine:
    """A Docker engine and how the test process reaches what it publishes."""

    #: what docker-py connects to: ``unix:///...``, ``tcp://host:port``, ``ssh://user@host``
    endpoint: str
    #: where the endpoint came from: "DOCKER_HOST", "docker context 'NAME'", "default socket"
    source: str
    #: the engine runs on this machine (a unix socket or a named pipe)
    local: bool
    #: the address of published ports, as seen from the test process
    host: str
    #: where ``host`` came from: "loopback", "DOCKER_HOST", "TESTCONTAINERS_HOST_OVERRIDE"...
    host_source: str
    #: the address ports are published on, on the engine's side
    bind: str
    #: where ``bind`` came from ("default" or the setting's source)
    bind_source: str = "default"
    #: this process's container on the engine, when pytest runs in one (attached mode)
    container: str = ""

    @property
    def attached(self) -> bool:
        """Services are reached through the stack network by their aliases."""
        return bool(self.container)

    @property
    def exposed(self) -> bool:
        """The published ports listen on more than loopback (other machines may reach them)."""
        try:
            return not ipaddress.ip_address(self.bind).is_loopback
        except ValueError:
            return True

    def describe(self) -> str:
        """One line for the report header."""
        if self.attached:
            where = (
                f"services reached on the stack network from this container ({self.container[:12]})"
            )
        else:
            where = f"services at {self.host} ({self.host_source}), ports bound to {self.bind}"
        return f"engine {self.endpoint} ({self.source}); {where}"


def _context_endpoint(env: Mapping[str, str]) -> tuple[str, str] | None:
    """(endpoint, source) of the current docker context, if it is not "default"."""
    config_dir = Path(env.get("DOCKER_CONFIG") or Path.home() / ".docker")
    name = env.get("DOCKER_CONTEXT", "").strip()
    if not name:
        try:
            config = json.loads((config_dir / "config.json").read_text())
        except (OSError, ValueError):
            return None
        name = str(config.get("currentContext") or "") if isinstance(config, dict) else ""
    if not name or name == "default":
        return None
    digest = hashlib.sha256(name.encode()).hexdigest()
    meta = config_dir / "contexts" / "meta" / digest / "meta.json"
    try:
        data = json.loads(meta.read_text())
        host = str(data["Endpoints"]["docker"]["Host"])
    except (OSError, ValueError, KeyError, TypeError):
        from ..errors import DockerUnavailable

        origin = "DOCKER_CONTEXT" if env.get("DOCKER_CONTEXT") else config_dir / "config.json"
        raise DockerUnavailable(
            f"docker context {name!r} (from {origin}) has no readable endpoint in {meta}. Run "
            "`docker context use default` or set DOCKER_HOST."
        ) from None
    return host, f"docker context {name!r}"


def endpoint(env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(the engine's endpoint, where it came from)."""
    env = os.environ if env is None else env
    if env.get("DOCKER_HOST", "").strip():
        return env["DOCKER_HOST"].strip(), "DOCKER_HOST"
    found = _context_endpoint(env)
    if found is not None:
        return found
    return DEFAULT_SOCKET, "default socket"


def _is_local(url: str) -> bool:
    scheme = urlsplit(url).scheme
    return scheme in ("unix", "http+unix", "npipe", "")


def _is_specific(address: str) -> bool:
    """Not loopback and not "every address" (0.0.0.0, ::)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return not (ip.is_loopback or ip.is_unspecified)


def _resolve(name: str) -> str:
    """An IP address for ``name`` ("" if it does not resolve)."""
    if name == "localhost":
        return LOOPBACK
    try:
        ipaddress.ip_address(name)
        return name
    except ValueError:
        pass
    try:
        return socket.gethostbyname(name)
    except OSError:
        return ""


def find(
    bind: str | None = None,
    bind_source: str = "default",
    env: Mapping[str, str] | None = None,
) -> Engine:
    """The engine of the environment, without contacting it (see :func:`attach_check` for
    attached mode)."""
    env = os.environ if env is None else env
    url, source = endpoint(env)
    local = _is_local(url)
    override = ""
    host_source = "loopback"
    for var in ("TESTCONTAINERS_HOST_OVERRIDE", "TC_HOST"):
        if env.get(var, "").strip():
            override, host_source = env[var].strip(), var
            break
    if override:
        host = override
    elif bind and _is_specific(bind):
        # ports published on one address of the engine's host: that is where they are
        host, host_source = bind, "bind address"
    elif local:
        host = LOOPBACK
    else:
        host = urlsplit(url).hostname or LOOPBACK
        host_source = source
        if host == "localhost":
            host = LOOPBACK
    if bind:
        chosen = bind
    elif local:
        chosen = LOOPBACK
    else:
        # the engine's address as seen from here; a name that does not resolve: every address
        chosen = _resolve(urlsplit(url).hostname or "") or "0.0.0.0"
    return Engine(
        endpoint=url,
        source=source,
        local=local,
        host=host,
        host_source=host_source,
        bind=chosen,
        bind_source=bind_source if bind else "default",
    )


_CID = re.compile(r"/containers/([0-9a-f]{64})/")


def own_container_candidates() -> list[str]:
    """Ids this process's container may have: from /proc/self/mountinfo (the engine mounts
    /etc/hostname and friends from /var/lib/docker/containers/<id>/) and the host name."""
    out: list[str] = []
    try:
        text = Path("/proc/self/mountinfo").read_text()
    except OSError:
        text = ""
    for match in _CID.finditer(text):
        if match.group(1) not in out:
            out.append(match.group(1))
    name = socket.gethostname()
    if re.fullmatch(r"[0-9a-f]{12,64}", name) and name not in out:
        out.append(name)
    return out


__all__ = ["Engine", "endpoint", "find", "own_container_candidates"]
