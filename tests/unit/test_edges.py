"""Edges without Docker: proxy settings, confluent-kafka's Python-only keys, an unreachable server.

The HTTP tests run a small server on 127.0.0.1 and point every proxy variable at a trap: a
listening socket that counts the connections it gets and closes them.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pytest_aikernel import ElasticsearchService, KafkaService, PostgresService, ServiceError, _http
from pytest_aikernel.services.kafka import _dotted
from pytest_aikernel.services.postgres import ClonePool
from pytest_aikernel.services.vault import VaultService
from tests.proxytrap import ProxyTrap

PROXY_VARS = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "ALL_PROXY", "all_proxy")

ES_ROOT = {
    "name": "fake",
    "cluster_name": "fake",
    "version": {"number": "8.17.4", "build_flavor": "default"},
    "tagline": "You Know, for Search",
}
VAULT_HEALTH = {"initialized": True, "sealed": False, "standby": False, "version": "1.15.6"}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = VAULT_HEALTH if self.path.startswith("/v1/sys/health") else ES_ROOT
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Elastic-Product", "Elasticsearch")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, int]]:
    """A JSON server on 127.0.0.1 answering like Vault's health check and Elasticsearch's /."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield "127.0.0.1", httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def proxy_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[ProxyTrap]:
    """Every proxy variable set to a trap, no NO_PROXY: as on a CI runner behind a proxy."""
    trap = ProxyTrap()
    for name in PROXY_VARS:
        monkeypatch.setenv(name, trap.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    # urlopen's default opener reads the proxies once, when first used
    urllib.request.install_opener(None)  # type: ignore[arg-type]
    yield trap
    trap.close()
    urllib.request.install_opener(None)  # type: ignore[arg-type]


def test_http_requests_ignore_proxy_env(server: tuple[str, int], proxy_env: ProxyTrap) -> None:
    host, port = server
    response = _http.request("GET", f"http://{host}:{port}/", timeout=5)
    assert response.ok and response.json()["tagline"] == "You Know, for Search"
    assert proxy_env.hits == 0


def test_direct_session_ignores_proxy_env(server: tuple[str, int], proxy_env: ProxyTrap) -> None:
    host, port = server
    with _http.direct_session() as session:
        assert session.get(f"http://{host}:{port}/", timeout=5).json() == ES_ROOT
    assert proxy_env.hits == 0


def test_vault_client_ignores_proxy_env(server: tuple[str, int], proxy_env: ProxyTrap) -> None:
    host, port = server
    vault = VaultService(host=host, port=port, token="t", internal_host="vault")
    client = vault.client()
    try:
        assert client.sys.read_health_status(method="GET") == VAULT_HEALTH
    finally:
        client.adapter.close()
    assert proxy_env.hits == 0


@pytest.mark.parametrize("node_class", [None, "requests"])
def test_elasticsearch_client_ignores_proxy_env(
    server: tuple[str, int], proxy_env: ProxyTrap, node_class: str | None
) -> None:
    host, port = server
    es = ElasticsearchService(host=host, port=port, internal_host="elasticsearch")
    kwargs = {"node_class": node_class} if node_class else {}
    with es.client(**kwargs) as client:
        assert client.info()["tagline"] == "You Know, for Search"
    assert es.info()["name"] == "fake"
    assert proxy_env.hits == 0


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def quiet_logger() -> logging.Logger:
    logger = logging.getLogger("tests.unit.test_edges.kafka")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    return logger


def test_kafka_keyword_names_become_dotted_except_python_keys() -> None:
    def cb(*_args: object) -> None:
        pass

    got = _dotted({"linger_ms": 5, "on_delivery": cb, "error_cb": cb, "on_commit": cb})
    assert got == {"linger.ms": 5, "on_delivery": cb, "error_cb": cb, "on_commit": cb}


def test_kafka_factories_accept_confluent_kafka_python_keys() -> None:
    kafka = KafkaService(host="127.0.0.1", port=closed_port(), internal_host="kafka")

    def cb(*_args: object) -> None:
        pass

    common = {"error_cb": cb, "stats_cb": cb, "throttle_cb": cb, "logger": quiet_logger()}
    producer = kafka.producer(on_delivery=cb, **common)
    assert producer.flush(0) == 0
    consumer = kafka.consumer("g", on_commit=cb, **common)
    consumer.close()
    kafka.admin(**common)


def test_kafka_error_cb_is_called() -> None:
    """error_cb reaches librdkafka: a broker that refuses connections is reported through it."""
    kafka = KafkaService(host="127.0.0.1", port=closed_port(), internal_host="kafka")
    errors: list[object] = []
    producer = kafka.producer(error_cb=errors.append, logger=quiet_logger())
    deadline = time.monotonic() + 20
    while not errors and time.monotonic() < deadline:
        producer.poll(0.1)
    assert errors, "error_cb was not called for a broker that refuses connections"


def test_clone_pool_on_unreachable_server_fails_at_once_naming_postgres() -> None:
    pg = PostgresService(
        host="127.0.0.1", port=closed_port(), user="aikernel", password="x", internal_host="pg"
    )
    pool = ClonePool(pg, "aik_unit_pg")
    began = time.monotonic()
    try:
        with pytest.raises(ServiceError, match=r"^postgres: no per-test clone") as info:
            pool.take("aikernel_catalog")
    finally:
        pool.close()
    assert time.monotonic() - began < 15
    assert info.value.service == "postgres"
    message = str(info.value)
    assert f"127.0.0.1:{pg.port}" in message
    assert "Is the server still running?" in message
