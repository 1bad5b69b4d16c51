"""The catalog service's behaviour, checked through its HTTP API only.

Run with ``-n 2``: tests run at the same time, and each sees only its own items, through the
service itself: its clone of the database and its Redis database come from its world in Vault.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.aikernel_stack("postgres", "redis", "vault")


@pytest.mark.parametrize("count", [1, 3, 5])
def test_items_are_stored_and_counted(catalog, count: int) -> None:
    assert catalog("/items") == [], "a new world starts empty"
    names = [f"item-{count}-{i}" for i in range(count)]
    for name in names:
        assert catalog(f"/items?name={name}", "POST") == {"name": name}
    assert catalog("/items") == sorted(names)
    assert catalog("/count") == count


def test_the_world_points_at_the_tests_own_resources(aikernel_world) -> None:
    from catalog_service.config import _read

    env = aikernel_world.env()
    pg = _read(env["VAULT_ADDR"], env["VAULT_TOKEN"], aikernel_world.entry_path("postgres"))
    assert pg["database"] == aikernel_world["postgres"].database == aikernel_world.name
    cache = _read(env["VAULT_ADDR"], env["VAULT_TOKEN"], aikernel_world.entry_path("redis"))
    assert cache["db"] == aikernel_world["redis"].db != 0


def test_health(catalog) -> None:
    assert catalog("/health") == {"status": "ok"}
