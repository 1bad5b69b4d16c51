"""Neo4j, Elasticsearch and Kafka through their real clients, on the session's shared stack."""

from __future__ import annotations

import time
import uuid

import docker
import pytest

from pytest_aikernel import ElasticsearchService, KafkaService, Neo4jService, ZookeeperService

from .conftest import read_kv, run_once

DATA = pytest.mark.aikernel_stack("neo4j", "elasticsearch", "kafka", "vault")


def test_cypher_write_and_read(aikernel_neo4j: Neo4jService) -> None:
    assert aikernel_neo4j.bolt_url.startswith("bolt://127.0.0.1:")
    with aikernel_neo4j.driver() as driver:
        driver.execute_query("CREATE (:Probe {name: $name})", name="written")
        records, _, _ = driver.execute_query(
            "MATCH (p:Probe {name: 'written'}) RETURN count(p) AS n"
        )
        assert records[0]["n"] >= 1


def test_seeded_constraint_and_node(aikernel_neo4j: Neo4jService) -> None:
    import neo4j.exceptions

    with aikernel_neo4j.driver() as driver:
        records, _, _ = driver.execute_query(
            "SHOW CONSTRAINTS YIELD name RETURN collect(name) AS names"
        )
        assert "resource_id" in records[0]["names"]
        records, _, _ = driver.execute_query(
            "MATCH (r:Resource {id: 'seeded'}) RETURN r.note AS note"
        )
        assert [r["note"] for r in records] == ["made; by init"]
        with pytest.raises(neo4j.exceptions.ConstraintError):
            driver.execute_query("CREATE (:Resource {id: 'seeded'})")


def test_neo4j_wrong_password_is_refused(aikernel_neo4j: Neo4jService) -> None:
    import neo4j

    with (
        neo4j.GraphDatabase.driver(aikernel_neo4j.bolt_url, auth=("neo4j", "wrong-password")) as d,
        pytest.raises(neo4j.exceptions.AuthError),
    ):
        d.verify_connectivity()


def test_neo4j_http_endpoint(aikernel_neo4j: Neo4jService) -> None:
    from pytest_aikernel import _http

    response = _http.request(
        "POST",
        f"{aikernel_neo4j.http_url}/db/neo4j/tx/commit",
        {"statements": [{"statement": "RETURN 41 + 1 AS answer"}]},
        auth=(aikernel_neo4j.user, aikernel_neo4j.password),
    )
    assert response.ok, response.body
    assert response.json()["results"][0]["data"][0]["row"] == [42]


def test_index_template_applies_and_documents_are_found(
    aikernel_elasticsearch: ElasticsearchService,
) -> None:
    from pytest_aikernel import _http

    url = aikernel_elasticsearch.url
    name = f"logs-it-{uuid.uuid4().hex[:8]}"
    assert _http.request("PUT", f"{url}/{name}").ok
    mapping = _http.request("GET", f"{url}/{name}/_mapping").json()[name]["mappings"]
    assert mapping["properties"]["service"] == {"type": "keyword"}, "seeded template applied"
    doc = {"@timestamp": "2026-11-26T10:00:00Z", "message": "catalog started", "service": "catalog"}
    assert _http.request("POST", f"{url}/{name}/_doc?refresh=true", doc).ok
    hits = _http.request(
        "POST", f"{url}/{name}/_search", {"query": {"match": {"message": "started"}}}
    ).json()["hits"]["hits"]
    assert [h["_source"]["service"] for h in hits] == ["catalog"]
    seeded = _http.request("GET", f"{url}/catalog-resources/_mapping").json()
    assert seeded["catalog-resources"]["mappings"]["properties"]["name"]["type"] == "keyword"


def test_elasticsearch_python_client(aikernel_elasticsearch: ElasticsearchService) -> None:
    info = aikernel_elasticsearch.info()
    if not aikernel_elasticsearch.is_elasticsearch:
        pytest.skip(
            f"the server is {info['version'].get('distribution')} {info['version']['number']}, "
            "not Elasticsearch: elasticsearch-py 8 refuses other products (UnsupportedProductError);"
            " this test runs against a real Elasticsearch image"
        )
    client = aikernel_elasticsearch.client()
    client.index(index="client-it", document={"a": 1}, refresh=True)
    assert client.count(index="client-it")["count"] == 1


def test_topic_from_settings_exists(aikernel_kafka: KafkaService) -> None:
    topics = aikernel_kafka.admin().list_topics(timeout=10).topics
    assert "catalog-events" in topics
    assert len(topics["catalog-events"].partitions) == 3


def test_message_produced_and_consumed_from_the_test_process(aikernel_kafka: KafkaService) -> None:
    assert aikernel_kafka.bootstrap_servers.startswith("127.0.0.1:")
    payload = uuid.uuid4().hex.encode()
    producer = aikernel_kafka.producer()
    producer.produce("catalog-events", value=payload)
    assert producer.flush(10) == 0
    consumer = aikernel_kafka.consumer(f"it-{uuid.uuid4().hex[:6]}")
    consumer.subscribe(["catalog-events"])
    began = time.monotonic()
    try:
        while time.monotonic() - began < 30:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None and msg.value() == payload:
                break
        else:
            pytest.fail("the produced message was not consumed within 30 s")
    finally:
        consumer.close()


@DATA
def test_a_container_on_the_stack_network_reaches_the_broker_by_alias(
    aikernel_stack, aikernel_kafka: KafkaService, docker_api: docker.DockerClient
) -> None:
    image = aikernel_stack.running("kafka").image
    output = run_once(
        docker_api,
        image,
        command=[
            "kafka-topics",
            "--bootstrap-server",
            aikernel_kafka.internal_bootstrap_servers,
            "--list",
        ],
        network=aikernel_stack.runtime.network_name,
    )
    assert "catalog-events" in output.decode().split()


def test_zookeeper_connect_string(aikernel_zookeeper: ZookeeperService) -> None:
    import socket

    host, port = aikernel_zookeeper.connect_string.split(":")
    with socket.create_connection((host, int(port)), 5) as sock:
        sock.sendall(b"srvr")
        assert b"Zookeeper version" in sock.recv(1024)


@DATA
def test_vault_holds_the_data_services(aikernel_vault, aikernel_neo4j, aikernel_kafka) -> None:
    neo = read_kv(aikernel_vault, "aikernel/neo4j")
    assert (neo["username"], neo["password"]) == ("neo4j", aikernel_neo4j.password)
    assert neo["port"] == aikernel_neo4j.bolt_port and neo["internal_port"] == 7687
    kafka = read_kv(aikernel_vault, "aikernel/kafka")
    assert kafka["bootstrap_servers"] == aikernel_kafka.bootstrap_servers
    assert kafka["internal_bootstrap_servers"] == "kafka:9092"
    es = read_kv(aikernel_vault, "aikernel/elasticsearch")
    assert es["internal_host"] == "elasticsearch" and es["internal_port"] == 9200
