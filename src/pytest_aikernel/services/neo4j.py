"""Neo4j 5: Bolt and HTTP, a generated password, small memory, seeded from Cypher files."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote, unquote

from .._sql import split_cypher
from ..errors import ConfigError, SeedError
from ..faults import Faultable
from ..runtime import ContainerSpec, Running
from ..settings import OPTIONS_BY_FIELD, Settings
from . import _jvm
from .base import (
    ExternalTarget,
    Isolation,
    MaskedRepr,
    Route,
    Service,
    StackContext,
    TestScope,
    endpoint_entry,
    external_url,
    mebibytes,
)

if TYPE_CHECKING:
    import neo4j

BOLT = 7687
HTTP = 7474
USER = "neo4j"


@dataclass(frozen=True, repr=False)
class Neo4jService(MaskedRepr, Faultable):
    """Neo4j of the stack: Bolt and HTTP from the test process, and in-network twins."""

    host: str
    bolt_port: int
    http_port: int
    user: str
    password: str
    internal_host: str
    internal_bolt_port: int = BOLT
    internal_http_port: int = HTTP

    _secret_fields: ClassVar[tuple[str, ...]] = ("password",)

    @property
    def bolt_url(self) -> str:
        return f"bolt://{self.host}:{self.bolt_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def internal_bolt_url(self) -> str:
        return f"bolt://{self.internal_host}:{self.internal_bolt_port}"

    @property
    def internal_http_url(self) -> str:
        return f"http://{self.internal_host}:{self.internal_http_port}"

    def driver(self, **kwargs: Any) -> neo4j.Driver:
        """A ``neo4j.Driver`` authenticated as the stack's user; close it when done."""
        import neo4j

        return neo4j.GraphDatabase.driver(self.bolt_url, auth=(self.user, self.password), **kwargs)


class RollbackSession:
    """A Neo4j session whose work happens in one transaction, rolled back after the test.

    ``run()``, ``execute_read()`` and ``execute_write()`` work as on ``neo4j.Session`` and see
    each other's writes; nothing of it is ever committed, so tests on one shared Neo4j (even
    Community edition, which has a single database) never see each other's data.

    ``uri`` and ``internal_uri`` are the Bolt addresses of the server from the test process and
    from containers on the stack network, ``auth`` its ``(user, password)``; ``scope_name`` is
    the test's name. Code under test that connects by itself does not see the data of this
    session's open transaction.
    """

    def __init__(
        self,
        session: neo4j.Session,
        *,
        scope_name: str = "",
        uri: str = "",
        internal_uri: str = "",
        auth: tuple[str, str] | None = None,
    ) -> None:
        self._session = session
        self._tx = session.begin_transaction()
        #: the test's name, shared by all its per-test fixtures
        self.scope_name = scope_name
        #: ``bolt://127.0.0.1:<port>``
        self.uri = uri
        #: ``bolt://neo4j:7687``
        self.internal_uri = internal_uri
        self.auth = auth

    def run(self, query: str, parameters: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        return self._tx.run(query, parameters, **kwargs)

    def execute_read(self, work: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return work(self._tx, *args, **kwargs)

    execute_write = execute_read

    def rollback(self) -> None:
        if self._tx.closed():
            return
        self._tx.rollback()

    def close(self) -> None:
        self.rollback()
        self._session.close()


@contextmanager
def _rollback_session(neo: Neo4jService, scope: TestScope) -> Iterator[RollbackSession]:
    driver = scope.shared("driver", neo.driver)
    session = RollbackSession(
        driver.session(),
        scope_name=scope.name,
        uri=neo.bolt_url,
        internal_uri=neo.internal_bolt_url,
        auth=(neo.user, neo.password),
    )
    try:
        yield session
    finally:
        session.close()


def _driver(ctx: StackContext, running: Running) -> neo4j.Driver:
    import neo4j

    return neo4j.GraphDatabase.driver(
        f"bolt://{running.host}:{running.host_port(BOLT)}",
        auth=(USER, ctx.secrets.get("neo4j.password")),
        connection_timeout=2,
        max_connection_lifetime=30,
    )


#: memory of the JVM besides heap and page cache: a Kubernetes pod requests all three
JVM_OVERHEAD_MB = 256
#: the transaction logs are not filled up front: on the tmpfs /data that was ~0.5 GiB of memory
#: and CPU time for zeroes
NO_PREALLOC = _jvm.Knob("no-prealloc", env={"NEO4J_db_tx__log_preallocate": "false"})
#: --aikernel-jvm-tuning on (docs/services.md, "JVM start-up"); class-data sharing comes first
NEO4J_KNOBS: tuple[_jvm.Knob, ...] = (
    _jvm.C1,
    # its class path has a signed jar (eclipse-collections, 4326 entries): each start checked
    # its signature and digests, and no archive could hold its classes
    _jvm.UNSIGNED_JARS,
    NO_PREALLOC,
    _jvm.NO_PRETOUCH,
)


class Neo4j(Service):
    name = "neo4j"
    shaped_by = ("neo4j_init", "neo4j_heap", "neo4j_pagecache", "jvm_tuning", "jvm_knobs")
    default_image = "neo4j:5.26"
    ports = (BOLT, HTTP)
    isolations = (
        Isolation(
            "aikernel_neo4j_session",
            """A Neo4j session whose data is removed after the test (one rolled-back transaction).

    Returns a :class:`pytest_aikernel.RollbackSession` with ``run()``, ``execute_read()``
    and ``execute_write()``; other tests never see what it wrote. ``uri``, ``internal_uri``,
    ``auth`` and ``scope_name`` tell the code under test where the server is.
    """,
            _rollback_session,
        ),
    )
    ready_log = "Started."
    fixture_doc = """Neo4j 5 of the aikernel stack, Bolt and HTTP, generated password (session).

    Returns a :class:`pytest_aikernel.Neo4jService`: ``bolt_url``, ``http_url``, ``user``,
    ``password`` and ``driver()`` (a ``neo4j.Driver``). Cypher files of
    --aikernel-neo4j-init ran in order.
    """

    external_env = "AIKERNEL_NEO4J_URL"
    external_default = "bolt://neo4j:aikernel_dev_password@127.0.0.1:7687"

    def external(self, env: Mapping[str, str]) -> ExternalTarget:
        bolt = external_url(env, self.external_env, self.external_default)
        http = external_url(env, "AIKERNEL_NEO4J_HTTP_URL", "http://127.0.0.1:7474")
        if bolt.username and unquote(bolt.username) != USER:
            raise ConfigError(f"env {self.external_env}: external mode connects as {USER!r}")
        return ExternalTarget(
            host=str(bolt.hostname),
            ports={BOLT: bolt.port or BOLT, HTTP: http.port or HTTP},
            secrets={"neo4j.password": unquote(bolt.password or "")},
        )

    def external_exports(self, obj: Any) -> dict[str, str]:
        auth = f"{quote(obj.user, safe='')}:{quote(obj.password, safe='')}@"
        return {
            self.external_env: f"bolt://{auth}{obj.host}:{obj.bolt_port}",
            "AIKERNEL_NEO4J_HTTP_URL": obj.http_url,
        }

    def internal_exports(self, obj: Any) -> dict[str, str]:
        auth = f"{quote(obj.user, safe='')}:{quote(obj.password, safe='')}@"
        return {
            self.external_env: f"bolt://{auth}{obj.internal_host}:{obj.internal_bolt_port}",
            "AIKERNEL_NEO4J_HTTP_URL": obj.internal_http_url,
        }

    def container(self, ctx: StackContext) -> ContainerSpec:
        heap = ctx.settings.neo4j_heap
        spec = ContainerSpec(
            image=ctx.image(self.name),
            env={
                "NEO4J_AUTH": f"{USER}/{ctx.secrets.get('neo4j.password')}",
                "NEO4J_server_memory_heap_initial__size": heap,
                "NEO4J_server_memory_heap_max__size": heap,
                "NEO4J_server_memory_pagecache_size": ctx.settings.neo4j_pagecache,
                "NEO4J_dbms_usage__report_enabled": "false",
            },
            ports=(BOLT, HTTP),
            tmpfs={"/data": ""},
            # heap, page cache, and the JVM's own memory (metaspace, code, threads)
            memory_mb=mebibytes(heap) + mebibytes(ctx.settings.neo4j_pagecache) + JVM_OVERHEAD_MB,
        )
        return _jvm.with_knobs(spec, self.jvm_options_env, self.jvm_knobs(ctx.settings))

    #: the variable the official image reads extra JVM options from: one line appended to
    #: neo4j.conf's server.jvm.additional lines, split into options at whitespace by Neo4j
    jvm_options_env = "NEO4J_server_jvm_additional"

    def jvm_knobs(self, settings: Settings) -> tuple[_jvm.Knob, ...]:
        """The start-up settings of ``--aikernel-jvm-tuning on`` (none when off)."""
        return _jvm.knobs(self.name, settings, NEO4J_KNOBS)

    def probe(self, ctx: StackContext, running: Running) -> None:
        with _driver(ctx, running) as driver:
            driver.verify_connectivity()
            records, _, _ = driver.execute_query("RETURN 1 AS one")
            if records[0]["one"] != 1:
                raise RuntimeError("RETURN 1 did not return 1")

    def seed(self, ctx: StackContext, running: Running) -> None:
        _jvm.after_ready(ctx, self.name, self.jvm_knobs(ctx.settings))
        if not ctx.settings.neo4j_init:
            return
        import neo4j.exceptions

        opt = OPTIONS_BY_FIELD["neo4j_init"]
        source = ctx.settings.source_of("neo4j_init")
        with _driver(ctx, running) as driver:
            for path in ctx.settings.neo4j_init:
                try:
                    statements = split_cypher(path.read_text(encoding="utf-8"))
                except (OSError, UnicodeDecodeError) as exc:
                    raise SeedError(self.name, f"neo4j: cannot read {path}: {exc}") from None
                for stmt in statements:
                    try:
                        driver.execute_query(stmt.text)
                    except neo4j.exceptions.Neo4jError as exc:
                        raise SeedError(
                            self.name,
                            f"neo4j: init file {path} failed at the statement on line "
                            f"{stmt.line}:\n    {stmt.text}\n  {exc.code}: {exc.message}\n"
                            f"Fix the file or remove it from {source} ({opt.cli} / ini "
                            f"{opt.ini} / env {opt.env}).",
                        ) from None

    def proxied(self, obj: Any, routes: Mapping[int, Route]) -> Any:
        import dataclasses

        return dataclasses.replace(
            obj,
            host=routes[BOLT].host,
            bolt_port=routes[BOLT].port,
            http_port=routes[HTTP].port,
            internal_host=routes[BOLT].internal_host,
            internal_bolt_port=routes[BOLT].internal_port,
            internal_http_port=routes[HTTP].internal_port,
        )

    def expose(self, ctx: StackContext, running: Running) -> Neo4jService:
        return Neo4jService(
            host=running.host,
            bolt_port=running.host_port(BOLT),
            http_port=running.host_port(HTTP),
            user=USER,
            password=ctx.secrets.get("neo4j.password"),
            internal_host=running.internal_host,
        )

    def vault_entry(self, ctx: StackContext, running: Running) -> dict[str, Any]:
        return endpoint_entry(
            running,
            BOLT,
            username=USER,
            password=ctx.secrets.get("neo4j.password"),
            http_port=running.host_port(HTTP),
            internal_http_port=HTTP,
        )


SERVICES = (Neo4j,)
