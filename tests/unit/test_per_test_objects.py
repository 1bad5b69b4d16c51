"""Per-test names and addresses without Docker: the stem, the objects' address attributes, and the
Kafka helpers against a broker that is not there."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pytest_aikernel import (
    IndexPrefix,
    KafkaService,
    RedisService,
    ServiceError,
    TopicFactory,
    VaultPath,
    VaultService,
    WaitTimeout,
)
from pytest_aikernel.services import names
from pytest_aikernel.settings import RawSources, resolve
from pytest_aikernel.stack import Stack

STEM = re.compile(r"^aik_[a-z0-9]+_[0-9]+_[0-9a-f]{8}$")


@pytest.fixture
def new_stack(tmp_path: Path) -> Iterator[Callable[[], Stack]]:
    """Stacks that start nothing: no engine is asked until a service starts."""
    made: list[Stack] = []

    def make() -> Stack:
        raw = RawSources(cli={}, ini={}, env={}, ini_dir=tmp_path, cwd=tmp_path)
        made.append(Stack(resolve(raw, names())))
        return made[-1]

    yield make
    for s in made:
        s.stop()


@pytest.mark.parametrize(
    ("worker", "tag", "index"), [(None, "main", 0), ("gw3", "gw3", 3), ("Gw-7/x", "gw7x", 7)]
)
def test_a_stem_names_worker_count_and_random_part(
    new_stack: Callable[[], Stack],
    monkeypatch: pytest.MonkeyPatch,
    worker: str | None,
    tag: str,
    index: int,
) -> None:
    if worker is None:
        monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    else:
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
    s = new_stack()
    first, second = s.test_scope("postgres"), s.test_scope("postgres")
    for scope, n in ((first, 1), (second, 2)):
        assert STEM.match(scope.name), scope.name
        assert scope.name.startswith(f"aik_{tag}_{n}_")
        assert scope.worker_index == index
    assert first.state is second.state, "one state per service and process"


def test_a_given_stem_is_kept_and_the_state_stays_per_service(
    new_stack: Callable[[], Stack],
) -> None:
    s = new_stack()
    pg = s.test_scope("postgres")
    redis = s.test_scope("redis", pg.name)
    assert redis.name == pg.name
    assert redis.state is not pg.state
    assert s.test_scope("postgres", pg.name).state is pg.state


def test_addresses_of_the_per_test_objects() -> None:
    stem = "aik_main_1_abcdef"
    vault = VaultService(host="127.0.0.1", port=8201, token="root-token", internal_host="vault")
    path = VaultPath(f"tests/{stem}", vault, stem)
    assert (path.url, path.internal_url) == ("http://127.0.0.1:8201", "http://vault:8200")
    assert (path.token, path.mount, path.scope_name) == ("root-token", "secret", stem)
    assert "root-token" not in repr(path)
    index = IndexPrefix(f"{stem}-", "http://127.0.0.1:9201", "http://elasticsearch:9200", stem)
    assert index.name("Docs") == f"{stem}-docs"
    redis = RedisService(host="127.0.0.1", port=6380, password="p w", internal_host="redis")
    assert redis.internal_url_for(3) == "redis://:p%20w@redis:6379/3"
    assert redis.internal_url == "redis://:p%20w@redis:6379/0"
    kafka = KafkaService(host="127.0.0.1", port=29093, internal_host="kafka")
    topics = TopicFactory(kafka, admin=None, scope_name=stem)
    assert (topics.prefix, topics.name("events")) == (f"{stem}.", f"{stem}.events")
    assert topics.bootstrap_servers == "127.0.0.1:29093"
    assert topics.internal_bootstrap_servers == "kafka:9092"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_kafka_produce_to_no_broker_fails_naming_the_topic() -> None:
    kafka = KafkaService(host="127.0.0.1", port=closed_port(), internal_host="kafka")
    began = time.monotonic()
    with pytest.raises(ServiceError) as info:
        kafka.produce("orders", b"x", timeout=1)
    assert time.monotonic() - began < 8
    assert str(info.value) == (
        f"kafka: producing to topic 'orders' on {kafka.bootstrap_servers} failed: "
        "Local: Message timed out"
    )


@pytest.mark.parametrize("group", [None, "g"])
def test_kafka_consume_until_without_broker_times_out_naming_the_error(group: str | None) -> None:
    kafka = KafkaService(host="127.0.0.1", port=closed_port(), internal_host="kafka")
    began = time.monotonic()
    with pytest.raises(WaitTimeout) as info:
        kafka.consume_until("orders", lambda m: True, timeout=1, group=group)
    assert 1 <= time.monotonic() - began < 6
    assert isinstance(info.value, TimeoutError)
    in_group = " in group 'g'" if group else ""
    assert str(info.value).startswith(
        f"kafka: no message on topic 'orders'{in_group} matched within 1 s: 0 messages seen; "
        "last error: "
    )
