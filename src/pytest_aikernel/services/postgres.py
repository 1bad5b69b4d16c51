"""PostgreSQL 15: the primary (``postgres``) and a streaming replica (``postgres-replica``).

The primary runs the official image's entrypoint with settings that image accepts and that make
it start fast for tests: its data directory on a tmpfs, ``initdb --no-sync``, and a server with
``fsync`` and ``full_page_writes`` off. The bundled init (databases ``aikernel_catalog`` and
``aikernel_audit`` and their schemas) and the user's init files are run over a client connection
once the server answers, so a failing statement is reported with its file, database and line.

The replica runs the same image as the ``postgres`` user with a small shell entrypoint: it takes a
``pg_basebackup`` of the primary over the stack network and starts streaming from it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote, unquote

from .._sql import MetaCommand, Statement, split_sql
from ..errors import (
    ConfigError,
    FaultError,
    ReplicationTimeout,
    SeedError,
    ServiceError,
    SnapshotUnusable,
)
from ..faults import Faultable
from ..runtime import ContainerSpec, Running
from ..settings import OPTIONS_BY_FIELD
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
    import psycopg

    from ._pg_clone import CloneConnection

PORT = 5432
USER = "aikernel"
CATALOG = "aikernel_catalog"
AUDIT = "aikernel_audit"
DATABASES = (CATALOG, AUDIT)
PGDATA = "/var/lib/postgresql/data"
TEMPLATE_SUFFIX = "_template"
#: server flags for a throwaway test database: durability off (the official image accepts them)
FAST_FLAGS = (
    "-c",
    "listen_addresses=*",
    "-c",
    "fsync=off",
    "-c",
    "full_page_writes=off",
    "-c",
    "wal_level=replica",
    "-c",
    "max_wal_senders=10",
)
_HBA_REPLICATION = b"""#!/bin/sh
# added by pytest-aikernel: let the replica stream from this primary
echo "host replication all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
"""
_REPLICA_SCRIPT = """set -e
if [ "$(id -u)" = 0 ]; then
  # started as root (a pod's user must be numeric, and the postgres uid differs between
  # images): become postgres as the official entrypoint does, with gosu (su-exec on alpine)
  for tool in gosu su-exec; do
    if command -v "$tool" >/dev/null 2>&1; then
      exec "$tool" postgres sh -c "$AIKERNEL_REPLICA_SCRIPT" "$0" "$@"
    fi
  done
  echo "pytest-aikernel: neither gosu nor su-exec in the image to become postgres" >&2
  exit 1
fi
mkdir -p "$PGDATA"
chmod 700 "$PGDATA"
tries=0
until pg_basebackup -h "$AIKERNEL_PRIMARY_HOST" -p "$AIKERNEL_PRIMARY_PORT" -U "$PGUSER" \\
    -D "$PGDATA" -R -X stream --checkpoint=fast --no-sync -w; do
  tries=$((tries + 1))
  if [ "$tries" -ge 50 ]; then echo "pg_basebackup failed $tries times" >&2; exit 1; fi
  rm -rf "${PGDATA:?}"/*
  sleep 0.2
done
echo "pytest-aikernel: base backup taken, starting the standby"
exec postgres -D "$PGDATA" "$@"
"""


@dataclass(frozen=True, repr=False)
class PostgresService(MaskedRepr, Faultable):
    """A PostgreSQL server of the stack, as reached from the test process.

    ``internal_host``/``internal_port`` are the same server as reached from containers on the
    stack's network (pass them to services under test that run in containers).
    """

    host: str
    port: int
    user: str
    password: str
    internal_host: str
    internal_port: int = PORT
    databases: tuple[str, ...] = DATABASES

    _secret_fields: ClassVar[tuple[str, ...]] = ("password",)

    def dsn(self, dbname: str = CATALOG) -> str:
        """A libpq URI for ``dbname`` from the test process."""
        return _uri(self.user, self.password, self.host, self.port, dbname)

    def internal_dsn(self, dbname: str = CATALOG) -> str:
        """A libpq URI for ``dbname`` from a container on the stack network."""
        return _uri(self.user, self.password, self.internal_host, self.internal_port, dbname)

    def connect(self, dbname: str = CATALOG, **kwargs: Any) -> psycopg.Connection[Any]:
        """A new psycopg connection to ``dbname``; keyword arguments go to psycopg.connect."""
        import psycopg

        params: dict[str, Any] = {"connect_timeout": 10, **kwargs}
        return psycopg.connect(self.dsn(dbname), **params)


@dataclass(frozen=True, repr=False)
class PostgresReplicaService(PostgresService):
    """A read-only streaming replica of the stack's ``postgres`` primary."""

    primary: PostgresService | None = field(default=None)

    def wait_for_replication(self, timeout: float = 10.0) -> None:
        """Return once the replica has replayed everything the primary had written at the call.

        Raises :class:`~pytest_aikernel.errors.ReplicationTimeout` after ``timeout`` seconds.
        """
        if self.primary is None:
            raise ValueError("this replica object has no primary")
        with self.primary.connect("postgres", autocommit=True) as conn:
            row = conn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()
        assert row is not None
        target = str(row[0])
        deadline = time.monotonic() + timeout
        replayed = "none"
        with self.connect("postgres", autocommit=True) as conn:
            while True:
                row = conn.execute(
                    "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn, pg_last_wal_replay_lsn()::text",
                    (target,),
                ).fetchone()
                assert row is not None
                if row[0]:
                    return
                replayed = str(row[1])
                if time.monotonic() >= deadline:
                    raise ReplicationTimeout(
                        f"postgres-replica: not caught up after {timeout:.1f} s: the primary had "
                        f"written up to {target}, the replica replayed up to {replayed}"
                    )
                time.sleep(0.01)


def _uri(user: str, password: str, host: str, port: int, dbname: str) -> str:
    return (
        f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/"
        f"{quote(dbname, safe='')}"
    )


def _probe_connect(user: str, password: str, running: Running, dbname: str) -> Any:
    import psycopg

    return psycopg.connect(
        host=running.host,
        port=running.host_port(PORT),
        user=user,
        password=password,
        dbname=dbname,
        connect_timeout=2,
        autocommit=True,
    )


#: how long a test waits for its clone before the pool reports what holds it up (seconds)
CLONE_TIMEOUT = 60.0
_CLONE_FIXTURES = "aikernel_pg, aikernel_pg_audit, aikernel_pg_factory"


class _AdminLost(Exception):
    """The pool's admin connection is gone and could not be made again."""


class _AdminConnection:
    """An autocommit connection to database ``postgres`` for CREATE, ALTER and DROP DATABASE.

    A connection the server closed (terminated backend, restart) is opened again once per
    statement; if that fails too, :meth:`execute` raises _AdminLost.
    """

    def __init__(self, pg: PostgresService, application_name: str) -> None:
        self._pg = pg
        self.application_name = application_name
        self._conn: psycopg.Connection[Any] | None = None

    def _connect(self) -> psycopg.Connection[Any]:
        return self._pg.connect(
            "postgres", autocommit=True, connect_timeout=5, application_name=self.application_name
        )

    def execute(self, sql: str) -> None:
        """Run ``sql``, connecting again once if the server closed the connection.

        Raises _AdminLost when no working connection can be had, psycopg.Error for anything
        else (an error of the statement itself).
        """
        import psycopg

        lost = ""
        if self._conn is not None and not self._conn.closed:
            try:
                self._conn.execute(sql)
                return
            except psycopg.Error as exc:
                if not self._conn.closed:  # psycopg closes a connection it finds broken
                    raise
                lost = _first_line(exc)
        self.close()
        try:
            self._conn = self._connect()
            self._conn.execute(sql)
        except psycopg.Error as exc:
            if self._conn is not None and not self._conn.closed:
                raise
            where = f"{self._pg.host}:{self._pg.port}"
            what = (
                f"the server closed the admin connection to {where} ({lost}) and a new "
                "connection failed too"
                if lost
                else f"the admin connection to {where} failed"
            )
            raise _AdminLost(f"{what}: {_first_line(exc)}") from None

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
        self._conn = None


class ClonePool:
    """Clones of the seeded templates, made one test ahead and dropped behind, off the test's path.

    One background thread per worker owns an admin connection: it creates the next clone of each
    template, under a temporary name (``<prefix>_<n>_<4 hex>``), while the current test runs, and
    drops used clones after it. :meth:`take` gives the clone its test's name with ``ALTER
    DATABASE ... RENAME TO`` (about a millisecond: nobody is connected to it yet) on a second
    admin connection of the test's thread. A test pays for a rename and a connection to a
    ready database, not for CREATE/DROP DATABASE.

    The pool remembers every database it created and has not dropped yet; :meth:`close` drops
    them all (the clones made ahead included), so a session leaves no ``aik_*`` database behind.
    An admin connection the server closed (terminated backend, restart) is opened again once per
    statement; if that fails too, the test gets a :class:`~pytest_aikernel.errors.ServiceError`
    saying so instead of waiting.
    """

    def __init__(self, pg: PostgresService, prefix: str) -> None:
        import queue

        self._pg = pg
        self._prefix = prefix
        self._count = 0
        self._tasks: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self._ready: dict[str, queue.Queue[str | BaseException]] = {}
        self._lock = threading.Lock()
        #: databases this pool created (or renamed to) and has not dropped (under _lock)
        self._own: set[str] = set()
        self._admin = _AdminConnection(pg, self.application_name)
        #: the test side's connection, for renames (under _rename_lock)
        self._renamer = _AdminConnection(pg, self.application_name + "-rename")
        self._rename_lock = threading.Lock()
        #: why the worker thread stopped, if it stopped on an unexpected error
        self._crash: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="aikernel-pg-clones", daemon=True)
        self._thread.start()

    def _name(self) -> str:
        with self._lock:
            self._count += 1
            return f"{self._prefix}_{self._count}_{secrets.token_hex(2)}"

    # ---- worker thread ------------------------------------------------------------------------

    @property
    def application_name(self) -> str:
        """How the admin connection shows in ``pg_stat_activity``."""
        return f"aikernel-clones-{self._prefix}"

    def _execute(self, sql: str) -> None:
        self._admin.execute(sql)

    def _work(self) -> None:
        try:
            while True:
                task = self._tasks.get()
                if task is None:
                    break
                action, arg = task
                if action == "drop":
                    self._drop(arg)
                else:
                    self._create(arg)
        except BaseException as exc:  # a bug: takers must not wait for a dead thread
            self._crash = exc
        finally:
            with self._lock:  # made ahead, still queued for drop, or orphaned
                leftovers = sorted(self._own)
            for name in leftovers:
                self._drop(name)
            self._admin.close()

    def _drop(self, name: str) -> None:
        import psycopg

        with contextlib.suppress(psycopg.Error, _AdminLost):
            self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            with self._lock:
                self._own.discard(name)

    def _create(self, dbname: str) -> None:
        import psycopg

        name = self._name()
        with self._lock:  # before CREATE: a connection lost during it may still have made it
            self._own.add(name)
        try:
            self._execute(
                f'CREATE DATABASE "{name}" TEMPLATE "{dbname}{TEMPLATE_SUFFIX}" '
                "STRATEGY = FILE_COPY"
            )
            got: str | BaseException = name
        except psycopg.errors.InvalidCatalogName:
            with self._lock:
                self._own.discard(name)
            got = ValueError(
                f"postgres: no template of database {dbname!r}; per-test clones exist for "
                f"{', '.join(DATABASES)}"
            )
        except _AdminLost as exc:
            got = _lost_error(exc)
        except psycopg.Error as exc:
            got = exc
        ready = self._ready.get(dbname)
        if ready is None:  # nobody waits for it any more
            if isinstance(got, str):
                self._drop(got)
            return
        ready.put(got)

    # ---- test side ----------------------------------------------------------------------------

    def take(self, dbname: str, name: str | None = None) -> str:
        """A fresh clone of ``dbname``, renamed to ``name`` if given; returns its name.

        The next clone of ``dbname`` is started at once.
        """
        import queue

        if self._closed:
            raise RuntimeError("postgres: the clone pool is closed (the session is ending)")
        if dbname not in self._ready:
            self._ready[dbname] = queue.Queue()
            self._tasks.put(("create", dbname))
        deadline = time.monotonic() + CLONE_TIMEOUT
        while True:
            try:
                got = self._ready[dbname].get(timeout=0.5)
                break
            except queue.Empty:
                pass
            if not self._thread.is_alive():
                raise _stopped_error(self._crash)
            if time.monotonic() >= deadline:
                raise _timeout_error(self._pg, dbname)
        if isinstance(got, BaseException):
            del self._ready[dbname]
            raise got
        try:  # renamed before the next CREATE starts, which would slow the rename down
            return got if name is None else self._rename(got, name)
        finally:
            self._tasks.put(("create", dbname))

    def _rename(self, made: str, name: str) -> str:
        import psycopg

        with self._lock:  # before ALTER: a connection lost during it may have renamed it
            self._own.add(name)
        try:
            with self._rename_lock:
                self._renamer.execute(f'ALTER DATABASE "{made}" RENAME TO "{name}"')
        except _AdminLost as exc:
            self.drop(made)  # it has one of the two names: both are dropped
            self.drop(name)
            raise _lost_error(exc) from None
        except psycopg.Error as exc:
            with self._lock:
                self._own.discard(name)
            self.drop(made)
            raise ServiceError(
                "postgres",
                f"postgres: the clone {made!r} could not be renamed to {name!r}: "
                f"{_first_line(exc)}",
            ) from None
        with self._lock:
            self._own.discard(made)
        return name

    def drop(self, name: str) -> None:
        self._tasks.put(("drop", name))

    def close(self) -> None:
        """Drop every clone this pool made (those made ahead too), then stop the thread."""
        self._closed = True
        self._tasks.put(None)
        self._thread.join(timeout=30)
        with self._rename_lock:
            self._renamer.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _lost_error(exc: _AdminLost) -> ServiceError:
    return ServiceError(
        "postgres",
        f"postgres: no per-test clone ({_CLONE_FIXTURES}): {exc}. Is the server still "
        "running? Look at the postgres container's log (or, in external mode, at the server of "
        "AIKERNEL_POSTGRES_URL); tests that need a clone fail until it answers again.",
    )


def _stopped_error(crash: BaseException | None) -> ServiceError:
    why = f"{type(crash).__name__}: {crash}" if crash is not None else "it was closed"
    return ServiceError(
        "postgres",
        f"postgres: the thread that makes per-test clones ({_CLONE_FIXTURES}) stopped ({why}); "
        "no more clones can be made in this session. Please report this as a pytest-aikernel "
        "bug, with the traceback.",
    )


def _timeout_error(pg: PostgresService, dbname: str) -> ServiceError:
    return ServiceError(
        "postgres",
        f"postgres: no clone of {dbname!r} after {CLONE_TIMEOUT:.0f} s: CREATE DATABASE ... "
        f'TEMPLATE "{dbname}{TEMPLATE_SUFFIX}" on {pg.host}:{pg.port} did not finish. It waits '
        "while another session is connected to the template, or the server is overloaded; "
        "look at pg_stat_activity and the server's log.",
    )


class CloneFactory:
    """The value of ``aikernel_pg_factory``: ``make(dbname="aikernel_catalog", *, load=(),
    **kwargs)`` gives a :class:`CloneConnection` to a new clone of a seeded database.

    The k-th call's clone is named ``<scope_name>_<k>`` (k from 1). ``load`` lists SQL files
    run in the new clone, statement by statement with autocommit, before it is returned (as
    init files are; a failing statement raises :class:`~pytest_aikernel.errors.SeedError`
    naming the file, the line and the database). Other keyword arguments go to psycopg's
    ``connect``. Every clone is dropped after the test.
    """

    def __init__(self, pg: PostgresService, pool: ClonePool, scope_name: str) -> None:
        #: the test's name, shared by all its per-test fixtures
        self.scope_name = scope_name
        self._pg = pg
        self._pool = pool
        self._calls = 0
        self._made: list[tuple[str, CloneConnection]] = []

    def __call__(
        self,
        dbname: str = CATALOG,
        *,
        load: Iterable[str | os.PathLike[str]] = (),
        **kwargs: Any,
    ) -> CloneConnection:
        self._calls += 1  # a failed call uses up its k: its clone may not be dropped yet
        return self._clone(dbname, f"{self.scope_name}_{self._calls}", load, kwargs)

    #: ``factory.make(...)`` is ``factory(...)``, as the docs write it
    make = __call__

    @property
    def databases(self) -> list[str]:
        """The names of the clones made so far, in order."""
        return [name for name, _conn in self._made]

    def dsn(self, database: str) -> str:
        """A libpq URI of ``database`` (one of :attr:`databases`) from the test process."""
        return self._pg.dsn(database)

    def internal_dsn(self, database: str) -> str:
        """A libpq URI of ``database`` from a container on the stack network."""
        return self._pg.internal_dsn(database)

    def _clone(
        self,
        dbname: str,
        name: str,
        load: Iterable[str | os.PathLike[str]],
        kwargs: dict[str, Any],
    ) -> CloneConnection:
        from ._pg_clone import CloneConnection

        if isinstance(load, (str, os.PathLike)):
            raise TypeError(f"load= takes a list of SQL files, not one file: load=[{load!r}]")
        files = [Path(path) for path in load]
        name = self._pool.take(dbname, name)
        try:
            for path in files:
                _load_file(self._pg, name, path)
            conn = CloneConnection.open(self._pg, name, self.scope_name, **kwargs)
        except BaseException:
            self._pool.drop(name)
            raise
        self._made.append((name, conn))
        return conn

    def close(self) -> None:
        """Close every connection and drop every clone (in the background)."""
        for name, conn in self._made:
            conn.close()
            self._pool.drop(name)
        self._made.clear()


def _load_file(pg: PostgresService, database: str, path: Path) -> None:
    """Run the SQL file ``path`` in ``database``; SeedError names file, line and database."""
    try:
        script = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SeedError("postgres", f"postgres: cannot read load file {path}: {exc}") from None
    _run_script(
        lambda: pg.connect(database, autocommit=True),
        database,
        script,
        origin=f"load file {path}",
        hint="",
    )


@contextmanager
def _cloned_databases(pg: PostgresService, scope: TestScope) -> Iterator[CloneFactory]:
    """A factory of fresh clones of the seeded databases; every clone is dropped after."""
    pool = scope.shared("pool", lambda: ClonePool(pg, f"aik_{scope.worker.lower()}_pg"))
    factory = CloneFactory(pg, pool, scope.name)
    try:
        yield factory
    finally:
        factory.close()


#: the name of a test's clone of each seeded database (aikernel_pg, aikernel_pg_audit)
_CLONE_NAMES = {CATALOG: "{scope}", AUDIT: "{scope}_audit"}


@contextmanager
def _one_clone(pg: PostgresService, scope: TestScope, dbname: str) -> Iterator[CloneConnection]:
    with _cloned_databases(pg, scope) as factory:
        yield factory._clone(dbname, _CLONE_NAMES[dbname].format(scope=scope.name), (), {})


def _external_postgres(env: Mapping[str, str], name: str, default: str) -> ExternalTarget:
    url = external_url(env, name, default)
    if url.username and unquote(url.username) != USER:
        raise ConfigError(
            f"env {name}: external mode connects as {USER!r} (the platform's user), not "
            f"{unquote(url.username)!r}"
        )
    return ExternalTarget(
        host=str(url.hostname),
        ports={PORT: url.port or PORT},
        secrets={"postgres.password": unquote(url.password or "")},
    )


#: pg_advisory_lock key of the external seed lock ("aikernel" in ASCII, as a bigint)
SEED_LOCK = 0x61696B65726E656C
SEED_TABLE = "aikernel_seeded"


class _PostgresLedger(SeedLedger):
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def seeded(self) -> dict[str, str]:
        rows = self._conn.execute(f"SELECT service, key FROM {SEED_TABLE}").fetchall()
        return {str(service): str(key) for service, key in rows}

    def mark(self, keys: Mapping[str, str]) -> None:
        for service, key in keys.items():
            self._conn.execute(
                f"INSERT INTO {SEED_TABLE} (service, key) VALUES (%s, %s) ON CONFLICT (service) "
                "DO UPDATE SET key = EXCLUDED.key, at = now()",
                (service, key),
            )


class Postgres(Service):
    name = "postgres"
    shaped_by = ("postgres_init",)
    default_image = "postgres:15"
    ports = (PORT,)
    external_env = "AIKERNEL_POSTGRES_URL"
    external_default = "postgresql://aikernel:aikernel_dev_password@127.0.0.1:5432/aikernel_catalog"
    ready_log = "database system is ready to accept connections"
    fixture_doc = """PostgreSQL 15 primary of the aikernel stack (session scope).

    Returns a :class:`pytest_aikernel.PostgresService`: ``host``, ``port``, ``user``,
    ``password``, ``dsn(dbname)`` and ``connect(dbname, **kw)`` (psycopg). Databases
    ``aikernel_catalog`` (schemas catalog, metadata, lineage, audit) and ``aikernel_audit``
    (schema audit) are created, then the files of --aikernel-postgres-init run.
    """

    isolations = (
        Isolation(
            "aikernel_pg",
            """A psycopg connection to this test's own copy of the seeded ``aikernel_catalog``.

    The database is cloned from a template of the seeded database (``CREATE DATABASE ...
    TEMPLATE``), named after the test (its ``scope_name``), and dropped after the test. The
    connection is a :class:`pytest_aikernel.CloneConnection`: a ``psycopg.Connection`` with
    ``database``, ``scope_name``, ``dsn()`` / ``url`` and ``internal_dsn()``.
    """,
            lambda pg, scope: _one_clone(pg, scope, CATALOG),
            world_entry=lambda _entry, conn: {"database": conn.database},
            world_env=lambda conn, internal: {
                "AIKERNEL_POSTGRES_URL": conn.internal_dsn() if internal else conn.dsn()
            },
        ),
        Isolation(
            "aikernel_pg_audit",
            """A psycopg connection to this test's own copy of the seeded ``aikernel_audit``.

    Named ``<scope_name>_audit``; the same :class:`pytest_aikernel.CloneConnection` as
    ``aikernel_pg`` gives.
    """,
            lambda pg, scope: _one_clone(pg, scope, AUDIT),
        ),
        Isolation(
            "aikernel_pg_factory",
            """A factory ``make(dbname="aikernel_catalog", *, load=[], **kw) -> CloneConnection``.

    Each call gives a connection to a new clone of the seeded database ``dbname``
    (aikernel_catalog or aikernel_audit), named ``<scope_name>_<k>`` for the k-th call, after
    running the SQL files of ``load`` in it; all clones are dropped after the test. Returns a
    :class:`pytest_aikernel.CloneFactory` (``scope_name``, ``databases``).
    """,
            _cloned_databases,
        ),
    )

    def external(self, env: Mapping[str, str]) -> ExternalTarget:
        return _external_postgres(env, self.external_env, self.external_default)

    def external_exports(self, obj: Any) -> dict[str, str]:
        return {self.external_env: obj.dsn()}

    @contextlib.contextmanager
    def seed_ledger(self, target: ExternalTarget) -> Iterator[SeedLedger]:
        """A session-level advisory lock in database ``postgres`` (released by the server when
        the holder's connection ends, also when its process dies) and the table
        ``aikernel_seeded`` there."""
        import psycopg

        try:
            conn = psycopg.connect(
                host=target.host,
                port=target.ports[PORT],
                user=USER,
                password=target.secrets.get("postgres.password", ""),
                dbname="postgres",
                autocommit=True,
                connect_timeout=10,
            )
        except psycopg.Error as exc:
            raise ServiceError(
                self.name,
                f"postgres: cannot take the seed lock at {target.host}:{target.ports[PORT]} "
                f"(env {self.external_env}): {str(exc).strip()}",
            ) from None
        with conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (SEED_LOCK,))
            try:
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {SEED_TABLE} (service text PRIMARY KEY, "
                    "key text NOT NULL, at timestamptz NOT NULL DEFAULT now())"
                )
                yield _PostgresLedger(conn)
            finally:
                with contextlib.suppress(psycopg.Error):
                    conn.execute("SELECT pg_advisory_unlock(%s)", (SEED_LOCK,))

    def container(self, ctx: StackContext) -> ContainerSpec:
        return ContainerSpec(
            image=ctx.image(self.name),
            env={
                "POSTGRES_USER": USER,
                "POSTGRES_PASSWORD": ctx.secrets.get("postgres.password"),
                "POSTGRES_DB": CATALOG,
                # 1 MB WAL segments instead of 16: a seeded snapshot carries its current
                # segment, which a start copies into the tmpfs
                "POSTGRES_INITDB_ARGS": "--no-sync --wal-segsize=1",
            },
            ports=(PORT,),
            command=("postgres", *FAST_FLAGS),
            tmpfs={PGDATA: ""},
            files={
                "/docker-entrypoint-initdb.d/10-aikernel-replication.sh": (_HBA_REPLICATION, 0o755)
            },
        )

    snapshot_paths = (PGDATA,)
    snapshot_exclude = ("postmaster.pid", "postmaster.opts")

    def before_snapshot(self, ctx: StackContext, running: Running) -> tuple[str, ...]:
        # a checkpoint makes the data files complete; WAL segments after the current one are
        # preallocated, empty of records: 16 MB each that a snapshot need not carry
        password = ctx.secrets.get("postgres.password")
        with _probe_connect(USER, password, running, "postgres") as conn:
            conn.execute("CHECKPOINT")
            rows = conn.execute(
                "SELECT name FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$' "
                "AND name > pg_walfile_name(pg_current_wal_insert_lsn())"
            ).fetchall()
        return tuple(f"pg_wal/{row[0]}" for row in rows)

    def snapshot_spec(self, spec: ContainerSpec, root: str) -> ContainerSpec:
        # the data directory stays on tmpfs (per-test clones are file copies: on the image's
        # layer they would be disk writes): the seeded files are copied from the image into it,
        # then the official entrypoint runs, finds an initialised PGDATA and skips initdb. What
        # a failed copy left is removed: the entrypoint then makes a new, unseeded cluster,
        # which the snapshot probe (the seeded templates are missing) does not accept. The init
        # scripts (spec.files) are not put in: an initialised PGDATA skips them, and their
        # effect (the replication line of pg_hba.conf) is in the snapshot's data already
        import dataclasses

        return dataclasses.replace(
            spec,
            entrypoint=(
                "sh",
                "-c",
                # only into an empty data directory: a container started again after a fault
                # keeps its own data (held on the tmpfs by the keeper). Two tars in a pipe copy
                # the ~2000 files in half the time of cp -a (80 against 160 ms here); what a
                # failed copy left is removed, so that the entrypoint makes a new cluster
                '[ -s "$PGDATA/PG_VERSION" ] || '
                '{ tar -C "$0" -cf - . | tar -C "$PGDATA" -xf - || rm -rf "$PGDATA"/*; }; '
                'exec docker-entrypoint.sh "$@"',
                root + PGDATA,
            ),
            command=spec.command or ("postgres",),
            env={**spec.env, "PGDATA": PGDATA},
            files={},
        )

    def snapshot_secrets(self, ctx: StackContext) -> dict[str, str]:
        return {"postgres.password": ctx.secrets.get("postgres.password")}

    def snapshot_probe(self, ctx: StackContext, running: Running, held: Mapping[str, str]) -> None:
        # the snapshot's role has the password of the stack that made it (a label of the
        # image): log in with it over TCP and set this stack's. A container whose password was
        # set by an earlier attempt of this probe takes this stack's already
        import psycopg

        password = ctx.secrets.get("postgres.password")
        before = held.get("postgres.password")
        if not before:
            raise SnapshotUnusable(
                self.name, "postgres: the snapshot image has no label with its role's password"
            )
        try:
            conn = _probe_connect(USER, before, running, "postgres")
        except psycopg.OperationalError as exc:
            if "password authentication failed" not in str(exc):
                raise  # not up yet
            try:
                conn = _probe_connect(USER, password, running, "postgres")
            except psycopg.OperationalError as again:
                if "password authentication failed" not in str(again):
                    raise
                raise SnapshotUnusable(
                    self.name,
                    "postgres: the snapshot's role takes neither the password on its label "
                    "nor this stack's",
                ) from None
        with conn:
            if before != password:
                conn.execute(
                    psycopg.sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                        psycopg.sql.Identifier(USER), psycopg.sql.Literal(password)
                    )
                )
            # a data directory that is not the snapshot's (a copy that failed: the entrypoint
            # then made a new cluster) has no frozen templates
            found = {
                row[0]
                for row in conn.execute(
                    "SELECT datname FROM pg_database WHERE datname LIKE %s",
                    ("%" + TEMPLATE_SUFFIX,),
                ).fetchall()
            }
        missing = [db + TEMPLATE_SUFFIX for db in DATABASES if db + TEMPLATE_SUFFIX not in found]
        if missing:
            raise SnapshotUnusable(
                self.name, f"postgres: the snapshot's cluster has no {', '.join(missing)}"
            )
        self.probe(ctx, running)

    def probe(self, ctx: StackContext, running: Running) -> None:
        # The official entrypoint's temporary init server listens on the unix socket only, so a
        # TCP connection that answers a query is the real server.
        with _probe_connect(USER, ctx.secrets.get("postgres.password"), running, CATALOG) as conn:
            conn.execute("SELECT 1").fetchone()

    def seed(self, ctx: StackContext, running: Running) -> None:
        password = ctx.secrets.get("postgres.password")
        with _probe_connect(USER, password, running, "postgres") as conn:
            for db in DATABASES:
                found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
                if found.fetchone() is None:
                    conn.execute(f'CREATE DATABASE "{db}"')
        bundled = resources.files("pytest_aikernel") / "data" / "postgres"
        for db in DATABASES:
            script = (bundled / f"{db}.sql").read_text(encoding="utf-8")
            _run_script(
                _connector(USER, password, running, db),
                db,
                script,
                origin=f"init file bundled {db}.sql",
                hint="",
            )
        option = OPTIONS_BY_FIELD["postgres_init"]
        source = ctx.settings.source_of("postgres_init")
        for init in ctx.settings.postgres_init:
            try:
                script = init.path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise SeedError(
                    self.name, f"postgres: cannot read init file {init.path}: {exc} (from {source})"
                ) from None
            hint = (
                f"Fix the file or remove it from {source} ({option.cli} / ini {option.ini} / "
                f"env {option.env})."
            )
            _run_script(
                _connector(USER, password, running, init.database),
                init.database,
                script,
                origin=f"init file {init.path}",
                hint=hint,
            )

    def freeze(self, ctx: StackContext, running: Running) -> None:
        password = ctx.secrets.get("postgres.password")
        # frozen copies of the seeded databases, cloned for each test by aikernel_pg: nobody
        # connects to a template, so CREATE DATABASE ... TEMPLATE never waits for other sessions
        with _probe_connect(USER, password, running, "postgres") as conn:
            for db in DATABASES:
                template = db + TEMPLATE_SUFFIX
                exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (template,))
                if exists.fetchone() is not None:  # seeding again (external mode): refresh it
                    conn.execute(f'ALTER DATABASE "{template}" IS_TEMPLATE false')
                    conn.execute(f'DROP DATABASE "{template}" WITH (FORCE)')
                conn.execute(f'CREATE DATABASE "{template}" TEMPLATE "{db}"')
                conn.execute(
                    f'ALTER DATABASE "{template}" IS_TEMPLATE true ALLOW_CONNECTIONS false'
                )

    def expose(self, ctx: StackContext, running: Running) -> PostgresService:
        return PostgresService(
            host=running.host,
            port=running.host_port(PORT),
            user=USER,
            password=ctx.secrets.get("postgres.password"),
            internal_host=running.internal_host,
        )

    def vault_entry(self, ctx: StackContext, running: Running) -> dict[str, Any]:
        return endpoint_entry(
            running,
            PORT,
            username=USER,
            password=ctx.secrets.get("postgres.password"),
            database=CATALOG,
        )


def _connector(user: str, password: str, running: Running, dbname: str) -> Callable[[], Any]:
    return lambda: _probe_connect(user, password, running, dbname)


def _run_script(
    connect: Callable[[], psycopg.Connection[Any]],
    database: str,
    script: str,
    *,
    origin: str,
    hint: str,
) -> None:
    """Run ``script`` statement by statement (autocommit) on ``connect()``, a connection to
    ``database``; SeedError names ``origin`` ("init file <path>"), the database, line and SQL."""
    import psycopg

    def fail(detail: str) -> SeedError:
        return SeedError(
            "postgres",
            f"postgres: {origin} failed in database "
            f"{database!r}: {detail}" + (f"\n{hint}" if hint else ""),
        )

    try:
        statements = split_sql(script)
    except MetaCommand as exc:
        raise fail(str(exc)) from None
    try:
        conn = connect()
    except psycopg.Error as exc:
        raise fail(f"cannot connect: {str(exc).strip()}") from None
    with conn:
        for stmt in statements:
            try:
                conn.execute(stmt.text.encode("utf-8"))  # bytes: no client-side % handling
            except psycopg.Error as exc:
                raise fail(_describe_error(stmt, exc)) from None


def _describe_error(stmt: Statement, exc: Any) -> str:
    diag = getattr(exc, "diag", None)
    position = getattr(diag, "statement_position", None) if diag else None
    line = stmt.line_of(int(position)) if position else stmt.line
    message = (getattr(diag, "message_primary", None) if diag else None) or str(exc).strip()
    sqlstate = getattr(exc, "sqlstate", None)
    shown = stmt.text if len(stmt.text) <= 400 else stmt.text[:400] + " ..."
    code = f" (SQLSTATE {sqlstate})" if sqlstate else ""
    starts = f" (statement starts at line {stmt.line})" if line != stmt.line else ""
    return (
        f"statement at line {line}{starts}:"
        f"\n    {shown.replace(chr(10), chr(10) + '    ')}\n  ERROR: {message}{code}"
    )


class PostgresReplica(Service):
    name = "postgres-replica"
    default_image = "postgres:15"
    image_from = "postgres"
    depends_on = ("postgres",)
    ports = (PORT,)
    external_env = "AIKERNEL_POSTGRES_REPLICA_URL"
    external_default = "postgresql://aikernel:aikernel_dev_password@127.0.0.1:5433/aikernel_catalog"
    ready_log = "started streaming WAL"
    fixture_doc = """Streaming read-only replica of the aikernel PostgreSQL primary (session scope).

    Returns a :class:`pytest_aikernel.PostgresReplicaService` (same fields as the primary's)
    with ``wait_for_replication(timeout=10.0)``: returns once the replica has replayed what the
    primary had written at the call.
    """

    def external(self, env: Mapping[str, str]) -> ExternalTarget:
        return _external_postgres(env, self.external_env, self.external_default)

    def external_exports(self, obj: Any) -> dict[str, str]:
        return {self.external_env: obj.dsn()}

    def container(self, ctx: StackContext) -> ContainerSpec:
        return ContainerSpec(
            image=ctx.image(self.name),
            env={
                "PGUSER": USER,
                "PGPASSWORD": ctx.secrets.get("postgres.password"),
                "PGDATA": f"{PGDATA}/replica",
                "AIKERNEL_PRIMARY_HOST": ctx.running["postgres"].internal_host,
                "AIKERNEL_PRIMARY_PORT": str(PORT),
                "AIKERNEL_REPLICA_SCRIPT": _REPLICA_SCRIPT,
            },
            ports=(PORT,),
            entrypoint=("sh", "-c", _REPLICA_SCRIPT, "aikernel-replica"),
            command=(
                *FAST_FLAGS,
                "-c",
                "hot_standby=on",
                # retry the primary every 0.2 s (default 5 s) once it is back from a fault, and
                # notice a primary gone silent (cut off) after 5 s, not 60
                "-c",
                "wal_retrieve_retry_interval=200",
                "-c",
                "wal_receiver_timeout=5s",
            ),
            tmpfs={PGDATA: "mode=1777"},
        )

    can_promote = True

    def promote(self, ctx: StackContext, running: Running) -> None:
        password = ctx.secrets.get("postgres.password")
        with _probe_connect(USER, password, running, "postgres") as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            if row is None or not row[0]:
                raise FaultError(
                    "aikernel_postgres_replica.promote(): the replica is a primary already "
                    "(promoted earlier in this test)"
                )
            row = conn.execute("SELECT pg_promote(wait => true, wait_seconds => 60)").fetchone()
        if row is None or not row[0]:
            raise FaultError("aikernel_postgres_replica.promote(): pg_promote() did not finish")

    def unpromote(self, ctx: StackContext, running: Running) -> bool:
        # a promoted server cannot become a standby of its old primary again without
        # pg_rewind: it is made again (a new base backup), as a failed-over node would be
        password = ctx.secrets.get("postgres.password")
        with _probe_connect(USER, password, running, "postgres") as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        return bool(row and row[0])

    def settle(self, ctx: StackContext, running: Running) -> None:
        """Streaming, and replayed what the primary has flushed: a replica whose receiver
        still says "streaming" on a connection that died with its primary is not back."""
        self.probe(ctx, running)
        password = ctx.secrets.get("postgres.password")
        with _probe_connect(USER, password, ctx.running["postgres"], "postgres") as conn:
            row = conn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()
        assert row is not None
        with _probe_connect(USER, password, running, "postgres") as conn:
            done = conn.execute(
                "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (str(row[0]),)
            ).fetchone()
        if not done or not done[0]:
            raise RuntimeError(f"the replica has not replayed the primary's WAL up to {row[0]}")

    def probe(self, ctx: StackContext, running: Running) -> None:
        password = ctx.secrets.get("postgres.password")
        with _probe_connect(USER, password, running, "postgres") as conn:
            row = conn.execute(
                "SELECT pg_is_in_recovery(), (SELECT status FROM pg_stat_wal_receiver LIMIT 1)"
            ).fetchone()
        if row is None or not row[0]:
            raise RuntimeError("the server is not in recovery (not a standby)")
        if row[1] != "streaming":
            raise RuntimeError(f"WAL receiver status is {row[1]!r}, not 'streaming'")

    def expose(self, ctx: StackContext, running: Running) -> PostgresReplicaService:
        return PostgresReplicaService(
            host=running.host,
            port=running.host_port(PORT),
            user=USER,
            password=ctx.secrets.get("postgres.password"),
            internal_host=running.internal_host,
            primary=ctx.exposed["postgres"],
        )

    def vault_entry(self, ctx: StackContext, running: Running) -> dict[str, Any]:
        return endpoint_entry(
            running,
            PORT,
            username=USER,
            password=ctx.secrets.get("postgres.password"),
            database=CATALOG,
        )


SERVICES = (Postgres, PostgresReplica)

__all__ = ["CloneFactory", "Path", "PostgresReplicaService", "PostgresService"]
