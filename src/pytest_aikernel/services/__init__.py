"""The registry of services. Each module lists its service classes in ``SERVICES``.

Importing a service module is cheap: client libraries are imported inside the functions that use
them.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from functools import cache

from ..errors import ConfigError
from ..settings import Settings
from .base import ExternalTarget, Isolation, Service, StackContext, TestScope

#: service modules, in the order services are listed to users
_MODULES = (
    "postgres",
    "redis",
    "neo4j",
    "elasticsearch",
    "kafka",
    "vault",
    "prometheus",
    "grafana",
    "jaeger",
    "toxiproxy",
)


@cache
def registry() -> Mapping[str, Service]:
    """Service name -> service object, for every service the plugin knows."""
    out: dict[str, Service] = {}
    for module_name in _MODULES:
        module = importlib.import_module(f"{__name__}.{module_name}")
        for cls in module.SERVICES:
            out[cls.name] = cls()
    return out


def names() -> tuple[str, ...]:
    """Every known service, helpers included (what a marker may name)."""
    return tuple(registry())


def platform_names() -> tuple[str, ...]:
    """The platform's services: what "every service" means (a bare marker, ``aikernel up``);
    helpers such as Toxiproxy start only when asked for."""
    return tuple(name for name, svc in registry().items() if not svc.helper)


def fixture_name(service: str) -> str:
    return "aikernel_" + service.replace("-", "_")


def isolations() -> Mapping[str, tuple[str, Isolation]]:
    """Per-test fixture name -> (its service, its Isolation), for every service."""
    return {iso.fixture: (name, iso) for name, svc in registry().items() for iso in svc.isolations}


def image_for(service: str, settings: Settings) -> str:
    """The image to run: the user's override, else the primary's override/default for replicas."""
    svc = registry()[service]
    if service in settings.images:
        return settings.images[service]
    if svc.image_from is not None:
        return image_for(svc.image_from, settings)
    return svc.default_image


def check_names(requested: Iterable[str], where: str) -> None:
    """Raise ConfigError for any name that is not a known service."""
    known = names()
    unknown = [n for n in requested if n not in known]
    if unknown:
        raise ConfigError(
            f"{where}: unknown service {', '.join(repr(n) for n in unknown)}; known services: "
            f"{', '.join(known)}"
        )


def closure(requested: Iterable[str]) -> frozenset[str]:
    """``requested`` plus everything they depend on, transitively."""
    reg = registry()
    out: set[str] = set()
    todo = list(requested)
    while todo:
        name = todo.pop()
        if name in out:
            continue
        out.add(name)
        todo.extend(reg[name].depends_on)
        todo.extend(reg[name].requires)
    return frozenset(out)


def start_order(selected: Iterable[str]) -> list[str]:
    """``selected`` ordered so that dependencies come first (registry order otherwise)."""
    reg = registry()
    chosen = set(selected)
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            raise ConfigError(f"dependency cycle through service {name!r}")
        visiting.add(name)
        for dep in reg[name].depends_on:
            if dep in chosen:
                visit(dep)
        visiting.discard(name)
        order.append(name)

    for name in reg:
        if name in chosen:
            visit(name)
    return order


__all__ = [
    "ExternalTarget",
    "Isolation",
    "Service",
    "StackContext",
    "TestScope",
    "check_names",
    "closure",
    "fixture_name",
    "image_for",
    "isolations",
    "names",
    "registry",
    "start_order",
]
