"""Settings: one table of options, read once into a frozen dataclass.

Every setting is a command-line option, an ini key and an ``AIKERNEL_*`` environment variable.
Precedence is CLI > env > ini > default (pytest-django's order: the environment of one run, such
as the exports of ``eval "$(aikernel up)"``, beats the checked-in configuration file), decided by
explicit "was it given" checks. ``-o aikernel_x=...`` is part of the command line: it ranks below
the ``--aikernel-x`` option and above the environment. Images are decided per service with the
same order. The table below is the single source of the option names and help texts: the pytest
parser, ``pytest --help`` and docs/configuration.md all come from it.

An ``AIKERNEL_*`` environment variable that names no setting and nothing else the plugin reads (a
typo) is ignored with an :class:`~pytest_aikernel.errors.AikernelConfigWarning` that names the
closest known variable.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .errors import AikernelConfigWarning, ConfigError

if TYPE_CHECKING:
    import pytest

DockerMissing = Literal["skip", "fail"]

#: The database a postgres init file runs in when its line names none.
DEFAULT_INIT_DATABASE = "aikernel_catalog"
DEFAULT_STARTUP_TIMEOUT = 120.0

_FALSE = {"0", "false", "no", "off", "n", ""}
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")


@dataclass(frozen=True)
class Option:
    """One setting as the user meets it: a CLI option, an ini key and an env var."""

    field: str
    cli: str
    ini: str
    env: str
    metavar: str
    help: str
    default: str
    repeatable: bool = False
    choices: tuple[str, ...] = ()
    #: a CLI flag without a value (ini and env take true/false)
    flag: bool = False


OPTIONS: tuple[Option, ...] = (
    Option(
        field="images",
        cli="--aikernel-image",
        ini="aikernel_images",
        env="AIKERNEL_IMAGE_<SERVICE>",
        metavar="SERVICE=IMAGE",
        help="use IMAGE for SERVICE instead of its official default image (repeatable; "
        "ini: one SERVICE=IMAGE per line; env: AIKERNEL_IMAGE_POSTGRES_REPLICA=..., "
        "service upper case with '-' as '_'). Replicas use their primary's image unless set.",
        default="each service's official image, pinned (docs/services.md)",
        repeatable=True,
    ),
    Option(
        field="startup_timeout",
        cli="--aikernel-startup-timeout",
        ini="aikernel_startup_timeout",
        env="AIKERNEL_STARTUP_TIMEOUT",
        metavar="SECONDS",
        help="how long each service's readiness probe may take to pass, from its container "
        "start (external mode: at most 10 s)",
        default="120",
    ),
    Option(
        field="bind_address",
        cli="--aikernel-bind-address",
        ini="aikernel_bind_address",
        env="AIKERNEL_BIND_ADDRESS",
        metavar="ADDRESS",
        help="the address the stack's ports are published on, on the engine's host (default: "
        "127.0.0.1 on a local engine, the engine's address on a remote one); anything but "
        "loopback opens the ports to that host's network",
        default="auto",
    ),
    Option(
        field="snapshots",
        cli="--aikernel-snapshots",
        ini="aikernel_snapshots",
        env="AIKERNEL_SNAPSHOTS",
        metavar="on|off",
        help="keep a local image of each seeded service whose seeding is costly (PostgreSQL) "
        "and start later cold starts of the same key from it; `aikernel down --snapshots` "
        "removes them",
        default="on",
    ),
    Option(
        field="fault_wait",
        cli="--aikernel-fault-wait",
        ini="aikernel_fault_wait",
        env="AIKERNEL_FAULT_WAIT",
        metavar="SECONDS",
        help="under pytest-xdist or reuse: how long a test waits for a service that a test in "
        "another process has taken down (stop, pause, disconnect, promote), and how long a "
        "fault waits for other processes' tests to finish with the service",
        default="300",
    ),
    Option(
        field="docker_missing",
        cli="--aikernel-docker-missing",
        ini="aikernel_docker_missing",
        env="AIKERNEL_DOCKER_MISSING",
        metavar="skip|fail",
        help="when no Docker engine answers: skip the tests that need the stack, or fail the "
        "session",
        default="skip, or fail when the CI env var is true",
        choices=("skip", "fail"),
    ),
    Option(
        field="postgres_init",
        cli="--aikernel-postgres-init",
        ini="aikernel_postgres_init",
        env="AIKERNEL_POSTGRES_INIT",
        metavar="[DATABASE:]PATH",
        help="SQL file run after the bundled init, in order (repeatable; ini: one per line, "
        "relative to the ini file's folder; env: os.pathsep-separated). A DATABASE: prefix "
        f"runs it in that database, otherwise in {DEFAULT_INIT_DATABASE}.",
        default="none",
        repeatable=True,
    ),
    Option(
        field="vault_seed",
        cli="--aikernel-vault-seed",
        ini="aikernel_vault_seed",
        env="AIKERNEL_VAULT_SEED",
        metavar="PATH",
        help="YAML file with kv, policies, approles and transit_keys to seed into Vault",
        default="none",
    ),
    Option(
        field="neo4j_init",
        cli="--aikernel-neo4j-init",
        ini="aikernel_neo4j_init",
        env="AIKERNEL_NEO4J_INIT",
        metavar="PATH",
        help="Cypher file run in order once Neo4j is ready; statements separated by ';' "
        "(repeatable; ini: one per line, relative to the ini file's folder; env: "
        "os.pathsep-separated)",
        default="none",
        repeatable=True,
    ),
    Option(
        field="neo4j_heap",
        cli="--aikernel-neo4j-heap",
        ini="aikernel_neo4j_heap",
        env="AIKERNEL_NEO4J_HEAP",
        metavar="SIZE",
        help="Neo4j JVM heap (initial and max), e.g. 256m or 1g",
        default="256m",
    ),
    Option(
        field="neo4j_pagecache",
        cli="--aikernel-neo4j-pagecache",
        ini="aikernel_neo4j_pagecache",
        env="AIKERNEL_NEO4J_PAGECACHE",
        metavar="SIZE",
        help="Neo4j page cache size, e.g. 64m",
        default="64m",
    ),
    Option(
        field="elasticsearch_init",
        cli="--aikernel-elasticsearch-init",
        ini="aikernel_elasticsearch_init",
        env="AIKERNEL_ELASTICSEARCH_INIT",
        metavar="PATH",
        help="JSON file of component_templates, index_templates and indices created once "
        "Elasticsearch is ready (repeatable; ini: one per line, relative to the ini file's "
        "folder; env: os.pathsep-separated)",
        default="none",
        repeatable=True,
    ),
    Option(
        field="elasticsearch_heap",
        cli="--aikernel-elasticsearch-heap",
        ini="aikernel_elasticsearch_heap",
        env="AIKERNEL_ELASTICSEARCH_HEAP",
        metavar="SIZE",
        help="Elasticsearch JVM heap (ES_JAVA_OPTS -Xms/-Xmx), e.g. 512m",
        default="512m",
    ),
    Option(
        field="kafka_topics",
        cli="--aikernel-kafka-topic",
        ini="aikernel_kafka_topics",
        env="AIKERNEL_KAFKA_TOPICS",
        metavar="NAME[:PARTITIONS]",
        help="topic created once Kafka is ready (repeatable; ini: one per line; env: "
        "comma-separated); partitions default to 1",
        default="none",
        repeatable=True,
    ),
    Option(
        field="prometheus_scrape",
        cli="--aikernel-prometheus-scrape",
        ini="aikernel_prometheus_scrape",
        env="AIKERNEL_PROMETHEUS_SCRAPE",
        metavar="JOB=HOST:PORT[/PATH]",
        help="extra scrape target for Prometheus (repeatable; ini: one per line; env: "
        "comma-separated). HOST 127.0.0.1 or localhost means the host running the tests.",
        default="none",
        repeatable=True,
    ),
)

#: the JVM start-up settings --aikernel-jvm-tuning can choose among (docs/services.md)
JVM_KNOBS: tuple[str, ...] = (
    "cds",
    "c1",
    "no-ml",
    "unsigned-jars",
    "no-prealloc",
    "no-pretouch",
)

OPTIONS = (
    *OPTIONS,
    Option(
        field="reuse",
        cli="--aikernel-reuse",
        ini="aikernel_reuse",
        env="AIKERNEL_REUSE",
        metavar="",
        help="keep the stack running after the session and attach to it in the next run with "
        "the same images, services, settings and seed files (ini/env: true or false); "
        "`aikernel down` removes it",
        default="false",
        flag=True,
    ),
    Option(
        field="mode",
        cli="--aikernel-mode",
        ini="aikernel_mode",
        env="AIKERNEL_MODE",
        metavar="docker|external",
        help="docker: start the services in containers; external: use services that already "
        "run, at the addresses of AIKERNEL_<SERVICE>_URL env vars (defaults: the infrastructure "
        "README's development stack on localhost)",
        default="docker",
        choices=("docker", "external"),
    ),
    Option(
        field="runtime",
        cli="--aikernel-runtime",
        ini="aikernel_runtime",
        env="AIKERNEL_RUNTIME",
        metavar="docker|kubernetes",
        help="where the stack's containers run: the Docker engine, or a Kubernetes cluster "
        "found as kubectl finds it (KUBECONFIG, ~/.kube/config, in-cluster service account; "
        "needs pytest-aikernel[kubernetes])",
        default="docker",
        choices=("docker", "kubernetes"),
    ),
    Option(
        field="kube_context",
        cli="--aikernel-kube-context",
        ini="aikernel_kube_context",
        env="AIKERNEL_KUBE_CONTEXT",
        metavar="NAME",
        help="with --aikernel-runtime kubernetes: the kubeconfig context to use (default: its "
        "current context)",
        default="the kubeconfig's current context",
    ),
    Option(
        field="kube_namespace_prefix",
        cli="--aikernel-kube-namespace-prefix",
        ini="aikernel_kube_namespace_prefix",
        env="AIKERNEL_KUBE_NAMESPACE_PREFIX",
        metavar="PREFIX",
        help="with --aikernel-runtime kubernetes: each stack runs in a namespace named "
        "PREFIX-<session> (a DNS label: lower case letters, digits and '-', at most 40 "
        "characters)",
        default="aikernel",
    ),
    Option(
        field="kube_access",
        cli="--aikernel-kube-access",
        ini="aikernel_kube_access",
        env="AIKERNEL_KUBE_ACCESS",
        metavar="forward|nodeport|loadbalancer",
        help="with --aikernel-runtime kubernetes: how the test process reaches the services: "
        "forward (port-forwards on 127.0.0.1 through the API server), nodeport (a NodePort "
        "Service per service, reached at a node's address; needs kube-proxy or an equivalent "
        "and nodes this machine reaches) or loadbalancer (a LoadBalancer Service per service, "
        "reached at the address the cluster's load-balancer controller gives it)",
        default="forward",
        choices=("forward", "nodeport", "loadbalancer"),
    ),
    Option(
        field="kube_node_address",
        cli="--aikernel-kube-node-address",
        ini="aikernel_kube_node_address",
        env="AIKERNEL_KUBE_NODE_ADDRESS",
        metavar="ADDRESS",
        help="with --aikernel-kube-access nodeport: the node address (IP address or host name) "
        "the test process connects to (default: picked from the cluster's nodes, the "
        "ExternalIP of a Ready node if any has one, else a Ready node's InternalIP)",
        default="picked from the cluster's nodes: a Ready node's ExternalIP, else its InternalIP",
    ),
    Option(
        field="jvm_tuning",
        cli="--aikernel-jvm-tuning",
        ini="aikernel_jvm_tuning",
        env="AIKERNEL_JVM_TUNING",
        metavar="on|off|KNOB,...",
        help="start the JVM services (Elasticsearch, Neo4j, Kafka, ZooKeeper) with the start-up "
        "settings of docs/services.md: on (all of them), off (their images' own settings), or "
        "a comma-separated list of the ones to use, of cds (class-data sharing), c1 (the first "
        "JIT compiler only), no-ml (Elasticsearch without machine learning), unsigned-jars "
        "(signed jars read as unsigned), no-prealloc (Neo4j's transaction logs not filled "
        "up front) and no-pretouch (the heap not touched up front)",
        default="on",
    ),
    Option(
        field="seed_external",
        cli="--aikernel-seed-external",
        ini="aikernel_seed_external",
        env="AIKERNEL_SEED_EXTERNAL",
        metavar="",
        help="in external mode, seed the services too (bundled init, init files, Vault entries); "
        "every seed step is idempotent (ini/env: true or false)",
        default="false",
        flag=True,
    ),
)

OPTIONS_BY_FIELD: Mapping[str, Option] = {o.field: o for o in OPTIONS}


@dataclass(frozen=True)
class InitFile:
    """A user SQL file and the database it runs in."""

    path: Path
    database: str = DEFAULT_INIT_DATABASE


@dataclass(frozen=True)
class Topic:
    """A Kafka topic to create."""

    name: str
    partitions: int = 1


@dataclass(frozen=True)
class ScrapeTarget:
    """An extra Prometheus scrape target."""

    job: str
    host: str
    port: int
    path: str = "/metrics"


@dataclass(frozen=True)
class Settings:
    """Everything the user configured, read once at ``pytest_configure``."""

    images: Mapping[str, str] = field(default_factory=dict)
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT
    #: start services from seeded snapshot images (and make them)
    snapshots: bool = True
    #: seconds a test waits for a service another process's test has faulted
    fault_wait: float = 300.0
    #: where published ports listen on the engine's host (None: loopback locally, the engine's
    #: address for a remote engine)
    bind_address: str | None = None
    docker_missing: DockerMissing = "skip"
    postgres_init: tuple[InitFile, ...] = ()
    vault_seed: Path | None = None
    neo4j_init: tuple[Path, ...] = ()
    neo4j_heap: str = "256m"
    neo4j_pagecache: str = "64m"
    elasticsearch_init: tuple[Path, ...] = ()
    elasticsearch_heap: str = "512m"
    kafka_topics: tuple[Topic, ...] = ()
    prometheus_scrape: tuple[ScrapeTarget, ...] = ()
    reuse: bool = False
    mode: Literal["docker", "external"] = "docker"
    seed_external: bool = False
    #: where the stack's containers run (mode docker); "kubernetes" needs the kubernetes extra
    runtime: Literal["docker", "kubernetes"] = "docker"
    #: kubeconfig context (None: the current one)
    kube_context: str | None = None
    #: namespaces are <prefix>-<session>
    kube_namespace_prefix: str = "aikernel"
    #: how the test process reaches a stack on Kubernetes: port-forwards on 127.0.0.1, or
    #: NodePort Services at a node's address
    kube_access: Literal["forward", "nodeport", "loadbalancer"] = "forward"
    #: nodeport access: the node address to connect to (None: picked from the cluster's nodes)
    kube_node_address: str | None = None
    #: JVM start-up settings for Elasticsearch, Neo4j, Kafka and ZooKeeper
    jvm_tuning: bool = True
    #: which of those settings (names of JVM_KNOBS); with jvm_tuning False, none is used
    jvm_knobs: tuple[str, ...] = JVM_KNOBS
    #: where each setting came from ("--aikernel-image", "-o aikernel_images",
    #: "ini aikernel_images (<file>)", "env ...", "default"), for messages that tell the user
    #: which setting to change.
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    def source_of(self, field_name: str) -> str:
        return self.sources.get(field_name, "default")


# --------------------------------------------------------------------------------------------
# pytest registration


_UNSET_INI = "\0aikernel-unset"
_UNSET_INI_LIST = ["\0aikernel-unset"]


def add_options(parser: pytest.Parser) -> None:
    """Register the option group ``aikernel`` and the ini keys from :data:`OPTIONS`."""
    group = parser.getgroup("aikernel", "pytest-aikernel: the AI Kernel infrastructure stack")
    for opt in OPTIONS:
        env = f" [env {opt.env}]"
        text = f"{opt.help.rstrip('.')}. Default: {opt.default}.{env}"
        if opt.flag:
            group.addoption(
                opt.cli,
                action="store_const",
                const="true",
                dest=_dest(opt),
                default=None,
                help=text,
            )
        elif opt.repeatable:
            group.addoption(
                opt.cli,
                action="append",
                dest=_dest(opt),
                default=None,
                metavar=opt.metavar,
                help=text,
            )
        else:
            group.addoption(opt.cli, dest=_dest(opt), default=None, metavar=opt.metavar, help=text)
        if opt.repeatable:
            parser.addini(opt.ini, opt.help, type="linelist", default=_UNSET_INI_LIST)
        else:
            parser.addini(opt.ini, opt.help, type="string", default=_UNSET_INI)


def _dest(opt: Option) -> str:
    return "aikernel_" + opt.field


# --------------------------------------------------------------------------------------------
# reading


@dataclass(frozen=True)
class RawSources:
    """What each route gave, before precedence: lets unit tests drive the reader without pytest."""

    cli: Mapping[str, str | list[str] | None]
    ini: Mapping[str, str | list[str] | None]
    env: Mapping[str, str]
    ini_dir: Path
    cwd: Path
    inipath: str = "ini file"
    #: ini keys given with ``-o``/``--override-ini`` (pytest's command line, its ``addopts`` or
    #: ``PYTEST_ADDOPTS``): they rank with the command line, below the ``--aikernel-*`` option
    override: Mapping[str, str | list[str] | None] = field(default_factory=dict)


def raw_sources(config: pytest.Config) -> RawSources:
    """What the command line, ``-o``, the configuration file and ``os.environ`` give."""
    overridden = _override_keys(config.getoption("override_ini", None))
    cli: dict[str, str | list[str] | None] = {}
    ini: dict[str, str | list[str] | None] = {}
    override: dict[str, str | list[str] | None] = {}
    for opt in OPTIONS:
        cli[opt.field] = config.getoption(_dest(opt))
        value = config.getini(opt.ini)
        value = None if value is _UNSET_INI or value is _UNSET_INI_LIST else value
        # getini gives the -o value when there is one: it hides the file's value, as in pytest
        (override if opt.ini in overridden else ini)[opt.field] = value
    inipath = config.inipath
    return RawSources(
        cli=cli,
        ini=ini,
        override=override,
        env=dict(os.environ),
        ini_dir=inipath.parent if inipath else config.rootpath,
        cwd=Path(config.invocation_params.dir),
        inipath=str(inipath) if inipath else "ini file",
    )


def _override_keys(values: Sequence[str] | None) -> frozenset[str]:
    """The ini keys named by ``-o KEY=VALUE`` arguments (pytest's ``override_ini`` option).

    ``config.getoption("override_ini")`` holds every ``-o`` of the effective command line, that
    is with ``addopts`` and ``PYTEST_ADDOPTS`` too; ``config.invocation_params.args`` would miss
    those.
    """
    return frozenset(v.partition("=")[0].strip() for v in values or () if "=" in v)


def read_settings(config: pytest.Config, known_services: Sequence[str]) -> Settings:
    """Read every setting from ``config`` (CLI, -o, ini) and ``os.environ``; raise ConfigError.

    Unknown ``AIKERNEL_*`` environment variables become :class:`AikernelConfigWarning` in
    pytest's warnings summary; where a ``filterwarnings`` or ``-W`` setting turns that warning
    into an error, it is a ConfigError (a usage error) instead of a crash in pytest_configure.
    """
    raw = raw_sources(config)
    for message in unknown_env(raw.env, known_services):
        try:
            config.issue_config_time_warning(AikernelConfigWarning(message), stacklevel=2)
        except AikernelConfigWarning:
            raise ConfigError(
                f"{message} (an error here because a filterwarnings or -W setting makes "
                "AikernelConfigWarning one)"
            ) from None
    return resolve(raw, known_services)


def resolve(raw: RawSources, known_services: Sequence[str]) -> Settings:
    """Apply precedence CLI > -o > env > ini > default and validate every value."""
    sources: dict[str, str] = {}

    def pick(name: str) -> tuple[str | list[str] | None, str, Path]:
        opt = OPTIONS_BY_FIELD[name]
        if raw.cli.get(name) is not None:
            return raw.cli[name], opt.cli, raw.cwd
        if raw.override.get(name) is not None:
            return raw.override[name], f"-o {opt.ini}", raw.ini_dir
        if opt.env in raw.env:
            return raw.env[opt.env], f"env {opt.env}", raw.cwd
        if raw.ini.get(name) is not None:
            return raw.ini[name], f"ini {opt.ini} ({raw.inipath})", raw.ini_dir
        return None, "default", raw.cwd

    # images: per service, each route may give some; CLI > -o > env > ini per service: the
    # routes are applied from the lowest, each replacing what lower ones gave for a service.
    images: dict[str, str] = {}
    image_sources: dict[str, str] = {}

    def take_images(lines: str | list[str] | None, src: str) -> None:
        if lines is not None:
            for service, image in _parse_image_lines(_as_list(lines), src, known_services):
                images[service], image_sources[service] = image, src

    take_images(raw.ini.get("images"), f"ini aikernel_images ({raw.inipath})")
    for service, (image, src) in _env_images(raw.env, known_services).items():
        images[service], image_sources[service] = image, src
    take_images(raw.override.get("images"), "-o aikernel_images")
    take_images(raw.cli.get("images"), "--aikernel-image")
    for service, src in image_sources.items():
        sources[f"images.{service}"] = src

    value, src, _ = pick("startup_timeout")
    timeout = DEFAULT_STARTUP_TIMEOUT
    if value is not None:
        timeout = _parse_positive_float(_as_str(value), src)
        sources["startup_timeout"] = src

    value, src, _ = pick("bind_address")
    bind_address: str | None = None
    if value is not None:
        text = _as_str(value).strip()
        if text and text.lower() != "auto":
            bind_address = _parse_address(text, src)
            sources["bind_address"] = src

    def on_off(name: str, default: bool) -> bool:
        value, src, _ = pick(name)
        if value is None:
            return default
        text = _as_str(value).strip().lower()
        sources[name] = src
        if text in ("on", "true", "1", "yes"):
            return True
        if text in ("off", "false", "0", "no"):
            return False
        raise ConfigError(f"{src}: expected on or off, got {_as_str(value)!r}")

    snapshots = on_off("snapshots", True)
    value, src, _ = pick("jvm_tuning")
    jvm_knobs: tuple[str, ...] = JVM_KNOBS
    if value is not None:
        sources["jvm_tuning"] = src
        text = _as_str(value).strip().lower()
        if text in ("on", "true", "1", "yes"):
            jvm_knobs = JVM_KNOBS
        elif text in ("off", "false", "0", "no", ""):
            jvm_knobs = ()
        else:
            names = [n.strip() for n in text.split(",") if n.strip()]
            unknown = [n for n in names if n not in JVM_KNOBS]
            if unknown or not names:
                raise ConfigError(
                    f"{src}: expected on, off or a comma-separated list of {', '.join(JVM_KNOBS)}; "
                    f"got {_as_str(value)!r}"
                    + (f" ({', '.join(unknown)} is not one of them)" if unknown else "")
                )
            jvm_knobs = tuple(n for n in JVM_KNOBS if n in names)
    jvm_tuning = bool(jvm_knobs)

    value, src, _ = pick("runtime")
    runtime: Literal["docker", "kubernetes"] = "docker"
    if value is not None:
        text = _as_str(value).strip().lower()
        if text not in ("docker", "kubernetes"):
            raise ConfigError(f"{src}: expected 'docker' or 'kubernetes', got {_as_str(value)!r}")
        runtime = "kubernetes" if text == "kubernetes" else "docker"
        sources["runtime"] = src

    value, src, _ = pick("kube_context")
    kube_context: str | None = None
    if value is not None and _as_str(value).strip():
        kube_context = _as_str(value).strip()
        sources["kube_context"] = src

    value, src, _ = pick("kube_namespace_prefix")
    kube_namespace_prefix = "aikernel"
    if value is not None:
        text = _as_str(value).strip()
        if not _DNS_PREFIX.match(text):
            raise ConfigError(
                f"{src}: {text!r} is not a namespace prefix: use lower case letters, digits "
                "and '-', starting with a letter, at most 40 characters"
            )
        kube_namespace_prefix = text
        sources["kube_namespace_prefix"] = src

    value, src, _ = pick("kube_access")
    kube_access: Literal["forward", "nodeport", "loadbalancer"] = "forward"
    if value is not None:
        text = _as_str(value).strip().lower()
        if text == "forward":
            kube_access = "forward"
        elif text == "nodeport":
            kube_access = "nodeport"
        elif text == "loadbalancer":
            kube_access = "loadbalancer"
        else:
            raise ConfigError(
                f"{src}: expected 'forward', 'nodeport' or 'loadbalancer', got {_as_str(value)!r}"
            )
        sources["kube_access"] = src
    if kube_access != "forward" and runtime != "kubernetes":
        where = f", from {sources['runtime']}" if "runtime" in sources else " by default"
        raise ConfigError(
            f"{sources['kube_access']}: {kube_access} access is for a stack on Kubernetes; set "
            f"--aikernel-runtime kubernetes (the runtime is docker{where}) or remove the setting"
        )

    value, src, _ = pick("kube_node_address")
    kube_node_address: str | None = None
    if value is not None and _as_str(value).strip():
        kube_node_address = _parse_node_address(_as_str(value).strip(), src)
        sources["kube_node_address"] = src
        if kube_access != "nodeport":
            where = (
                f", from {sources['kube_access']}" if "kube_access" in sources else " by default"
            )
            raise ConfigError(
                f"{src}: a node address is only used with --aikernel-kube-access nodeport (the "
                f"access is {kube_access}{where}); set the access to nodeport or remove the setting"
            )

    value, src, _ = pick("fault_wait")
    fault_wait = 300.0
    if value is not None:
        fault_wait = _parse_positive_float(_as_str(value), src)
        sources["fault_wait"] = src

    value, src, _ = pick("docker_missing")
    docker_missing: DockerMissing
    if value is not None:
        text = _as_str(value).strip().lower()
        if text not in ("skip", "fail"):
            raise ConfigError(f"{src}: expected 'skip' or 'fail', got {_as_str(value)!r}")
        docker_missing = "skip" if text == "skip" else "fail"
        sources["docker_missing"] = src
    else:
        docker_missing = "fail" if _env_true(raw.env.get("CI", "")) else "skip"
        sources["docker_missing"] = "env CI" if docker_missing == "fail" else "default"

    value, src, base = pick("postgres_init")
    init_files: tuple[InitFile, ...] = ()
    if value is not None:
        if src.startswith("env"):
            entries = _split_env_init(_as_str(value), base)
        else:
            entries = [e for e in (x.strip() for x in _as_list(value)) if e]
        init_files = tuple(_parse_init_entry(e, src, base) for e in entries)
        sources["postgres_init"] = src

    value, src, base = pick("vault_seed")
    vault_seed: Path | None = None
    if value is not None and _as_str(value).strip():
        vault_seed = _existing_file(_as_str(value).strip(), src, base)
        sources["vault_seed"] = src

    def files(name: str) -> tuple[Path, ...]:
        value, src, base = pick(name)
        if value is None:
            return ()
        sources[name] = src
        if src.startswith("env"):
            entries = [p for p in _as_str(value).split(os.pathsep) if p.strip()]
        else:
            entries = [e for e in (x.strip() for x in _as_list(value)) if e]
        return tuple(_existing_file(e.strip(), src, base) for e in entries)

    def size(name: str) -> str:
        value, src, _ = pick(name)
        if value is None:
            return OPTIONS_BY_FIELD[name].default
        sources[name] = src
        text = _as_str(value).strip().lower()
        if not _SIZE.match(text):
            raise ConfigError(
                f"{src}: expected a memory size such as 256m or 1g, got {_as_str(value)!r}"
            )
        return text

    def items(name: str) -> list[tuple[str, str]]:
        value, src, _ = pick(name)
        if value is None:
            return []
        sources[name] = src
        if src.startswith("env"):
            parts = _as_str(value).replace("\n", ",").split(",")
        else:
            parts = _as_list(value)
        return [(p.strip(), src) for p in parts if p.strip()]

    def boolean(name: str) -> bool:
        value, src, _ = pick(name)
        if value is None:
            return False
        sources[name] = src
        text = _as_str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{src}: expected true or false, got {_as_str(value)!r}")

    value, src, _ = pick("mode")
    mode: Literal["docker", "external"] = "docker"
    if value is not None:
        text = _as_str(value).strip().lower()
        if text not in ("docker", "external"):
            raise ConfigError(f"{src}: expected 'docker' or 'external', got {_as_str(value)!r}")
        mode = "external" if text == "external" else "docker"
        sources["mode"] = src

    return Settings(
        images=images,
        startup_timeout=timeout,
        fault_wait=fault_wait,
        snapshots=snapshots,
        bind_address=bind_address,
        docker_missing=docker_missing,
        postgres_init=init_files,
        vault_seed=vault_seed,
        neo4j_init=files("neo4j_init"),
        neo4j_heap=size("neo4j_heap"),
        neo4j_pagecache=size("neo4j_pagecache"),
        elasticsearch_init=files("elasticsearch_init"),
        elasticsearch_heap=size("elasticsearch_heap"),
        kafka_topics=tuple(_parse_topic(t, src) for t, src in items("kafka_topics")),
        prometheus_scrape=tuple(_parse_scrape(t, src) for t, src in items("prometheus_scrape")),
        reuse=boolean("reuse"),
        mode=mode,
        seed_external=boolean("seed_external"),
        runtime=runtime,
        kube_context=kube_context,
        kube_namespace_prefix=kube_namespace_prefix,
        kube_access=kube_access,
        kube_node_address=kube_node_address,
        jvm_tuning=jvm_tuning,
        jvm_knobs=jvm_knobs,
        sources=sources,
    )


_DNS_PREFIX = re.compile(r"^[a-z]([a-z0-9-]{0,38}[a-z0-9])?$")
_SIZE = re.compile(r"^[1-9][0-9]*[kmg]?$")
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_JOB = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def _parse_topic(text: str, src: str) -> Topic:
    name, sep, partitions = text.partition(":")
    name = name.strip()
    if not _TOPIC.match(name) or name in (".", ".."):
        raise ConfigError(
            f"{src}: {text!r} is not a valid topic (NAME[:PARTITIONS], NAME of letters, digits, "
            "'.', '_' and '-')"
        )
    count = 1
    if sep:
        if not partitions.strip().isdigit() or int(partitions) < 1:
            raise ConfigError(f"{src}: partitions of {text!r} must be a positive integer")
        count = int(partitions)
    return Topic(name, count)


def _parse_scrape(text: str, src: str) -> ScrapeTarget:
    job, sep, target = text.partition("=")
    job, target = job.strip(), target.strip()
    address, slash, path = target.partition("/")
    host, colon, port = address.rpartition(":")
    if not sep or not _JOB.match(job) or not colon or not host or not port.isdigit():
        raise ConfigError(f"{src}: expected JOB=HOST:PORT[/PATH], got {text!r}")
    if not 0 < int(port) < 65536:
        raise ConfigError(f"{src}: port of {text!r} out of range")
    return ScrapeTarget(
        job=job, host=host, port=int(port), path="/" + path if slash else "/metrics"
    )


def env_name_for_image(service: str) -> str:
    """``postgres-replica`` -> ``AIKERNEL_IMAGE_POSTGRES_REPLICA``."""
    return "AIKERNEL_IMAGE_" + service.upper().replace("-", "_")


def _env_images(env: Mapping[str, str], known: Sequence[str]) -> dict[str, tuple[str, str]]:
    """The ``AIKERNEL_IMAGE_<SERVICE>`` variables of known services (others: see unknown_env)."""
    by_env = {env_name_for_image(s): s for s in known}
    found: dict[str, tuple[str, str]] = {}
    for key, value in env.items():
        if key not in by_env:
            continue
        if not value.strip():
            raise ConfigError(f"env {key}: empty image name; unset it to use the default image")
        found[by_env[key]] = (value.strip(), f"env {key}")
    return found


# --------------------------------------------------------------------------------------------
# unknown AIKERNEL_* environment variables


def unknown_env(env: Mapping[str, str], known_services: Sequence[str]) -> list[str]:
    """One message per ``AIKERNEL_*`` variable of ``env`` that the plugin does not read.

    Such a variable is most likely a typo (``AIKERNEL_STARTUP_TIMEOUTT``) or the image of an
    unknown service; it is ignored, and the message names the closest known variable.
    """
    names = sorted(k for k in env if k.startswith("AIKERNEL_"))
    if not names:
        return []
    known = known_env_names(known_services)
    images = sorted(env_name_for_image(s) for s in known_services)
    messages = []
    for name in names:
        if name in known:
            continue
        if name.startswith("AIKERNEL_IMAGE_"):
            service = name[len("AIKERNEL_IMAGE_") :].lower().replace("_", "-")
            text = (
                f"env {name}: unknown service {service!r}, the variable is ignored; known "
                f"services: {', '.join(known_services)}"
            )
            close = _closest(name, images, "AIKERNEL_IMAGE_")
            hint = ""
        else:
            text = f"env {name} is not a pytest-aikernel setting and is ignored"
            close = _closest(name, sorted(known), "AIKERNEL_")
            hint = " (the known variables are in docs/configuration.md and `pytest --help`)"
        messages.append(text + (f"; did you mean {close}?" if close else hint))
    return messages


def _closest(name: str, candidates: Sequence[str], prefix: str) -> str | None:
    """The candidate most like ``name``, compared without the ``prefix`` they all share (which
    would make any two names look alike)."""
    import difflib

    tails = {c[len(prefix) :]: c for c in candidates if c.startswith(prefix)}
    close = difflib.get_close_matches(name[len(prefix) :], list(tails), n=1)
    return tails[close[0]] if close else None


def known_env_names(known_services: Sequence[str]) -> frozenset[str]:
    """Every ``AIKERNEL_*`` variable the plugin reads: settings, images, external-mode addresses."""
    names = {opt.env for opt in OPTIONS if opt.field != "images"}
    names.update(env_name_for_image(s) for s in known_services)
    names.update(_external_env_names())
    return frozenset(names)


def _external_env_names() -> frozenset[str]:
    """The variables each service reads in external mode (``AIKERNEL_<SERVICE>_URL`` ...).

    Each service names its main variable in ``external_env``; some read more (Vault's token,
    Jaeger's OTLP ports). Calling ``external()`` on an empty environment that records every
    lookup finds them all from the service modules themselves, with no second list to keep.
    """
    from .services import registry  # lazily: services import this module

    names: set[str] = set()
    for svc in registry().values():
        if svc.external_env:
            names.add(svc.external_env)
        probe = _RecordingEnv()
        # the defaults always parse; should one not, its main variable is still known
        with contextlib.suppress(Exception):
            svc.external(probe)
        names.update(probe.looked_up)
    return frozenset(names)


class _RecordingEnv(Mapping[str, str]):
    """An empty environment that remembers the names looked up in it."""

    def __init__(self) -> None:
        self.looked_up: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.looked_up.add(key)
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def _parse_image_lines(
    lines: Sequence[str], src: str, known: Sequence[str]
) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for line in lines:
        text = line.strip()
        if not text:
            continue
        service, sep, image = text.partition("=")
        service, image = service.strip(), image.strip()
        if not sep or not service or not image:
            raise ConfigError(f"{src}: expected SERVICE=IMAGE, got {text!r}")
        if service not in known:
            raise ConfigError(
                f"{src}: unknown service {service!r} in {text!r}; known services: "
                f"{', '.join(known)}"
            )
        out.append((service, image))
    return out


def _parse_address(text: str, src: str) -> str:
    """An IP address to bind published ports to (IPv4 or IPv6, without brackets)."""
    import ipaddress

    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        raise ConfigError(
            f"{src}: {text!r} is not an IP address (e.g. 127.0.0.1, 0.0.0.0, 10.0.0.5 or ::1); "
            "use auto for the default"
        ) from None


_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


def _parse_node_address(text: str, src: str) -> str:
    """A node's IP address (IPv4 or IPv6, without brackets) or DNS name."""
    import ipaddress

    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(text.strip("[]")))
    if _HOSTNAME.match(text) and not text.replace(".", "").isdigit():
        return text.rstrip(".").lower()
    raise ConfigError(
        f"{src}: {text!r} is not a node address: give the IP address or DNS name of a cluster "
        "node that this machine reaches (e.g. 10.0.0.5 or node-1.example.com), without a port; "
        "leave it unset to pick one from the cluster's nodes"
    )


def _parse_positive_float(text: str, src: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{src}: expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{src}: expected a positive number of seconds, got {text!r}")
    return value


def _split_env_init(value: str, base: Path) -> list[str]:
    """Split ``AIKERNEL_POSTGRES_INIT`` on os.pathsep, rejoining ``DATABASE:PATH`` pairs.

    On POSIX os.pathsep is ``:``, the same character as the database prefix. A part is a database
    prefix when it is a bare SQL identifier, is not an existing file, and a path follows it.
    """
    parts = [p for p in value.split(os.pathsep) if p.strip()]
    out: list[str] = []
    i = 0
    while i < len(parts):
        part = parts[i].strip()
        if (
            os.pathsep == ":"
            and i + 1 < len(parts)
            and _IDENT.match(part)
            and not (base / part).is_file()
        ):
            out.append(f"{part}:{parts[i + 1].strip()}")
            i += 2
            continue
        out.append(part)
        i += 1
    return out


def _parse_init_entry(entry: str, src: str, base: Path) -> InitFile:
    database = DEFAULT_INIT_DATABASE
    head, sep, tail = entry.partition(":")
    # A one-letter head is a Windows drive ("C:\\x.sql"), not a database.
    if sep and len(head) > 1 and _IDENT.match(head.strip()):
        database, entry = head.strip(), tail.strip()
    if not entry:
        raise ConfigError(f"{src}: {head!r} names a database but no SQL file follows it")
    return InitFile(path=_existing_file(entry, src, base), database=database)


def _existing_file(text: str, src: str, base: Path) -> Path:
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = base / path
    if not path.is_file():
        raise ConfigError(
            f"{src}: file {text!r} not found (looked at {path}); fix the path or remove the setting"
        )
    return path


def _as_str(value: str | list[str]) -> str:
    return value if isinstance(value, str) else "\n".join(value)


def _as_list(value: str | list[str]) -> list[str]:
    return value.splitlines() if isinstance(value, str) else list(value)


def _env_true(text: str) -> bool:
    # CI=1, CI=true, but also CI=github or any other non-false word means CI
    return text.strip().lower() not in _FALSE
