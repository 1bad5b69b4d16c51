"""Plain JSON over HTTP with the standard library, for probes and seeding of HTTP services.

The plugin's own readiness checks and seeding speak plain HTTP, so they work on any server of a
service's REST API (Elasticsearch or OpenSearch, Jaeger 1.x or 2.x), independent of the product
checks of vendor clients.

Stack addresses are loopback or in-network: every request goes direct, whatever ``http_proxy``,
``HTTPS_PROXY`` or ``ALL_PROXY`` say (a corporate CI proxy cannot reach them). The same holds for
the requests sessions the service modules make (:func:`direct_session`).
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import requests

#: an opener without the environment's proxies (urlopen's default opener reads *_proxy)
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8")) if self.body else None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def request(
    method: str,
    url: str,
    body: Any = None,
    *,
    timeout: float = 10.0,
    auth: tuple[str, str] | None = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> Response:
    """Send one request; HTTP error statuses are returned, connection errors raise OSError."""
    data = raw
    hdrs = {"Accept": "application/json", **(headers or {})}
    if body is not None:
        data = json.dumps(body).encode("utf-8")
        hdrs.setdefault("Content-Type", "application/json")
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        hdrs["Authorization"] = f"Basic {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with _DIRECT.open(req, timeout=timeout) as resp:
            return Response(resp.status, resp.read())
    except urllib.error.HTTPError as exc:
        return Response(exc.code, exc.read())


def direct_session() -> requests.Session:
    """A ``requests.Session`` that ignores proxy settings of the environment.

    ``trust_env`` off: ``*_proxy`` variables (``ALL_PROXY`` included, which requests honours for
    every scheme) and ``.netrc`` are not read; stack addresses are plain HTTP on loopback or the
    stack network, where neither applies.
    """
    import requests

    session = requests.Session()
    session.trust_env = False
    return session


def reason(response: Response) -> str:
    """The server's own explanation of an error response (Elasticsearch's error.reason...)."""
    try:
        data = response.json()
    except ValueError:
        return response.body.decode("utf-8", errors="replace")[:500]
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):
            root = err.get("root_cause") or []
            first = root[0] if root and isinstance(root[0], dict) else err
            return f"{first.get('type', 'error')}: {first.get('reason', err.get('reason', ''))}"
        if isinstance(err, str):
            return err
        for key in ("message", "errors"):
            if key in data:
                return str(data[key])
    return json.dumps(data)[:500]
