"""Hooks a conftest.py (or another plugin) can implement to adapt the stack.

Both are called from the threads that start the services, while other services start: keep them
quick and do not touch pytest's terminal or capture from them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .runtime import ContainerSpec
    from .stack import Stack


@pytest.hookspec(firstresult=True)
def pytest_aikernel_container(service: str, spec: ContainerSpec) -> ContainerSpec | None:
    """Change a service's container before it starts: return a new spec (for example
    ``dataclasses.replace(spec, env={**spec.env, "KEY": "value"})``), or None to keep it."""


@pytest.hookspec
def pytest_aikernel_ready(service: str, obj: Any, stack: Stack) -> None:
    """A service is ready and seeded: seed it further through ``obj``, its public object.

    Services that depend on it start only after every implementation returned; an exception
    fails the start like a failing seed file.
    """
