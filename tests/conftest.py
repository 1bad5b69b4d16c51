"""Shared test configuration: pytester for plugin behaviour."""

pytest_plugins = ["pytester"]
