"""Where the service finds its dependencies: only a Vault address, a token and a KV path.

As in production, the service reads ``<path>/aikernel/postgres`` and ``<path>/aikernel/redis``
(KV v2, mount ``secret``) and connects where those entries point. ``CATALOG_ADDRESSES=internal``
makes it use the in-network addresses (when it runs as a container on the stack network).
"""

from __future__ import annotations

import json
import os
import urllib.request
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Config:
    postgres_dsn: str
    redis_url: str


def _read(addr: str, token: str, path: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{addr.rstrip('/')}/v1/secret/data/{path}", headers={"X-Vault-Token": token}
    )
    # a stack address: never through a proxy
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as response:
        data: dict[str, Any] = json.load(response)["data"]["data"]
    return data


def load(env: dict[str, str] | None = None) -> Config:
    env = dict(os.environ if env is None else env)
    addr, token, path = env["VAULT_ADDR"], env["VAULT_TOKEN"], env["CATALOG_VAULT_PATH"]
    internal = env.get("CATALOG_ADDRESSES", "host") == "internal"
    pg = _read(addr, token, f"{path}/aikernel/postgres")
    cache = _read(addr, token, f"{path}/aikernel/redis")

    def where(entry: dict[str, Any]) -> tuple[str, int]:
        if internal:
            return str(entry["internal_host"]), int(entry["internal_port"])
        return str(entry["host"]), int(entry["port"])

    pg_host, pg_port = where(pg)
    redis_host, redis_port = where(cache)
    return Config(
        postgres_dsn=(
            f"postgresql://{pg['username']}:{pg['password']}@{pg_host}:{pg_port}/{pg['database']}"
        ),
        redis_url=f"redis://:{cache['password']}@{redis_host}:{redis_port}/{cache.get('db', 0)}",
    )
