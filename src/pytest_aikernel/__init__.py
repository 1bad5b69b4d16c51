"""pytest-aikernel: the AI Kernel platform's infrastructure stack as pytest fixtures.

Public objects are re-exported here; importing this package imports no client library.
``CloneConnection`` (a ``psycopg.Connection``) and ``RedisDb`` (a ``redis.Redis``) subclass a
client library's class: they are imported when first looked up here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .container import ContainerFactory, ExecResult, ServiceContainer, Wait
from .errors import (
    AikernelConfigWarning,
    AikernelError,
    ConfigError,
    ContainerArgumentError,
    ContainerExited,
    DockerUnavailable,
    FaultError,
    FaultWaitTimeout,
    ImageUnavailable,
    ReplicationTimeout,
    SeedError,
    ServiceError,
    ServiceStartTimeout,
    StackStartError,
    WaitTimeout,
)
from .faults import Faultable
from .services.elasticsearch import ElasticsearchService, IndexPrefix, KibanaService
from .services.grafana import GrafanaService
from .services.jaeger import JaegerService
from .services.kafka import KafkaService, TopicFactory, ZookeeperService
from .services.neo4j import Neo4jService, RollbackSession
from .services.postgres import CloneFactory, PostgresReplicaService, PostgresService
from .services.prometheus import PrometheusService
from .services.redis import RedisReplicaService, RedisService
from .services.toxiproxy import ToxiproxyService
from .services.vault import VaultPath, VaultService
from .settings import InitFile, ScrapeTarget, Settings, Topic
from .stack import Stack
from .toxics import NetworkFaults, Toxic
from .world import World

if TYPE_CHECKING:
    from .services._pg_clone import CloneConnection
    from .services._redis_db import RedisDb

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "CloneConnection":
        from .services._pg_clone import CloneConnection

        return CloneConnection
    if name == "RedisDb":
        from .services._redis_db import RedisDb

        return RedisDb
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AikernelConfigWarning",
    "AikernelError",
    "CloneConnection",
    "CloneFactory",
    "ConfigError",
    "ContainerArgumentError",
    "ContainerExited",
    "ContainerFactory",
    "DockerUnavailable",
    "ElasticsearchService",
    "ExecResult",
    "FaultError",
    "FaultWaitTimeout",
    "Faultable",
    "GrafanaService",
    "ImageUnavailable",
    "IndexPrefix",
    "InitFile",
    "JaegerService",
    "KafkaService",
    "KibanaService",
    "Neo4jService",
    "NetworkFaults",
    "PostgresReplicaService",
    "PostgresService",
    "PrometheusService",
    "RedisDb",
    "RedisReplicaService",
    "RedisService",
    "ReplicationTimeout",
    "RollbackSession",
    "ScrapeTarget",
    "SeedError",
    "ServiceContainer",
    "ServiceError",
    "ServiceStartTimeout",
    "Settings",
    "Stack",
    "StackStartError",
    "Topic",
    "TopicFactory",
    "Toxic",
    "ToxiproxyService",
    "VaultPath",
    "VaultService",
    "Wait",
    "WaitTimeout",
    "World",
    "ZookeeperService",
    "__version__",
]
