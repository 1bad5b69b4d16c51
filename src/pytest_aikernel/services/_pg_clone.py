"""The connection class of per-test PostgreSQL clones.

A module of its own because it subclasses ``psycopg.Connection``: the postgres module imports it
inside the functions that open a clone, so loading the plugin does not import psycopg.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg

if TYPE_CHECKING:
    from .postgres import PostgresService


class CloneConnection(psycopg.Connection[Any]):
    """A psycopg connection to one test's own clone of a seeded database.

    It is a ``psycopg.Connection`` in every way (psycopg's defaults: not autocommit), and also
    tells where its database is, to hand to the code under test:

    * ``database``: the clone's name (``<scope_name>``, ``<scope_name>_audit`` or
      ``<scope_name>_<k>``)
    * ``scope_name``: the test's name, shared by all its per-test fixtures
    * ``dsn()`` / ``url``: a libpq URI of the clone from the test process
    * ``internal_dsn()``: the same from a container on the stack network
    """

    database: str
    scope_name: str
    _service: PostgresService

    @classmethod
    def open(
        cls, service: PostgresService, database: str, scope_name: str, **kwargs: Any
    ) -> CloneConnection:
        """Connect to ``database``; keyword arguments go to ``psycopg.Connection.connect``."""
        params: dict[str, Any] = {"connect_timeout": 10, **kwargs}
        conn = cls.connect(service.dsn(database), **params)
        conn.database = database
        conn.scope_name = scope_name
        conn._service = service
        return conn

    def dsn(self) -> str:
        """A libpq URI of this clone from the test process (with the password)."""
        return self._service.dsn(self.database)

    @property
    def url(self) -> str:
        """The same as :meth:`dsn`."""
        return self.dsn()

    def internal_dsn(self) -> str:
        """A libpq URI of this clone from a container on the stack network."""
        return self._service.internal_dsn(self.database)
