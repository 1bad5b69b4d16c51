"""The client class of ``aikernel_redis_db``.

A module of its own because it subclasses ``redis.Redis``: the redis module imports it inside
the fixture, so loading the plugin does not import redis.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import redis

if TYPE_CHECKING:
    from .redis import RedisService


class RedisDb(redis.Redis):
    """A ``redis.Redis`` client on the logical database this test process holds.

    It is a ``redis.Redis`` in every way, and also tells where its database is, to hand to the
    code under test:

    * ``db``: the database number (1-15), leased by this process for its whole session
    * ``scope_name``: the test's name, shared by all its per-test fixtures (Redis has no name
      per test: the database is the process's, flushed before and after each test)
    * ``url``: ``redis://:<password>@127.0.0.1:<port>/<db>`` from the test process
    * ``internal_url``: the same from a container on the stack network
    """

    db: int
    scope_name: str
    _service: RedisService

    @classmethod
    def open(cls, service: RedisService, db: int, scope_name: str, **kwargs: Any) -> RedisDb:
        """A client on database ``db``; keyword arguments go to ``redis.Redis``."""
        params: dict[str, Any] = {"socket_timeout": 10, "socket_connect_timeout": 5, **kwargs}
        client = cls(
            host=service.host, port=service.port, password=service.password or None, db=db, **params
        )
        client.db = db
        client.scope_name = scope_name
        client._service = service
        return client

    @property
    def url(self) -> str:
        """``redis://:<password>@<host>:<port>/<db>`` from the test process."""
        return self._service.url_for(self.db)

    @property
    def internal_url(self) -> str:
        """``redis://:<password>@redis:6379/<db>`` from a container on the stack network."""
        return self._service.internal_url_for(self.db)
