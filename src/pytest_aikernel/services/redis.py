"""Redis 7: a password-protected master (``redis``) and a replica (``redis-replica``).

Both run the official image's ``redis-server`` with arguments only (no config file, so the image
turns protected mode off and binds every interface), persistence off.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote, unquote

from ..errors import FaultError, ServiceError
from ..faults import Faultable
from ..runtime import ContainerSpec, Running
from .base import (
    ExternalTarget,
    Isolation,
    MaskedRepr,
    SeedLedger,
    Service,
    StackContext,
    TestScope,
    endpoint_entry,
    external_url,
)

if TYPE_CHECKING:
    import redis

    from ._redis_db import RedisDb

PORT = 6379
_NO_PERSISTENCE = ("--save", "", "--appendonly", "no")


@dataclass(frozen=True, repr=False)
class RedisService(MaskedRepr, Faultable):
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
        return self.internal_url_for(0)

    def internal_url_for(self, db: int = 0) -> str:
        """The URL of logical database ``db`` from a container on the stack network."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{self.internal_host}:{self.internal_port}/{db}"

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


#: logical databases 1..15 are leased to test processes for per-test use; 0 stays shared
ISOLATED_DBS = 15
#: the lease of database n is this key in database 0; its value is "<run_id>:<client id>" of
#: the connection its holder keeps open for the session
LEASE_KEY = "aikernel:redis-db-lease:{db}"


class DbLease:
    """One of the logical databases 1-15, held by this process until :meth:`close`.

    The lease is the key ``aikernel:redis-db-lease:<db>`` in database 0, naming the server's
    ``run_id`` and the ``CLIENT ID`` of a connection the holder keeps open. It is valid while
    that client is connected (``CLIENT LIST ID``), so it dies with its process: a database whose
    holder is gone (ended, killed, or the server restarted) is free again. Claims go through
    WATCH/MULTI, so two processes never win the same database. Every flush of the per-test
    fixture first checks that the lease is still this process's (:meth:`check`).
    """

    def __init__(self, service: RedisService, db: int, holder: redis.Redis, token: str) -> None:
        self.service = service
        self.db = db
        self._holder = holder
        self._token = token
        self._key = LEASE_KEY.format(db=db)

    @classmethod
    def acquire(cls, service: RedisService, prefer: int = 1) -> DbLease:
        """Lease a free database, trying ``prefer`` first; ServiceError if all are held."""
        holder = service.client(0, single_connection_client=True, socket_keepalive=True)
        try:
            token = _token_of(holder)
            for i in range(ISOLATED_DBS):
                db = 1 + (prefer - 1 + i) % ISOLATED_DBS
                if _claim(holder, db, token) is None:
                    return cls(service, db, holder, token)
        except BaseException:
            holder.close()
            raise
        holder.close()
        raise ServiceError(
            "redis",
            f"redis: all {ISOLATED_DBS} per-test databases (1-{ISOLATED_DBS}) of "
            f"{service.host}:{service.port} are in use, each leased by a live test process "
            f"(a pytest session or xdist worker; lease keys {LEASE_KEY.format(db='<n>')} in "
            "database 0), so aikernel_redis_db has none for this process. Run fewer concurrent "
            "sessions or xdist workers against this Redis server; a database is free again as "
            "soon as its holder process ends.",
        )

    def check(self) -> None:
        """Return if this process still holds its database; ServiceError if another does.

        If the holder connection was dropped (idle timeout, server restart) and reconnected,
        the lease is claimed again under the new connection, unless someone else took it.
        """
        token = _token_of(self._holder)
        if token == self._token and _text(self._holder.get(self._key)) == token:
            return
        other = _claim(self._holder, self.db, token, previous=self._token)
        if other is not None:
            raise ServiceError(
                "redis",
                f"redis: this process lost its lease on database {self.db} of "
                f"{self.service.host}:{self.service.port} (its connection was dropped or the "
                f"lease key was deleted) and another process holds it now ({other}); it is "
                "not flushed, to keep that process's data. Avoid FLUSHALL of database 0 and "
                "short server 'timeout' settings while tests run.",
            )
        self._token = token

    def close(self) -> None:
        """Give the database back (the lease dies with the holder connection anyway)."""
        try:
            if _text(self._holder.get(self._key)) == self._token:
                self._holder.delete(self._key)
        except Exception:
            pass
        finally:
            self._holder.close()


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _token_of(holder: redis.Redis) -> str:
    """``<run_id>:<client id>`` of ``holder``'s connection (run_id: ids restart with the server)."""
    client_id = holder.client_id()
    run_id = holder.info("server")["run_id"]
    return f"{run_id}:{client_id}"


def _alive(client: Any, token: str) -> bool:
    """Whether the lease ``token`` names a connection that is still open on this server."""
    run_id, _, client_id = token.rpartition(":")
    if not client_id.isdigit() or run_id != client.info("server")["run_id"]:
        return False
    import redis

    try:
        return bool(client.client_list(client_id=[client_id]))
    except redis.ResponseError:  # CLIENT LIST ID needs Redis 6.2
        return any(str(c.get("id")) == client_id for c in client.client_list())


def _claim(client: redis.Redis, db: int, token: str, previous: str | None = None) -> str | None:
    """Make ``token`` the holder of ``db`` if it is free (or held by ``previous``, an earlier
    token of the same holder); None on success, else the live holder's token."""
    import redis

    key = LEASE_KEY.format(db=db)
    with client.pipeline() as pipe:
        while True:
            try:
                pipe.watch(key)  # type: ignore[no-untyped-call]
                current = _text(pipe.get(key))
                if current not in (None, token, previous) and _alive(pipe, current):
                    return current
                pipe.multi()
                pipe.set(key, token)
                pipe.execute()
                return None
            except redis.WatchError:
                continue  # changed under us: look again


@contextmanager
def _leased_db(redis_service: RedisService, scope: TestScope) -> Iterator[RedisDb]:
    from ._redis_db import RedisDb

    prefer = 1 + scope.worker_index % ISOLATED_DBS
    lease = scope.shared("db_lease", lambda: DbLease.acquire(redis_service, prefer))
    lease.check()
    client = RedisDb.open(redis_service, lease.db, scope.name)
    try:
        client.flushdb()
        yield client
    finally:
        try:
            lease.check()
            client.flushdb()
        finally:
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


#: the external seed lock and its record, in database 0
SEED_LOCK_KEY = "aikernel:seed-lock"
SEED_HASH_KEY = "aikernel:seeded"


class _RedisLedger(SeedLedger):
    def __init__(self, client: redis.Redis) -> None:
        self._client = client

    def seeded(self) -> dict[str, str]:
        raw = self._client.hgetall(SEED_HASH_KEY)
        return {str(_text(k)): str(_text(v)) for k, v in raw.items()}

    def mark(self, keys: Mapping[str, str]) -> None:
        if keys:
            self._client.hset(SEED_HASH_KEY, mapping=dict(keys.items()))


class Redis(Service):
    name = "redis"
    default_image = "redis:7"
    ports = (PORT,)
    external_env = "AIKERNEL_REDIS_URL"
    external_default = "redis://127.0.0.1:6379/0"
    isolations = (
        Isolation(
            "aikernel_redis_db",
            """A ``redis.Redis`` client on a logical database this test process holds.

    Each process (pytest session or xdist worker) leases one of databases 1-15 for its whole
    session, with a lease in Redis that dies with the process, so concurrent sessions on one
    server never share one. It is flushed before and after each test; database 0 is left to
    session-wide use. The client is a :class:`pytest_aikernel.RedisDb`: ``db``, ``url``,
    ``internal_url`` and ``scope_name`` (the test's name; the database is the process's).
    """,
            _leased_db,
            world_entry=lambda _entry, client: {"db": client.db},
            world_env=lambda client, internal: {
                "AIKERNEL_REDIS_URL": client.internal_url if internal else client.url
            },
        ),
    )
    ready_log = "Ready to accept connections"
    fixture_doc = """Redis 7 master of the aikernel stack, password protected (session scope).

    Returns a :class:`pytest_aikernel.RedisService`: ``host``, ``port``, ``password``, ``url``
    and ``client(db=0, **kw)`` returning ``redis.Redis``.
    """

    def external(self, env: Mapping[str, str]) -> ExternalTarget:
        return _external_redis(env, self.external_env, self.external_default)

    @contextlib.contextmanager
    def seed_ledger(self, target: ExternalTarget) -> Iterator[SeedLedger]:
        """``SET NX`` of a lock key with a 30 s expiry, renewed while seeding runs (a holder that
        dies lets it expire), and the hash ``aikernel:seeded``, in database 0."""
        import secrets as secrets_mod
        import threading

        import redis

        client = redis.Redis(
            host=target.host,
            port=target.ports[PORT],
            password=target.secrets.get("redis.password") or None,
            socket_timeout=10,
            socket_connect_timeout=10,
        )
        token = secrets_mod.token_hex(8)
        try:
            while not client.set(SEED_LOCK_KEY, token, nx=True, ex=30):
                time.sleep(0.1)
        except redis.RedisError as exc:
            client.close()
            raise ServiceError(
                self.name,
                f"redis: cannot take the seed lock at {target.host}:{target.ports[PORT]} (env "
                f"{self.external_env}): {type(exc).__name__}: {exc}",
            ) from None
        done = threading.Event()

        def renew() -> None:
            while not done.wait(10):
                with contextlib.suppress(redis.RedisError):
                    if _text(client.get(SEED_LOCK_KEY)) == token:
                        client.expire(SEED_LOCK_KEY, 30)

        keeper = threading.Thread(target=renew, name="aikernel-seed-lock", daemon=True)
        keeper.start()
        try:
            yield _RedisLedger(client)
        finally:
            done.set()
            keeper.join(timeout=5)
            with contextlib.suppress(redis.RedisError):
                if _text(client.get(SEED_LOCK_KEY)) == token:
                    client.delete(SEED_LOCK_KEY)
            client.close()

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
                # ping replicas every second, so that they notice a lost master in seconds
                "--repl-ping-replica-period",
                "1",
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
                # a master gone silent (cut off by a fault) is noticed after 5 s, not 60
                "--repl-timeout",
                "5",
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

    can_promote = True

    def promote(self, ctx: StackContext, running: Running) -> None:
        with _probe_client(ctx, running) as client:
            if client.info("replication").get("role") != "slave":
                raise FaultError(
                    "aikernel_redis_replica.promote(): the replica is a master already "
                    "(promoted earlier in this test)"
                )
            client.execute_command("REPLICAOF", "NO", "ONE")

    def unpromote(self, ctx: StackContext, running: Running) -> bool:
        with _probe_client(ctx, running) as client:
            if client.info("replication").get("role") != "slave":
                client.execute_command("REPLICAOF", ctx.running["redis"].internal_host, str(PORT))
        return True

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
