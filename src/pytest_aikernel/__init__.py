"""pytest-aikernel: the AI Kernel platform's infrastructure stack as pytest fixtures.

Public objects are re-exported here; importing this package imports no client library.
"""

from __future__ import annotations

from .errors import (
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
from .services.postgres import PostgresReplicaService, PostgresService
from .services.redis import RedisReplicaService, RedisService
from .services.vault import VaultService
from .settings import InitFile, Settings
from .stack import Stack

__version__ = "0.1.0"

__all__ = [
    "AikernelError",
    "ConfigError",
    "ContainerExited",
    "DockerUnavailable",
    "ImageUnavailable",
    "InitFile",
    "PostgresReplicaService",
    "PostgresService",
    "RedisReplicaService",
    "RedisService",
    "ReplicationTimeout",
    "SeedError",
    "ServiceError",
    "ServiceStartTimeout",
    "Settings",
    "Stack",
    "StackStartError",
    "VaultService",
    "__version__",
]
