"""The service registry: names, dependency closure, start order, unknown names."""

from __future__ import annotations

import pytest

from pytest_aikernel.errors import ConfigError
from pytest_aikernel.services import (
    check_names,
    closure,
    fixture_name,
    names,
    registry,
    start_order,
)


def test_known_services() -> None:
    assert set(names()) >= {"postgres", "postgres-replica", "redis", "redis-replica", "vault"}


def test_closure_pulls_in_primaries() -> None:
    assert closure(["postgres-replica"]) == {"postgres", "postgres-replica"}
    assert closure(["redis-replica", "vault"]) == {"redis", "redis-replica", "vault"}
    assert closure([]) == frozenset()


def test_start_order_puts_dependencies_first() -> None:
    order = start_order(names())
    for name, svc in registry().items():
        for dep in svc.depends_on:
            assert order.index(dep) < order.index(name)


def test_check_names_lists_known_services() -> None:
    with pytest.raises(ConfigError) as info:
        check_names(["postgres", "postgress"], "@pytest.mark.aikernel_stack")
    text = str(info.value)
    assert "'postgress'" in text
    assert "@pytest.mark.aikernel_stack" in text
    for name in names():
        assert name in text


def test_fixture_names() -> None:
    assert fixture_name("postgres-replica") == "aikernel_postgres_replica"


def test_every_service_is_described() -> None:
    for name, svc in registry().items():
        assert svc.name == name
        assert svc.default_image and ":" in svc.default_image, "official images are pinned"
        assert "latest" not in svc.default_image
        assert svc.ports
        assert svc.fixture_doc.strip()


def test_the_services_that_talk_to_others_over_the_stack_network() -> None:
    """A plain stack makes its network only when one of these starts (docs/lifecycle.md)."""
    reg = registry()
    assert sorted(name for name, svc in reg.items() if svc.in_network) == [
        "grafana",  # its data sources, by alias
        "kafka",  # ZooKeeper
        "kibana",  # Elasticsearch
        "postgres-replica",  # its primary
        "prometheus",  # its scrape targets, by alias
        "redis-replica",  # its master
        "toxiproxy",  # the proxied services
    ]
