"""Unit tests need no Docker engine and must not see the caller's AIKERNEL_* settings."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("AIKERNEL_") or key == "CI":
            monkeypatch.delenv(key)
    # an engine that surely does not answer: unit tests never reach a real one
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/aikernel-unit-tests.sock")
