"""pytest-aikernel: the AI Kernel platform's infrastructure stack as pytest fixtures.

Public objects are re-exported here; importing this package imports no client library.
"""

from __future__ import annotations

from .errors import (
    AikernelConfigWarning,
    AikernelError,
    ConfigError,
    ContainerExited,
    DockerUnavailable,
    ImageUnavailable,
    ReplicationTimeout,
    SeedError,
    ServiceError,
    ServiceStartTimeout,
    StackStartError,
)
from .services.elasticsearch import ElasticsearchService, IndexPrefix, KibanaService
from .services.grafana import GrafanaService
from .services.jaeger import JaegerService
from .services.kafka import KafkaService, ZookeeperService
from .services.neo4j import Neo4jService, RollbackSession
from .services.postgres import PostgresReplicaService, PostgresService
from .services.prometheus import PrometheusService
from .services.redis import RedisReplicaService, RedisService
from .services.vault import VaultPath, VaultService
from .settings import InitFile, ScrapeTarget, Settings, Topic
from .stack import Stack

__version__ = "0.1.0"

__all__ = [
    "AikernelConfigWarning",
    "AikernelError",
    "ConfigError",
    "ContainerExited",
    "DockerUnavailable",
    "ElasticsearchService",
    "GrafanaService",
    "ImageUnavailable",
    "IndexPrefix",
    "InitFile",
    "JaegerService",
    "KafkaService",
    "KibanaService",
    "Neo4jService",
    "PostgresReplicaService",
    "PostgresService",
    "PrometheusService",
    "RedisReplicaService",
    "RedisService",
    "ReplicationTimeout",
    "RollbackSession",
    "ScrapeTarget",
    "SeedError",
    "ServiceError",
    "ServiceStartTimeout",
    "Settings",
    "Stack",
    "StackStartError",
    "Topic",
    "VaultPath",
    "VaultService",
    "ZookeeperService",
    "__version__",
]
