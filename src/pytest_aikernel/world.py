"""A test's own world: its per-test resources on every service it asks for, described in Vault.

``aikernel_world`` gives a test its own clone, Redis database, topic prefix and index prefix
(the per-test fixtures of each service the test needs), and writes, under the
test's own Vault path, ``aikernel/<service>`` entries with the same fields as the session's
``secret/aikernel/<service>`` entries but pointing at those resources. A service under test that
is configured with only a Vault address, a token and that path sees its own isolated world, as it
would in production. Which fixture stands for a service in the world, and how its entry and
environment variables change, is the service module's knowledge (``Isolation.world_entry`` and
``Isolation.world_env``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import services as registry_mod

if TYPE_CHECKING:
    from .services import Isolation
    from .stack import Stack


def world_isolations() -> dict[str, Isolation]:
    """service -> the per-test fixture that stands for it in a world."""
    out: dict[str, Isolation] = {}
    for name, svc in registry_mod.registry().items():
        for iso in svc.isolations:
            if iso.world_entry is not None:
                out[name] = iso
    return out


@dataclass(frozen=True)
class World:
    """One test's isolated world (see the module docstring).

    ``world["postgres"]`` is the test's per-test object of a service (the same object as
    ``aikernel_pg``); ``vault_path`` is the KV v2 path (mount ``secret``) under which
    ``aikernel/<service>`` entries describe every service of the stack, with the world's own
    resources where the test has them; ``env()`` gives the same as environment variables.
    """

    #: the test's name, shared by all its per-test resources (``scope_name``)
    name: str
    #: ``tests/<name>``: the KV v2 path under ``secret/`` that holds ``aikernel/<service>``
    vault_path: str
    #: Vault's address from the test process and from the stack network, and a token
    vault_url: str
    vault_internal_url: str
    vault_token: str = field(repr=False)
    #: service -> the test's own per-test object
    objects: Mapping[str, Any] = field(default_factory=dict)
    #: the stack's environment variables (host and in-network forms), before the world's own
    _stack_env: Mapping[bool, Mapping[str, str]] = field(default_factory=dict, repr=False)
    #: the world's own variables (host and in-network forms)
    _own_env: Mapping[bool, Mapping[str, str]] = field(default_factory=dict, repr=False)

    def __getitem__(self, service: str) -> Any:
        try:
            return self.objects[service]
        except KeyError:
            raise KeyError(
                f"service {service!r} has no per-test resource in this world (it has: "
                f"{', '.join(self.objects) or 'none'}); the test must need it (its fixture or "
                "@pytest.mark.aikernel_stack) and the service must have a per-test fixture"
            ) from None

    def __contains__(self, service: object) -> bool:
        return service in self.objects

    def __iter__(self) -> Iterator[str]:
        return iter(self.objects)

    @property
    def services(self) -> tuple[str, ...]:
        return tuple(self.objects)

    def entry_path(self, service: str) -> str:
        """The KV path (under ``secret/``) of ``service``'s entry in this world."""
        return f"{self.vault_path}/aikernel/{service}"

    def env(self, internal: bool = False) -> dict[str, str]:
        """Environment variables for the code under test: every service of the stack (the
        external-mode variables), the world's own resources instead of the shared ones, and
        ``VAULT_ADDR``, ``VAULT_TOKEN`` and ``AIKERNEL_WORLD_PATH``. ``internal``: addresses
        for a container on the stack network."""
        out = dict(self._stack_env.get(internal, {}))
        out.update(self._own_env.get(internal, {}))
        out["VAULT_ADDR"] = self.vault_internal_url if internal else self.vault_url
        out["VAULT_TOKEN"] = self.vault_token
        out["AIKERNEL_WORLD_PATH"] = self.vault_path
        return out


def build(stack: Stack, services: list[str], objects: Mapping[str, Any], vault_path: Any) -> World:
    """Write the world's Vault entries and return it. ``objects``: service -> per-test object;
    ``vault_path``: the test's ``aikernel_vault_path`` (its prefix is the world's path)."""
    isolations = world_isolations()
    own: dict[bool, dict[str, str]] = {False: {}, True: {}}
    for name in stack.services:
        entry = stack.vault_entry(name)
        if entry is None:
            continue
        entry = dict(entry)
        iso = isolations.get(name)
        if name in objects and iso is not None and iso.world_entry is not None:
            entry.update(iso.world_entry(entry, objects[name]))
            if iso.world_env is not None:
                for internal in (False, True):
                    own[internal].update(iso.world_env(objects[name], internal))
        vault_path.write(f"aikernel/{name}", **entry)
    vault = stack["vault"]
    return World(
        name=vault_path.scope_name,
        vault_path=vault_path.prefix,
        vault_url=vault.url,
        vault_internal_url=vault.internal_url,
        vault_token=vault.token,
        objects={name: objects[name] for name in services if name in objects},
        _stack_env={False: stack.environment(internal=False), True: stack.environment()},
        _own_env=own,
    )


__all__ = ["World", "build", "world_isolations"]
