"""Exceptions raised by pytest-aikernel.

Every message names what went wrong, where (service, image, file, setting) and what to change.
Secrets generated for a stack never appear in full in any message: messages pass through the
stack's secret masker before they are raised.

    AikernelError                       base of everything below
    ├── ConfigError (ValueError)        a setting, marker or seed file is wrong (becomes
    │                                   pytest.UsageError at configure/collection time)
    ├── DockerUnavailable               no Docker engine answered
    ├── ServiceError                    one service failed while starting
    │   ├── ImageUnavailable            its image is not local and could not be pulled
    │   ├── ContainerExited             its container stopped before it was ready
    │   ├── ServiceStartTimeout (TimeoutError)
    │   │                               its readiness probe did not pass in time
    │   └── SeedError                   a seed step (init SQL, Vault seed...) failed
    ├── StackStartError                 one or more services failed; carries them all
    ├── ReplicationTimeout (TimeoutError)
    │                                   a replica did not catch up in time
    └── WaitTimeout (TimeoutError)      a helper's wait (Kafka message, Elasticsearch count,
                                        Kafka delivery) did not end in time
"""

from __future__ import annotations

from collections.abc import Sequence


class AikernelError(Exception):
    """Base class of every error pytest-aikernel raises."""


class ConfigError(AikernelError, ValueError):
    """A setting, marker argument or seed file is invalid."""


class DockerUnavailable(AikernelError):
    """No Docker engine answered."""


class ServiceError(AikernelError):
    """A service failed to start, become ready or be seeded."""

    def __init__(self, service: str, message: str) -> None:
        super().__init__(message)
        self.service = service


class ImageUnavailable(ServiceError):
    """The service's image is not present locally and could not be pulled."""


class ContainerExited(ServiceError):
    """The service's container exited before it became ready."""


class ServiceStartTimeout(ServiceError, TimeoutError):
    """The service's readiness probe did not pass within the startup timeout."""


class SeedError(ServiceError):
    """Seeding a service failed (init SQL file, Vault seed file, ...)."""


class StackStartError(AikernelError):
    """One or more services of the stack failed; nothing of the stack was left running."""

    def __init__(
        self,
        failures: Sequence[ServiceError],
        *,
        external: bool = False,
        removed: str = "Every container this start made was removed.",
    ) -> None:
        self.failures = list(failures)
        names = ", ".join(f.service for f in self.failures)
        parts = [f"pytest-aikernel could not start the stack: {names} failed."]
        parts.extend(str(f) for f in self.failures)
        if not external:
            parts.append(removed)
        super().__init__("\n\n".join(parts))


class ReplicationTimeout(AikernelError, TimeoutError):
    """A replica did not replay the primary's writes within the given timeout."""


class AikernelConfigWarning(UserWarning):
    """A setting is suspicious but not fatal, e.g. an ``AIKERNEL_*`` env var that names nothing.

    Shown in pytest's warnings summary. Silence it with
    ``filterwarnings = ["ignore::pytest_aikernel.AikernelConfigWarning"]``; where a
    ``filterwarnings`` or ``-W`` setting makes it an error, the run stops with a usage error.
    """


class WaitTimeout(AikernelError, TimeoutError):
    """A helper waited in vain: ``KafkaService.consume_until`` saw no matching message,
    ``KafkaService.produce`` had no delivery report, ``ElasticsearchService.wait_for_count``
    did not see the count, within the timeout. The message names what was awaited, the
    timeout and what was seen instead."""


class ContainerArgumentError(AikernelError, ValueError):
    """``aikernel_container(...)`` was called with an argument it cannot use (a wait of the
    wrong kind, a port that is not published, a name that is taken); the message quotes it.

    The service's own container reports its other failures with the classes above, its
    ``service`` being ``container:<name>``: ImageUnavailable, ContainerExited, and
    ServiceStartTimeout for a wait that never passed.
    """


class SnapshotUnusable(ServiceError):
    """A container started from a snapshot does not hold the seeded state (a foreign or broken
    snapshot image): the stack removes the snapshot and seeds instead."""


class FaultError(AikernelError):
    """A fault could not be applied or undone: an unknown toxic, a bad value, a service that is
    not in the stack, ``promote()`` on a primary, an engine operation in external mode, a
    failed heal. The message names the service and the call."""


class FaultWaitTimeout(FaultError, TimeoutError):
    """A test waited longer than ``--aikernel-fault-wait`` for a service that a test in another
    process had taken (or for other tests to finish with it); the message names the holder."""
