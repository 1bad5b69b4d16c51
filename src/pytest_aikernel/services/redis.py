"""Redis 7: a password-protected master (``redis``) and a replica (``redis-replica``).

Both run the official image's ``redis-server`` with arguments only (no config file, so the image
turns protected mode off and binds every interface), persistence off.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote, unquote

from ..runtime import ContainerSpec, Running
from .base import (
    ExternalTarget,
    Isolation,
    MaskedRepr,
    Service,
    StackContext,
    TestScope,
    endpoint_entry,
    external_url,
)

if TYPE_CHECKING:
    import redis

PORT = 6379
_NO_PERSISTENCE = ("--save", "", "--appendonly", "no")


@dataclass(frozen=True, repr=False)
class RedisService(MaskedRepr):
    """A Redis server of the stack, as reached from the test process."""

    host: str
    port: int
    password: str
    internal_host: str
    internal_port: int = PORT

    _secret_fields: ClassVar[tuple[str, ...]] = ("password",)

    @property
    def url(self) -> str:
        """``redis://:password@127.0.0.1:port/0``."""
        return self.url_for(0)

    def url_for(self, db: int = 0) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/{db}"

    @property
    def internal_url(self) -> str:
        """The URL from a container on the stack network."""
        return (
            f"redis://:{quote(self.password, safe='')}@{self.internal_host}:{self.internal_port}/0"
        )

    def client(self, db: int = 0, **kwargs: Any) -> redis.Redis:
        """A ``redis.Redis`` client on logical database ``db``; keyword arguments go to it."""
        import redis

        params: dict[str, Any] = {"socket_timeout": 10, "socket_connect_timeout": 5, **kwargs}
        return redis.Redis(
            host=self.host, port=self.port, password=self.password or None, db=db, **params
        )


@dataclass(frozen=True, repr=False)
class RedisReplicaService(RedisService):
    """A read-only replica of the stack's ``redis`` master."""

    master: RedisService | None = field(default=None)

    def wait_for_replication(self, timeout: float = 10.0) -> None:
        """Return once the replica has processed everything the master had at the call.

        Compares replication offsets (``INFO replication``); Redis ``WAIT`` is not used, since
        from 7.2 on it returns at once on a connection that wrote nothing itself.
        """
        if self.master is None:
            raise ValueError("this replica object has no master")
        import time

        from ..errors import ReplicationTimeout

        with self.master.client() as master:
            target = int(master.info("replication")["master_repl_offset"])
        deadline = time.monotonic() + timeout
        with self.client() as replica:
            while True:
                info = replica.info("replication")
                offset = int(info.get("slave_repl_offset", -1))
                if info.get("master_link_status") == "up" and offset >= target:
                    return
                if time.monotonic() >= deadline:
                    raise ReplicationTimeout(
                        f"redis-replica: not caught up after {timeout:.1f} s: the master was at "
                        f"offset {target}, the replica at {offset} (link "
                        f"{info.get('master_link_status')})"
                    )
                time.sleep(0.01)


#: logical databases 1..15 are handed to xdist workers for per-test use; 0 stays shared
ISOLATED_DBS = 15


@contextmanager
def _worker_db(redis_service: RedisService, scope: TestScope) -> Iterator[redis.Redis]:
    db = 1 + scope.worker_index % ISOLATED_DBS
    client = redis_service.client(db)
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


def _probe_client(ctx: StackContext, running: Running) -> redis.Redis:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis(
        host=running.host,
        port=running.host_port(PORT),
        password=ctx.secrets.get("redis.password") or None,
        # short: a probe that lands while the container's port is not yet served can wait in
        # the port proxy (seen: 0.34 s); a fresh attempt goes through once the server listens
        socket_timeout=0.5,
        socket_connect_timeout=0.5,
        # one attempt per probe: the stack polls every 50 ms, the client must not back off
        retry=Retry(NoBackoff(), 0),
    )


def _external_redis(env: Mapping[str, str], name: str, default: str) -> ExternalTarget:
    url = external_url(env, name, default)
    return ExternalTarget(
        host=str(url.hostname),
        ports={PORT: url.port or PORT},
        secrets={"redis.password": unquote(url.password or "")},
    )


class Redis(Service):
    name = "redis"
    default_image = "redis:7"
    ports = (PORT,)
    external_env = "AIKERNEL_REDIS_URL"
    external_default = "redis://127.0.0.1:6379/0"
    isolations = (
        Isolation(
            "aikernel_redis_db",
            """A ``redis.Redis`` client on a logical database owned by this xdist worker.

    The database (1-15, by worker) is flushed before and after the test; database 0 is left
    to session-wide use.
    """,
            _worker_db,
        ),
    )
    ready_log = "Ready to accept connections"
    fixture_doc = """Redis 7 master of the aikernel stack, password protected (session scope).

    Returns a :class:`pytest_aikernel.RedisService`: ``host``, ``port``, ``password``, ``url``
    and ``client(db=0, **kw)`` returning ``redis.Redis``.
    """

    def external(self, env: Mapping[str, str]) -> ExternalTarget:
        return _external_redis(env, self.external_env, self.external_default)

    def container(self, ctx: StackContext) -> ContainerSpec:
        return ContainerSpec(
            image=ctx.image(self.name),
            ports=(PORT,),
            command=(
                "redis-server",
                "--requirepass",
                ctx.secrets.get("redis.password"),
                # a replica's full sync starts at once instead of after the default 5 s delay
                "--repl-diskless-sync-delay",
                "0",
                *_NO_PERSISTENCE,
            ),
        )

    def probe(self, ctx: StackContext, running: Running) -> None:
        with _probe_client(ctx, running) as client:
            if not client.ping():
                raise RuntimeError("PING did not answer PONG")

    def expose(self, ctx: StackContext, running: Running) -> RedisService:
        return RedisService(
            host=running.host,
            port=running.host_port(PORT),
            password=ctx.secrets.get("redis.password"),
            internal_host=running.internal_host,
        )

    def vault_entry(self, ctx: StackContext, running: Running) -> dict[str, Any]:
        return endpoint_entry(running, PORT, password=ctx.secrets.get("redis.password"))


class RedisReplica(Service):
    name = "redis-replica"
    default_image = "redis:7"
    image_from = "redis"
    depends_on = ("redis",)
    ports = (PORT,)
    external_env = "AIKERNEL_REDIS_REPLICA_URL"
    external_default = "redis://127.0.0.1:6380/0"

    def external(self, env: Mapping[str, str]) -> ExternalTarget:
        return _external_redis(env, self.external_env, self.external_default)

    ready_log = "MASTER <-> REPLICA sync: Finished with success"
    fixture_doc = """Redis 7 replica (``--replicaof`` the aikernel master, read-only, session).

    Returns a :class:`pytest_aikernel.RedisReplicaService` with the master's fields and
    ``wait_for_replication(timeout)`` (waits until the replica's offset reaches the master's).
    """

    def container(self, ctx: StackContext) -> ContainerSpec:
        password = ctx.secrets.get("redis.password")
        master = ctx.running["redis"]
        return ContainerSpec(
            image=ctx.image(self.name),
            ports=(PORT,),
            command=(
                "redis-server",
                "--requirepass",
                password,
                "--masterauth",
                password,
                "--replicaof",
                master.internal_host,
                str(PORT),
                "--replica-read-only",
                "yes",
                *_NO_PERSISTENCE,
            ),
        )

    def probe(self, ctx: StackContext, running: Running) -> None:
        with _probe_client(ctx, running) as client:
            info = client.info("replication")
        if info.get("role") != "slave":
            raise RuntimeError(f"role is {info.get('role')!r}, not a replica")
        if info.get("master_link_status") != "up":
            raise RuntimeError(f"replication link is {info.get('master_link_status')!r}")

    def expose(self, ctx: StackContext, running: Running) -> RedisReplicaService:
        return RedisReplicaService(
            host=running.host,
            port=running.host_port(PORT),
            password=ctx.secrets.get("redis.password"),
            internal_host=running.internal_host,
            master=ctx.exposed["redis"],
        )

    def vault_entry(self, ctx: StackContext, running: Running) -> dict[str, Any]:
        return endpoint_entry(running, PORT, password=ctx.secrets.get("redis.password"))


SERVICES = (Redis, RedisReplica)
