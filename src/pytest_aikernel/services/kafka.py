"""Kafka (Confluent 7.5, ZooKeeper mode) and its ZooKeeper.

The broker has two listeners: ``INTERNAL`` advertised by its network alias (``kafka:9092``) for
containers on the stack network, and ``HOST`` advertised as ``127.0.0.1:<host port>`` for the test
process. The host port is chosen before the container starts, since the broker must advertise it.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import SeedError, ServiceError, WaitTimeout
from ..faults import Faultable
from ..runtime import ContainerSpec, Running
from ..runtime.docker import free_loopback_port
from ..settings import Settings
from . import _jvm
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

#: message headers as confluent-kafka takes them
Headers = dict[str, str | bytes | None] | Sequence[tuple[str, str | bytes | None]]

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
class ZookeeperService(Endpoint, Faultable):
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
class KafkaService(Endpoint, Faultable):
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

    def produce(
        self,
        topic: str,
        value: str | bytes | None,
        key: str | bytes | None = None,
        headers: Headers | None = None,
        *,
        timeout: float = 10.0,
    ) -> confluent_kafka.Message:
        """Send one message to ``topic`` and wait for its delivery; returns the delivered
        message (``partition()``, ``offset()``).

        A delivery error (unknown topic, broker gone...) raises
        :class:`~pytest_aikernel.errors.ServiceError` naming the topic; no delivery report
        within ``timeout`` seconds raises :class:`~pytest_aikernel.errors.WaitTimeout`.
        """
        reports: list[tuple[Any, Any]] = []
        producer = self.producer(
            logger=_QUIET,
            message_timeout_ms=max(1, int(timeout * 1000)),
            on_delivery=lambda err, msg: reports.append((err, msg)),
        )
        producer.produce(topic, value=value, key=key, headers=headers)  # type: ignore[arg-type]
        # message.timeout.ms ends every delivery by then; the margin lets its report arrive
        producer.flush(timeout + 5.0)
        if not reports:
            raise WaitTimeout(
                f"kafka: the message to topic {topic!r} had no delivery report within "
                f"{timeout:g} s (broker {self.bootstrap_servers})"
            )
        err, msg = reports[0]
        if err is not None:
            raise ServiceError(
                "kafka",
                f"kafka: producing to topic {topic!r} on {self.bootstrap_servers} failed: "
                f"{err.str()}",
            )
        delivered: confluent_kafka.Message = msg
        return delivered

    def consume_until(
        self,
        topic: str,
        predicate: Callable[[confluent_kafka.Message], bool],
        timeout: float = 10.0,
        group: str | None = None,
    ) -> confluent_kafka.Message:
        """Read ``topic`` until ``predicate(message)`` is true; returns that message (the
        first that matches; ``value()``, ``key()``, ``headers()``, ``partition()``...).

        Without ``group``, every call reads every partition from the beginning, in no consumer
        group (nothing committed): it finds a message whenever it was produced. With
        ``group``, the call consumes in that consumer group from its committed offsets
        (earliest for a new group) and commits what it read, up to the match: the next call
        with the same group goes on after it. A topic that does not exist yet is waited for.
        After ``timeout`` seconds it raises :class:`~pytest_aikernel.errors.WaitTimeout`
        naming the topic, the timeout and how many messages it saw.
        """
        import secrets
        import time

        from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

        deadline = time.monotonic() + timeout
        seen = 0
        trouble = ""

        def client_error(error: KafkaError) -> None:  # broker down and such (called in poll)
            nonlocal trouble
            trouble = f"last error: {error.str()}"

        consumer = self.consumer(
            group or f"aikernel-consume-{secrets.token_hex(4)}",
            logger=_QUIET,
            error_cb=client_error,
            enable_auto_commit=group is not None,
        )
        try:
            if group is not None:
                consumer.subscribe([topic])
            else:
                partitions: list[int] = []
                while not partitions:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    try:
                        meta = consumer.list_topics(topic, timeout=max(0.1, min(left, 2.0)))
                    except KafkaException as exc:  # no broker answered in time
                        trouble = f"last error: {exc.args[0].str() if exc.args else exc}"
                        continue
                    found = meta.topics.get(topic)
                    if found is not None and found.error is None and found.partitions:
                        partitions = sorted(found.partitions)
                    else:
                        trouble = "the topic does not exist"
                        time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
                consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
                if partitions:
                    trouble = ""
            while (left := deadline - time.monotonic()) > 0:
                msg = consumer.poll(min(left, 0.2))
                if msg is None:
                    continue
                error = msg.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        trouble = f"last error: {error.str()}"
                    continue
                seen += 1
                if predicate(msg):
                    if group is not None:
                        consumer.commit(asynchronous=False)
                    return msg
        finally:
            consumer.close()
        in_group = f" in group {group!r}" if group is not None else ""
        raise WaitTimeout(
            f"kafka: no message on topic {topic!r}{in_group} matched within {timeout:g} s: "
            f"{seen} message{'' if seen == 1 else 's'} seen" + (f"; {trouble}" if trouble else "")
        )


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


class TopicFactory:
    """The value of ``aikernel_kafka_topic``: ``make(name="topic", partitions=1)`` creates the
    topic ``<prefix><name>`` (replication 1) and returns that full name.

    ``prefix`` is ``<scope_name>.``; ``name(x)`` is a full topic name without creating it (for
    topics the code under test creates); ``bootstrap_servers`` and
    ``internal_bootstrap_servers`` are the broker's addresses from the test process and from
    containers on the stack network. Every topic under the prefix made here is deleted after
    the test.
    """

    def __init__(self, kafka: KafkaService, admin: Any, scope_name: str) -> None:
        #: the test's name, shared by all its per-test fixtures
        self.scope_name = scope_name
        #: ``<scope_name>.``: every topic of this fixture starts with it
        self.prefix = f"{scope_name}."
        self._kafka = kafka
        self._admin = admin
        #: full names of the topics made so far
        self.topics: list[str] = []

    @property
    def bootstrap_servers(self) -> str:
        return self._kafka.bootstrap_servers

    @property
    def internal_bootstrap_servers(self) -> str:
        return self._kafka.internal_bootstrap_servers

    def name(self, name: str = "topic") -> str:
        """``<prefix><name>``: the full name of this test's topic ``name`` (not created)."""
        return f"{self.prefix}{name}"

    def __call__(self, name: str = "topic", partitions: int = 1) -> str:
        from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

        topic = self.name(name)
        for future in self._admin.create_topics(
            [NewTopic(topic, num_partitions=partitions, replication_factor=1)],
            operation_timeout=10,
        ).values():
            future.result(timeout=30)
        self.topics.append(topic)
        return topic

    #: ``topics.make(...)`` is ``topics(...)``, as the docs write it
    make = __call__


@contextmanager
def _topics(kafka: KafkaService, scope: TestScope) -> Iterator[TopicFactory]:
    """A factory of topics named after the test, deleted after it."""
    from confluent_kafka.admin import AdminClient

    # quiet: at the end of the session the broker goes away under this client
    admin = scope.shared(
        "admin", lambda: AdminClient({"bootstrap.servers": kafka.bootstrap_servers}, logger=_QUIET)
    )
    factory = TopicFactory(kafka, admin, scope.name)
    janitor = scope.shared("janitor", lambda: Janitor("kafka-cleanup"))

    def cleanup(made: list[str], prefix: str) -> None:
        # also the topics the code under test created (or auto-created) under the prefix
        with contextlib.suppress(Exception):
            listed = admin.list_topics(timeout=10).topics
            made = sorted({*made, *(t for t in listed if t.startswith(prefix))})
        if not made:
            return
        for future in admin.delete_topics(made, operation_timeout=10).values():
            with contextlib.suppress(Exception):
                future.result(timeout=30)

    try:
        yield factory
    finally:
        # unique names: deleting them after the test returns is safe
        made, prefix = list(factory.topics), factory.prefix
        janitor.submit(lambda: cleanup(made, prefix))


#: --aikernel-jvm-tuning on (docs/services.md, "JVM start-up"); class-data sharing comes first.
#: (-XX:TieredStopAtLevel=1 is in both services' KAFKA_OPTS either way: FAST_JVM)
ZOOKEEPER_KNOBS: tuple[_jvm.Knob, ...] = ()
KAFKA_KNOBS: tuple[_jvm.Knob, ...] = ()


class Zookeeper(Service):
    name = "zookeeper"
    shaped_by = ("jvm_tuning", "jvm_knobs")
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
        spec = ContainerSpec(
            image=ctx.image(self.name),
            env={
                "ZOOKEEPER_CLIENT_PORT": str(ZK_PORT),
                "ZOOKEEPER_TICK_TIME": "2000",
                "KAFKA_HEAP_OPTS": "-Xms64m -Xmx128m",
                "KAFKA_OPTS": f"-Dzookeeper.4lw.commands.whitelist=ruok,srvr {FAST_JVM}",
            },
            ports=(ZK_PORT,),
        )
        return _jvm.with_knobs(spec, self.jvm_options_env, self.jvm_knobs(ctx.settings))

    #: the variable cp-zookeeper's launcher (Kafka's kafka-run-class) adds to the JVM's options
    jvm_options_env = "KAFKA_OPTS"

    def jvm_knobs(self, settings: Settings) -> tuple[_jvm.Knob, ...]:
        """The start-up settings of ``--aikernel-jvm-tuning on`` (none when off)."""
        return _jvm.knobs(self.name, settings, ZOOKEEPER_KNOBS)

    def seed(self, ctx: StackContext, running: Running) -> None:
        _jvm.after_ready(ctx, self.name, self.jvm_knobs(ctx.settings))

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


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class Kafka(Service):
    not_proxied = (
        "clients connect to the addresses the broker advertises (its listeners), not to a "
        "proxy in front of it. Use aikernel_kafka.pause(), .stop() or .partitioned() for Kafka "
        "faults"
    )
    name = "kafka"
    shaped_by = ("kafka_topics", "jvm_tuning", "jvm_knobs")
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

    Topics are named ``<scope_name>.<name>``, created (replication 1) before ``make`` returns,
    and deleted after the test. Returns a :class:`pytest_aikernel.TopicFactory`: ``prefix``,
    ``name(x)`` (a full name, not created), ``bootstrap_servers``,
    ``internal_bootstrap_servers`` and ``scope_name``.
    """,
            _topics,
            world_entry=lambda _entry, topics: {"topic_prefix": topics.prefix},
            world_env=lambda topics, _internal: {"AIKERNEL_KAFKA_TOPIC_PREFIX": topics.prefix},
        ),
    )
    ready_log = "started (kafka.server.KafkaServer)"
    fixture_doc = """Kafka broker (Confluent 7.5, ZooKeeper mode) of the aikernel stack (session).

    Returns a :class:`pytest_aikernel.KafkaService`: ``bootstrap_servers`` (test process),
    ``internal_bootstrap_servers`` (containers on the stack network), ``producer(**conf)``,
    ``consumer(group_id, **conf)`` and ``admin()`` (confluent-kafka), and the helpers
    ``produce(topic, value, key=None, headers=None)`` and ``consume_until(topic, predicate,
    timeout=10.0, group=None)``. Topics of --aikernel-kafka-topic were created.
    """

    def container(self, ctx: StackContext) -> ContainerSpec:
        # the HOST listener advertises what the test process connects to: the published port
        # on the engine's host address, or (pytest on the stack network) the alias
        published = ctx.published(self.name, HOST_PORT)
        if published is None:
            advertised, host_ports = f"{self.name}:{HOST_PORT}", {}
        else:
            host, port = published
            if port == 0:
                port = free_loopback_port()
            advertised, host_ports = f"{_bracket(host)}:{port}", {HOST_PORT: port}
        zookeeper = ctx.running["zookeeper"]
        spec = ContainerSpec(
            image=ctx.image(self.name),
            env={
                "KAFKA_BROKER_ID": "1",
                "KAFKA_ZOOKEEPER_CONNECT": f"{zookeeper.internal_host}:{ZK_PORT}",
                "KAFKA_LISTENERS": f"INTERNAL://0.0.0.0:{INTERNAL_PORT},HOST://0.0.0.0:{HOST_PORT}",
                "KAFKA_ADVERTISED_LISTENERS": (
                    f"INTERNAL://{self.name}:{INTERNAL_PORT},HOST://{advertised}"
                ),
                "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "INTERNAL:PLAINTEXT,HOST:PLAINTEXT",
                "KAFKA_INTER_BROKER_LISTENER_NAME": "INTERNAL",
                "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
                "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
                "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
                # consumers join their group at once instead of after 3 s
                "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
                # a killed broker's registration in ZooKeeper expires after 6 s (default 18 s):
                # a restarted broker cannot register while it is there
                "KAFKA_ZOOKEEPER_SESSION_TIMEOUT_MS": "6000",
                "KAFKA_HEAP_OPTS": "-Xms256m -Xmx256m",
                "KAFKA_OPTS": FAST_JVM,
            },
            ports=(HOST_PORT,),
            host_ports=host_ports,
        )
        return _jvm.with_knobs(spec, self.jvm_options_env, self.jvm_knobs(ctx.settings))

    #: the variable cp-kafka's launcher (Kafka's kafka-run-class) adds to the JVM's options
    jvm_options_env = "KAFKA_OPTS"

    def jvm_knobs(self, settings: Settings) -> tuple[_jvm.Knob, ...]:
        """The start-up settings of ``--aikernel-jvm-tuning on`` (none when off)."""
        return _jvm.knobs(self.name, settings, KAFKA_KNOBS)

    def _admin(
        self, running: Running, socket_timeout_ms: int = 2000
    ) -> confluent_kafka.admin.AdminClient:
        from confluent_kafka.admin import AdminClient

        return AdminClient(
            {
                "bootstrap.servers": f"{running.host}:{running.host_port(HOST_PORT)}",
                # short for the readiness probe (it retries); creating topics may take longer
                # (a busy machine, a forward through a Kubernetes API server)
                "socket.timeout.ms": socket_timeout_ms,
                "reconnect.backoff.max.ms": 100,
            },
            logger=_QUIET,
        )

    def probe(self, ctx: StackContext, running: Running) -> None:
        metadata = self._admin(running).list_topics(timeout=2)
        if not metadata.brokers:
            raise RuntimeError("the cluster lists no broker yet")

    def seed(self, ctx: StackContext, running: Running) -> None:
        _jvm.after_ready(ctx, self.name, self.jvm_knobs(ctx.settings))
        if not ctx.settings.kafka_topics:
            return
        from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

        admin = self._admin(running, socket_timeout_ms=30000)
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
