"""Elasticsearch 8 (single node, security off) and Kibana 8 pointed at it.

Readiness and seeding speak plain HTTP, so they work on any server of Elasticsearch's REST API;
``client()`` gives the official elasticsearch-py 8 client, which only talks to Elasticsearch.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .. import _http
from ..errors import ConfigError, SeedError, ServiceError, WaitTimeout
from ..faults import Faultable
from ..runtime import ContainerSpec, Running
from ..settings import OPTIONS_BY_FIELD, Settings
from . import _jvm
from .base import (
    HttpService,
    Isolation,
    Janitor,
    Service,
    StackContext,
    TestScope,
    endpoint_entry,
    mebibytes,
)

if TYPE_CHECKING:
    import elasticsearch

VERSION = "8.17.4"
#: memory of the JVM besides its heap (metaspace, code cache, threads, direct buffers): a
#: Kubernetes pod requests the heap plus this
JVM_OVERHEAD_MB = 384
PORT = 9200
KIBANA_PORT = 5601
DATA = "/usr/share/elasticsearch/data"
#: top-level keys of an init file, in the order they are applied, and their REST paths
INIT_KEYS: Mapping[str, str] = {
    "component_templates": "_component_template",
    "index_templates": "_index_template",
    "indices": "",
}


@dataclass(frozen=True)
class ElasticsearchService(HttpService, Faultable):
    """Elasticsearch of the stack (security off): ``url`` and client helpers."""

    internal_port: int = PORT

    def info(self) -> dict[str, Any]:
        """``GET /`` as a dict (name, cluster_name, version.number, version.distribution...)."""
        data = _http.request("GET", self.url + "/").json()
        return dict(data) if isinstance(data, dict) else {}

    @property
    def is_elasticsearch(self) -> bool:
        """False when the server is another implementation of the API (e.g. OpenSearch)."""
        return "distribution" not in self.info().get("version", {})

    def client(self, **kwargs: Any) -> elasticsearch.Elasticsearch:
        """An ``elasticsearch.Elasticsearch`` (8.x) client on this server.

        It talks to the server directly: the default urllib3 node ignores ``*_proxy``
        variables, and ``node_class="requests"`` gets a session that ignores them too.
        """
        import elasticsearch

        params: dict[str, Any] = {"request_timeout": 30, **kwargs}
        node_class = params.get("node_class")
        if node_class == "requests" or node_class is _requests_node():
            params["node_class"] = _direct_requests_node()
        return elasticsearch.Elasticsearch(self.url, **params)

    def refresh(self, index: str = "_all") -> None:
        """Make everything indexed so far in ``index`` (a name, pattern or comma-separated
        list) visible to search: ``POST /<index>/_refresh``.

        An error answer (e.g. no such index) raises
        :class:`~pytest_aikernel.errors.ServiceError` naming the index and the server's reason.
        """
        response = _http.request("POST", f"{self.url}/{_path(index)}/_refresh", timeout=30)
        if not response.ok:
            raise ServiceError(
                "elasticsearch",
                f"elasticsearch: refreshing {index!r} failed: HTTP {response.status}: "
                f"{_http.reason(response)}",
            )

    def wait_for_count(self, index: str, n: int, timeout: float = 10.0) -> None:
        """Return once ``index`` holds exactly ``n`` searchable documents.

        Polls ``_refresh`` and ``_count`` of ``index`` (a name, pattern or comma-separated
        list); an index that does not exist yet is waited for. After ``timeout`` seconds it
        raises :class:`~pytest_aikernel.errors.WaitTimeout` naming the index, the expected
        count and the last count seen (or the server's last answer).
        """
        import time

        deadline = time.monotonic() + timeout
        target = _path(index)
        last = "no answer"
        while True:
            _http.request("POST", f"{self.url}/{target}/_refresh", timeout=10)
            response = _http.request("GET", f"{self.url}/{target}/_count", timeout=10)
            if response.ok:
                count = int(response.json().get("count", -1))
                if count == n:
                    return
                last = f"last count {count}"
            elif response.status == 404:
                last = f"no such index ({_http.reason(response)})"
            else:
                last = f"last answer HTTP {response.status}: {_http.reason(response)}"
            if time.monotonic() >= deadline:
                raise WaitTimeout(
                    f"elasticsearch: index {index!r} did not reach {n} document"
                    f"{'' if n == 1 else 's'} within {timeout:g} s: {last}"
                )
            time.sleep(0.05)


def _path(index: str) -> str:
    """``index`` as a URL path segment (names, patterns and lists keep ``*`` and ``,``)."""
    return quote(index, safe="*,")


def _requests_node() -> type[Any]:
    from elastic_transport import RequestsHttpNode

    return RequestsHttpNode


@cache
def _direct_requests_node() -> type[Any]:
    """elastic-transport's requests node with a session that reads no proxy from the env."""
    from elastic_transport import NodeConfig, RequestsHttpNode

    class DirectRequestsHttpNode(RequestsHttpNode):
        def __init__(self, config: NodeConfig) -> None:
            super().__init__(config)
            self.session.trust_env = False

    return DirectRequestsHttpNode


@dataclass(frozen=True)
class KibanaService(HttpService, Faultable):
    """Kibana of the stack, connected to its Elasticsearch: ``url``."""

    internal_port: int = KIBANA_PORT


@dataclass(frozen=True)
class IndexPrefix:
    """An index name prefix that belongs to one test; its indices are deleted after it.

    ``prefix`` is ``<scope_name>-``; ``url`` and ``internal_url`` are Elasticsearch's from the
    test process and from containers on the stack network.
    """

    prefix: str
    url: str
    internal_url: str = ""
    #: the test's name, shared by all its per-test fixtures
    scope_name: str = ""

    def name(self, suffix: str = "index") -> str:
        """``<prefix><suffix>``: an index name of this test (lower case)."""
        return f"{self.prefix}{suffix}".lower()


@contextmanager
def _index_prefix(es: ElasticsearchService, scope: TestScope) -> Iterator[IndexPrefix]:
    prefix = f"{scope.name}-"
    janitor = scope.shared("janitor", lambda: Janitor("es-cleanup"))

    def cleanup() -> None:
        listing = _http.request("GET", f"{es.url}/_cat/indices/{prefix}*?format=json&h=index")
        names = [row["index"] for row in (listing.json() or [])] if listing.ok else []
        if names:
            # explicit names: Elasticsearch 8 refuses wildcard deletes by default
            _http.request("DELETE", f"{es.url}/{','.join(names)}")

    try:
        yield IndexPrefix(prefix, es.url, es.internal_url, scope.name)
    finally:
        janitor.submit(cleanup)  # the prefix is unique: no later test can see these indices


def load_init(path: Path) -> dict[str, dict[str, Any]]:
    """Parse and check one init file; ConfigError names the file and the offending key."""
    opt = OPTIONS_BY_FIELD["elasticsearch_init"]
    where = f"Elasticsearch init file {path} ({opt.cli} / ini {opt.ini} / env {opt.env})"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read it: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object with keys {', '.join(INIT_KEYS)}")
    unknown = [k for k in data if k not in INIT_KEYS]
    if unknown:
        raise ConfigError(
            f"{where}: unknown top-level key {', '.join(repr(k) for k in unknown)}; allowed: "
            f"{', '.join(INIT_KEYS)}"
        )
    out: dict[str, dict[str, Any]] = {}
    for key in INIT_KEYS:
        section = data.get(key) or {}
        if not isinstance(section, dict) or not all(isinstance(v, dict) for v in section.values()):
            raise ConfigError(f"{where}: {key!r} must map names to JSON objects")
        out[key] = section
    return out


#: the variable of the official image for the JVM of its launcher (bin/elasticsearch's CLI, which
#: works out the server's JVM options and starts the server JVM); documented since 8.6
CLI_JAVA_OPTS = "CLI_JAVA_OPTS"
#: --aikernel-jvm-tuning on (docs/services.md, "JVM start-up"); class-data sharing comes first
ES_KNOBS: tuple[_jvm.Knob, ...] = (
    # C1 for both JVMs: the launcher works while the server starts (~3.5 s of CPU with C2)
    _jvm.Knob("c1", options=_jvm.C1.options, more={CLI_JAVA_OPTS: _jvm.C1.options}),
    # machine learning starts a native controller process on the official image's node; the
    # stand-in has no ML module (the setting is known to it and does nothing)
    _jvm.Knob("no-ml", env={"xpack.ml.enabled": "false"}),
    # the server only: the launcher's heap is 4-64 MiB and not touched up front
    _jvm.NO_PRETOUCH,
)


class Elasticsearch(Service):
    name = "elasticsearch"
    shaped_by = ("elasticsearch_init", "elasticsearch_heap", "jvm_tuning", "jvm_knobs")
    default_image = f"docker.elastic.co/elasticsearch/elasticsearch:{VERSION}"
    ports = (PORT,)
    isolations = (
        Isolation(
            "aikernel_es_index",
            """An index name prefix unique to this test; indices under it are deleted after.

    Returns a :class:`pytest_aikernel.IndexPrefix`: ``prefix`` (``<scope_name>-``),
    ``name(suffix)``, ``url``, ``internal_url`` and ``scope_name``.
    """,
            _index_prefix,
            world_entry=lambda _entry, index: {"index_prefix": index.prefix},
            world_env=lambda index, _internal: {
                "AIKERNEL_ELASTICSEARCH_INDEX_PREFIX": index.prefix
            },
        ),
    )
    ready_log = "started"
    fixture_doc = """Elasticsearch 8 of the aikernel stack: single node, security off (session).

    Returns a :class:`pytest_aikernel.ElasticsearchService`: ``url``, ``info()``,
    ``client()`` (elasticsearch-py 8), ``refresh(index="_all")`` and ``wait_for_count(index,
    n, timeout=10.0)``. Templates and indices of --aikernel-elasticsearch-init were created.
    """

    external_env = "AIKERNEL_ELASTICSEARCH_URL"
    external_default = "http://127.0.0.1:9200"

    def validate(self, settings: Settings) -> None:
        for path in settings.elasticsearch_init:
            load_init(path)

    def container(self, ctx: StackContext) -> ContainerSpec:
        heap = ctx.settings.elasticsearch_heap
        spec = ContainerSpec(
            image=ctx.image(self.name),
            env={
                "discovery.type": "single-node",
                "xpack.security.enabled": "false",
                # a nearly full CI disk must not turn the test indices read-only
                "cluster.routing.allocation.disk.threshold_enabled": "false",
                "ES_JAVA_OPTS": f"-Xms{heap} -Xmx{heap}",
            },
            ports=(PORT,),
            tmpfs={DATA: "mode=0777"},
            # the heap, and the JVM's own memory (metaspace, code, threads, direct buffers)
            memory_mb=mebibytes(heap) + JVM_OVERHEAD_MB,
        )
        return _jvm.with_knobs(spec, self.jvm_options_env, self.jvm_knobs(ctx.settings))

    #: the variable the official image reads the server JVM's options from
    jvm_options_env = "ES_JAVA_OPTS"

    def jvm_knobs(self, settings: Settings) -> tuple[_jvm.Knob, ...]:
        """The start-up settings of ``--aikernel-jvm-tuning on`` (none when off)."""
        return _jvm.knobs(self.name, settings, ES_KNOBS)

    def probe(self, ctx: StackContext, running: Running) -> None:
        url = f"http://{running.host}:{running.host_port(PORT)}/_cluster/health"
        response = _http.request("GET", url, timeout=2)
        if not response.ok:
            raise RuntimeError(f"cluster health: HTTP {response.status}: {_http.reason(response)}")
        status = response.json().get("status")
        if status not in ("yellow", "green"):
            raise RuntimeError(f"cluster health is {status!r}")

    def seed(self, ctx: StackContext, running: Running) -> None:
        _jvm.after_ready(ctx, self.name, self.jvm_knobs(ctx.settings))
        base = f"http://{running.host}:{running.host_port(PORT)}"
        for path in ctx.settings.elasticsearch_init:
            content = load_init(path)
            for key, prefix in INIT_KEYS.items():
                for name, body in content[key].items():
                    target = f"{base}/{prefix}/{name}" if prefix else f"{base}/{name}"
                    response = _http.request("PUT", target, body, timeout=30)
                    if key == "indices" and "resource_already_exists" in _http.reason(response):
                        continue  # seeding is idempotent (external mode seeds a running server)
                    if not response.ok:
                        raise SeedError(
                            self.name,
                            f"elasticsearch: init file {path}: {key} {name!r} failed: HTTP "
                            f"{response.status}: {_http.reason(response)}",
                        )

    def expose(self, ctx: StackContext, running: Running) -> ElasticsearchService:
        return ElasticsearchService(
            host=running.host, port=running.host_port(PORT), internal_host=running.internal_host
        )

    def vault_entry(self, ctx: StackContext, running: Running) -> dict[str, Any]:
        return endpoint_entry(running, PORT)


class Kibana(Service):
    name = "kibana"
    default_image = f"docker.elastic.co/kibana/kibana:{VERSION}"
    # Kibana waits for Elasticsearch by itself: its (slow) start overlaps Elasticsearch's
    requires = ("elasticsearch",)
    ports = (KIBANA_PORT,)
    external_env = "AIKERNEL_KIBANA_URL"
    external_default = "http://127.0.0.1:5601"
    ready_log = "Kibana is now available"
    fixture_doc = """Kibana 8 of the aikernel stack, connected to its Elasticsearch (session).

    Returns a :class:`pytest_aikernel.KibanaService` with ``url``.
    """

    def container(self, ctx: StackContext) -> ContainerSpec:
        return ContainerSpec(
            image=ctx.image(self.name),
            env={
                "ELASTICSEARCH_HOSTS": f"http://elasticsearch:{PORT}",
                "SERVER_HOST": "0.0.0.0",
                "TELEMETRY_ENABLED": "false",
                "TELEMETRY_OPTIN": "false",
            },
            ports=(KIBANA_PORT,),
        )

    @staticmethod
    def status_url(running: Running) -> str:
        return f"http://{running.host}:{running.host_port(KIBANA_PORT)}/api/status"

    def probe(self, ctx: StackContext, running: Running) -> None:
        response = _http.request("GET", self.status_url(running), timeout=2)
        if not response.ok:
            raise RuntimeError(f"/api/status: HTTP {response.status}")
        level = response.json().get("status", {}).get("overall", {}).get("level")
        if level != "available":
            raise RuntimeError(f"/api/status overall level is {level!r}")

    def expose(self, ctx: StackContext, running: Running) -> KibanaService:
        return KibanaService(
            host=running.host,
            port=running.host_port(KIBANA_PORT),
            internal_host=running.internal_host,
        )

    def vault_entry(self, ctx: StackContext, running: Running) -> dict[str, Any]:
        return endpoint_entry(running, KIBANA_PORT)


SERVICES = (Elasticsearch, Kibana)
