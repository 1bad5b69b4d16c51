"""Kafka (Confluent 7.5, ZooKeeper mode) and its ZooKeeper.

The broker has two listeners: ``INTERNAL`` advertised by its network alias (``kafka:9092``) for
containers on the stack network, and ``HOST`` advertised as ``127.0.0.1:<host port>`` for the test
process. The host port is chosen before the container starts, since the broker must advertise it.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import SeedError
from ..runtime import ContainerSpec, Running
from ..runtime.docker import free_loopback_port
from .base import (
    Endpoint,
    Isolation,
    Janitor,
    Service,
    StackContext,
    TestScope,
    endpoint_entry,
)

if TYPE_CHECKING:
    import confluent_kafka
    import confluent_kafka.admin

VERSION = "7.5.3"
ZK_PORT = 2181
INTERNAL_PORT = 9092
HOST_PORT = 29092
#: JVM flags the Confluent images pass through KAFKA_OPTS: C1 only starts a short-lived test
#: broker about twice as fast (measured on the stand-ins under load)
FAST_JVM = "-XX:TieredStopAtLevel=1"
#: a silent logger for the plugin's own probes (librdkafka logs every refused connection)
_QUIET = logging.getLogger("pytest_aikernel.kafka.probe")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


@dataclass(frozen=True)
class ZookeeperService(Endpoint):
    """ZooKeeper of the stack."""

    internal_port: int = ZK_PORT

    @property
    def connect_string(self) -> str:
        """``127.0.0.1:<port>`` from the test process."""
        return self.address

    @property
    def internal_connect_string(self) -> str:
        """``zookeeper:2181`` from containers on the stack network."""
        return self.internal_address


@dataclass(frozen=True)
class KafkaService(Endpoint):
    """The Kafka broker of the stack and confluent-kafka client factories."""

    internal_port: int = INTERNAL_PORT

    @property
    def bootstrap_servers(self) -> str:
        """``127.0.0.1:<port>``: the broker as advertised to the test process."""
        return self.address

    @property
    def internal_bootstrap_servers(self) -> str:
        """``kafka:9092``: the broker as advertised to containers on the stack network."""
        return self.internal_address

    def producer(self, **conf: Any) -> confluent_kafka.Producer:
        """A ``confluent_kafka.Producer``; ``conf`` adds to or overrides librdkafka settings.

        In keyword names ``_`` stands for ``.`` (``linger_ms=5``), except for confluent-kafka's
        Python-side keys, passed as they are: ``on_delivery``, ``error_cb``, ``stats_cb``,
        ``throttle_cb``, ``oauth_cb``, ``logger`` (and ``on_commit`` for consumers).
        """
        import confluent_kafka

        return confluent_kafka.Producer(
            {"bootstrap.servers": self.bootstrap_servers, "linger.ms": 0, **_dotted(conf)}
        )

    def consumer(self, group_id: str, **conf: Any) -> confluent_kafka.Consumer:
        """A ``confluent_kafka.Consumer`` in ``group_id``, reading from the earliest offset.

        Defaults make a group join fast (the broker runs with no initial rebalance delay).
        ``conf`` as for :meth:`producer` (``on_commit=callback`` passes unchanged).
        """
        import confluent_kafka

        return confluent_kafka.Consumer(
            {
                "bootstrap.servers": self.bootstrap_servers,
                "group.id": group_id,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 200,
                "topic.metadata.refresh.interval.ms": 1000,
                **_dotted(conf),
            }
        )

    def admin(self, **conf: Any) -> confluent_kafka.admin.AdminClient:
        """A ``confluent_kafka.admin.AdminClient``; ``conf`` as for :meth:`producer`."""
        from confluent_kafka.admin import AdminClient

        return AdminClient({"bootstrap.servers": self.bootstrap_servers, **_dotted(conf)})


#: configuration keys confluent-kafka handles in Python (callbacks, logger), spelled with '_'
#: and never passed to librdkafka: keyword arguments of these names are kept as they are
PYTHON_CONF_KEYS = frozenset(
    {"error_cb", "throttle_cb", "stats_cb", "oauth_cb", "logger", "on_delivery", "on_commit"}
)


def _dotted(conf: dict[str, Any]) -> dict[str, Any]:
    """Let ``auto_offset_reset=...`` stand for ``auto.offset.reset`` in keyword arguments.

    confluent-kafka's own keys (:data:`PYTHON_CONF_KEYS`, e.g. ``on_delivery``) pass unchanged.
    """
    return {
        key if key in PYTHON_CONF_KEYS else key.replace("_", "."): value
        for key, value in conf.items()
    }


@contextmanager
def _topics(kafka: KafkaService, scope: TestScope) -> Iterator[Callable[..., str]]:
    """A factory of uniquely named topics, deleted after the test."""
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    # quiet: at the end of the session the broker goes away under this client
    admin = scope.shared(
        "admin", lambda: AdminClient({"bootstrap.servers": kafka.bootstrap_servers}, logger=_QUIET)
    )
    made: list[str] = []

    def make(name: str = "topic", partitions: int = 1) -> str:
        topic = f"{scope.name}.{name}"
        for future in admin.create_topics(
            [NewTopic(topic, num_partitions=partitions, replication_factor=1)],
            operation_timeout=10,
        ).values():
            future.result(timeout=30)
        made.append(topic)
        return topic

    janitor = scope.shared("janitor", lambda: Janitor("kafka-cleanup"))

    def cleanup(topics: list[str]) -> None:
        for future in admin.delete_topics(topics, operation_timeout=10).values():
            with contextlib.suppress(Exception):
                future.result(timeout=30)

    try:
        yield make
    finally:
        if made:  # unique names: deleting them after the test returns is safe
            janitor.submit(lambda: cleanup(made))


class Zookeeper(Service):
    name = "zookeeper"
    default_image = f"confluentinc/cp-zookeeper:{VERSION}"
    ports = (ZK_PORT,)
    external_env = "AIKERNEL_ZOOKEEPER_CONNECT"
    external_default = "127.0.0.1:2181"

    def external_exports(self, obj: Any) -> dict[str, str]:
        return {self.external_env: obj.connect_string}

    ready_log = "ZooKeeper audit is"
    fixture_doc = """ZooKeeper of the aikernel stack's Kafka (session scope).

    Returns a :class:`pytest_aikernel.ZookeeperService` with ``connect_string``.
    """

    def container(self, ctx: StackContext) -> ContainerSpec:
        return ContainerSpec(
            image=ctx.image(self.name),
            env={
                "ZOOKEEPER_CLIENT_PORT": str(ZK_PORT),
                "ZOOKEEPER_TICK_TIME": "2000",
                "KAFKA_HEAP_OPTS": "-Xms64m -Xmx128m",
                "KAFKA_OPTS": f"-Dzookeeper.4lw.commands.whitelist=ruok,srvr {FAST_JVM}",
            },
            ports=(ZK_PORT,),
        )

    def probe(self, ctx: StackContext, running: Running) -> None:
        # `ruok` answers as soon as the port is bound, even if loading the data then fails;
        # `srvr` reports a Mode only once the server serves
        with socket.create_connection((running.host, running.host_port(ZK_PORT)), 2) as sock:
            sock.sendall(b"srvr")
            answer = sock.recv(1024)
        if b"Mode:" not in answer:
            raise RuntimeError(f"srvr answered {answer[:80]!r}, without a Mode")

    def expose(self, ctx: StackContext, running: Running) -> ZookeeperService:
        return ZookeeperService(
            host=running.host,
            port=running.host_port(ZK_PORT),
            internal_host=running.internal_host,
        )

    def vault_entry(self, ctx: StackContext, running: Running) -> dict[str, Any]:
        return endpoint_entry(running, ZK_PORT)


class Kafka(Service):
    name = "kafka"
    shaped_by = ("kafka_topics",)
    default_image = f"confluentinc/cp-kafka:{VERSION}"
    depends_on = ("zookeeper",)
    ports = (HOST_PORT,)
    external_env = "AIKERNEL_KAFKA_BOOTSTRAP_SERVERS"
    external_default = "127.0.0.1:29092"

    def external_exports(self, obj: Any) -> dict[str, str]:
        return {self.external_env: obj.bootstrap_servers}

    isolations = (
        Isolation(
            "aikernel_kafka_topic",
            """A factory ``make(name="topic", partitions=1) -> str`` of topics unique to this test.

    Topics are named ``<unique test prefix>.<name>``, created (replication 1) before ``make``
    returns, and deleted after the test.
    """,
            _topics,
        ),
    )
    ready_log = "started (kafka.server.KafkaServer)"
    fixture_doc = """Kafka broker (Confluent 7.5, ZooKeeper mode) of the aikernel stack (session).

    Returns a :class:`pytest_aikernel.KafkaService`: ``bootstrap_servers`` (test process),
    ``internal_bootstrap_servers`` (containers on the stack network), ``producer(**conf)``,
    ``consumer(group_id, **conf)`` and ``admin()`` (confluent-kafka). Topics of
    --aikernel-kafka-topic were created.
    """

    def container(self, ctx: StackContext) -> ContainerSpec:
        host_port = free_loopback_port()
        zookeeper = ctx.running["zookeeper"]
        return ContainerSpec(
            image=ctx.image(self.name),
            env={
                "KAFKA_BROKER_ID": "1",
                "KAFKA_ZOOKEEPER_CONNECT": f"{zookeeper.internal_host}:{ZK_PORT}",
                "KAFKA_LISTENERS": f"INTERNAL://0.0.0.0:{INTERNAL_PORT},HOST://0.0.0.0:{HOST_PORT}",
                "KAFKA_ADVERTISED_LISTENERS": (
                    f"INTERNAL://{self.name}:{INTERNAL_PORT},HOST://127.0.0.1:{host_port}"
                ),
                "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "INTERNAL:PLAINTEXT,HOST:PLAINTEXT",
                "KAFKA_INTER_BROKER_LISTENER_NAME": "INTERNAL",
                "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
                "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
                "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
                # consumers join their group at once instead of after 3 s
                "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
                "KAFKA_HEAP_OPTS": "-Xms256m -Xmx256m",
                "KAFKA_OPTS": FAST_JVM,
            },
            ports=(HOST_PORT,),
            host_ports={HOST_PORT: host_port},
        )

    def _admin(self, running: Running) -> confluent_kafka.admin.AdminClient:
        from confluent_kafka.admin import AdminClient

        return AdminClient(
            {
                "bootstrap.servers": f"{running.host}:{running.host_port(HOST_PORT)}",
                "socket.timeout.ms": 2000,
                "reconnect.backoff.max.ms": 100,
            },
            logger=_QUIET,
        )

    def probe(self, ctx: StackContext, running: Running) -> None:
        metadata = self._admin(running).list_topics(timeout=2)
        if not metadata.brokers:
            raise RuntimeError("the cluster lists no broker yet")

    def seed(self, ctx: StackContext, running: Running) -> None:
        if not ctx.settings.kafka_topics:
            return
        from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

        admin = self._admin(running)
        topics = [
            NewTopic(t.name, num_partitions=t.partitions, replication_factor=1)
            for t in ctx.settings.kafka_topics
        ]
        source = ctx.settings.source_of("kafka_topics")
        for name, future in admin.create_topics(topics, request_timeout=30).items():
            try:
                future.result(timeout=30)
            except Exception as exc:
                if "TOPIC_ALREADY_EXISTS" in str(exc):
                    continue  # seeding is idempotent (external mode seeds a running broker)
                raise SeedError(
                    self.name, f"kafka: creating topic {name!r} (from {source}) failed: {exc}"
                ) from None

    def expose(self, ctx: StackContext, running: Running) -> KafkaService:
        return KafkaService(
            host=running.host,
            port=running.host_port(HOST_PORT),
            internal_host=running.internal_host,
        )

    def vault_entry(self, ctx: StackContext, running: Running) -> dict[str, Any]:
        entry = endpoint_entry(running, HOST_PORT)
        entry["internal_port"] = INTERNAL_PORT
        entry["bootstrap_servers"] = f"{running.host}:{running.host_port(HOST_PORT)}"
        entry["internal_bootstrap_servers"] = f"{running.internal_host}:{INTERNAL_PORT}"
        return entry


SERVICES = (Zookeeper, Kafka)
