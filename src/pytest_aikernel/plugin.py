"""The pytest plugin: options, markers, collection, report header, progress and fixtures.

Loading this module imports no client library and talks to no Docker engine; the engine is asked
only when a collected test needs a service (and for the report header).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from . import services as registry_mod
from .container import ContainerFactory
from .errors import AikernelError, ConfigError, DockerUnavailable
from .lease import StartFailed, XdistShare, open_stack, remove_xdist_stack
from .services import Isolation
from .settings import OPTIONS_BY_FIELD, Settings, add_options, read_settings
from .stack import Stack, StackEvent, StackHooks
from .toxics import NetworkFaults
from .world import World

MARKER = "aikernel_stack"
STACK_FIXTURE = "aikernel_stack"

settings_key = pytest.StashKey[Settings]()
wanted_key = pytest.StashKey[frozenset[str]]()
#: the services one test needs, found at collection
needs_key = pytest.StashKey[frozenset[str]]()
stack_key = pytest.StashKey[Stack]()
docker_error_key = pytest.StashKey[str]()
#: the first test whose setup reported the failed start in full
failure_key = pytest.StashKey[str]()


# ---- options and configuration ------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def _hooks(config: pytest.Config) -> StackHooks:
    hook = config.hook
    custom = bool(
        hook.pytest_aikernel_container.get_hookimpls() or hook.pytest_aikernel_ready.get_hookimpls()
    )
    return StackHooks(
        container=lambda service, spec: hook.pytest_aikernel_container(service=service, spec=spec),
        ready=lambda service, obj, stack: hook.pytest_aikernel_ready(
            service=service, obj=obj, stack=stack
        ),
        custom=custom,
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(*services): the test needs these services of the AI Kernel stack (all of them "
        f"when no service is named) and gets the {STACK_FIXTURE} fixture. Services: "
        f"{', '.join(registry_mod.names())}.",
    )
    try:
        settings = read_settings(config, registry_mod.names())
        for svc in registry_mod.registry().values():
            svc.validate(settings)
    except ConfigError as exc:
        raise pytest.UsageError(f"pytest-aikernel: {exc}") from None
    config.stash[settings_key] = settings


def pytest_report_header(config: pytest.Config) -> list[str]:
    settings = config.stash.get(settings_key, None)
    if settings is None:
        return []
    lines = []
    if settings.runtime == "kubernetes" and settings.mode != "external":
        return _kubernetes_header(settings)
    try:
        from .runtime.docker import docker_client, engine_of

        client = docker_client(timeout=5)
        try:
            version = client.version()
            engine = engine_of(client, settings.bind_address, settings.source_of("bind_address"))
        finally:
            client.close()
        lines.append(
            f"aikernel: Docker engine {version.get('Version', '?')} "
            f"(API {version.get('ApiVersion', '?')}, {version.get('Os', '?')}/"
            f"{version.get('Arch', '?')})"
        )
        if settings.mode != "external":
            lines.append(f"aikernel: {engine.describe()}")
            if engine.exposed and not engine.attached:
                opt = OPTIONS_BY_FIELD["bind_address"]
                lines.append(
                    f"aikernel: WARNING: the stack's ports are published on {engine.bind} "
                    f"({opt.cli}, {engine.bind_source}): open to that host's network, not only "
                    "to this machine. Its passwords and tokens are random per stack."
                )
    except DockerUnavailable as exc:
        lines.append(f"aikernel: {exc}")
    else:
        if settings.mode != "external":
            from .runtime import reaper

            lines.append(f"aikernel: {reaper.status()}")
    return lines


def _kubernetes_header(settings: Settings) -> list[str]:
    from .runtime.kubernetes import KubernetesRuntime

    runtime = KubernetesRuntime(
        "header",
        context=settings.kube_context,
        access=settings.kube_access,
        node_address=settings.kube_node_address,
    )
    try:
        version = runtime.engine_version()
        cluster = runtime.engine
    except DockerUnavailable as exc:
        return [f"aikernel: {exc}"]
    except Exception as exc:
        return [f"aikernel: Kubernetes: {type(exc).__name__}: {exc}"]
    return [
        f"aikernel: {cluster.describe()}, server {version}",
        f"aikernel: a namespace {settings.kube_namespace_prefix}-<session> per stack; a killed "
        + (
            f"run's namespace is deleted by the next run (no port-forwarder with {runtime.access} "
            "access)"
            if not runtime.forwarded
            else "run's namespace is deleted by its port-forwarder, or by the next run"
        ),
    ]


def _runtime_answers(settings: Settings) -> None:
    """DockerUnavailable (or KubernetesUnavailable) when the runtime cannot be reached."""
    if settings.runtime == "kubernetes":
        from .runtime.kubernetes import KubernetesRuntime

        KubernetesRuntime("check", context=settings.kube_context).client  # noqa: B018
        return
    from .runtime.docker import docker_client

    docker_client(timeout=5).close()


# ---- collection: which services the selected tests need -----------------------------------------


def _surely_skipped(item: pytest.Item) -> bool:
    """A test marked skip, or skipif with a true boolean condition, starts no service."""
    if item.get_closest_marker("skip") is not None:
        return True
    return any(
        any(arg is True for arg in marker.args) or marker.kwargs.get("condition") is True
        for marker in item.iter_markers("skipif")
    )


def _needs(item: pytest.Item) -> set[str]:
    needed: set[str] = set()
    if _surely_skipped(item):
        return needed
    every = registry_mod.platform_names()
    for marker in item.iter_markers(MARKER):
        args = [str(a) for a in marker.args]
        registry_mod.check_names(args, f"@pytest.mark.{MARKER} on {item.nodeid}")
        needed.update(args or every)
    fixturenames = getattr(item, "fixturenames", ())
    if STACK_FIXTURE in fixturenames and item.get_closest_marker(MARKER) is None:
        needed.update(every)
    for name in registry_mod.names():
        if registry_mod.fixture_name(name) in fixturenames:
            needed.add(name)
    for fixture, (service, _iso) in registry_mod.isolations().items():
        if fixture in fixturenames:
            needed.add(service)
    if WORLD_FIXTURE in fixturenames:
        needed.add("vault")
    if FAULTS_FIXTURE in fixturenames:
        needed.add("toxiproxy")
    return needed


@pytest.hookimpl(tryfirst=True)  # before the terminal reporter prints the collection summary
def pytest_collection_finish(session: pytest.Session) -> None:
    """The services to start, from the tests that will really run: after every deselection
    (``-k``, ``-m``, ``--lf``, ``--sw``, other plugins), which ends before this hook."""
    config = session.config
    items = session.items
    if settings_key not in config.stash:
        return
    wanted: set[str] = set()
    needing: list[pytest.Item] = []
    try:
        for item in items:
            needed = _needs(item)
            item.stash[needs_key] = frozenset(needed)
            if needed:
                wanted |= needed
                needing.append(item)
    except ConfigError as exc:
        raise pytest.UsageError(f"pytest-aikernel: {exc}") from None
    config.stash[wanted_key] = registry_mod.closure(wanted)
    if not needing or config.stash[settings_key].mode == "external":
        return
    try:
        _runtime_answers(config.stash[settings_key])
    except DockerUnavailable as exc:
        settings = config.stash[settings_key]
        opt = OPTIONS_BY_FIELD["docker_missing"]
        source = settings.source_of("docker_missing")
        if settings.docker_missing == "fail":
            raise pytest.UsageError(
                f"pytest-aikernel: {len(needing)} selected test(s) need the stack, but {exc} "
                f"(failing because {opt.cli}=fail, from {source}; use skip to skip them)"
            ) from None
        reason = (
            f"pytest-aikernel: {exc} ({opt.cli}=skip, from {source}; use fail to make this an "
            "error)"
        )
        config.stash[docker_error_key] = reason
        for item in needing:
            item.add_marker(pytest.mark.skip(reason=reason))


def pytest_report_collectionfinish(config: pytest.Config) -> list[str]:
    wanted = config.stash.get(wanted_key, frozenset())
    if not wanted:
        return []
    lines = [
        "aikernel: services needed by the selected tests: "
        + ", ".join(registry_mod.start_order(wanted))
    ]
    settings = config.stash[settings_key]
    for service in registry_mod.start_order(wanted):
        if service in settings.images:
            source = settings.source_of("images." + service)
            lines.append(f"aikernel: image {service}={settings.images[service]} (from {source})")
    return lines


# ---- pytest-xdist: one stack for all workers ----------------------------------------------------

xdist_share_key = pytest.StashKey[XdistShare]()


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist controller: give every worker the run's shared folder, session id and owner."""
    import tempfile

    from .runtime.docker import Owner, new_session_id

    config = node.config
    share = config.stash.get(xdist_share_key, None)
    if share is None:
        share = XdistShare(
            folder=tempfile.mkdtemp(prefix="pytest-aikernel-xdist-"),
            session_id=new_session_id(),
            owner=Owner.current().label(),
        )
        config.stash[xdist_share_key] = share
        _watch_for_ryuk(config, share)
    node.workerinput["aikernel_share"] = [share.folder, share.session_id, share.owner]


ryuk_watch_key = pytest.StashKey[Any]()


def _watch_for_ryuk(config: pytest.Config, share: XdistShare) -> None:
    """The controller outlives its workers, so it is the one that asks Ryuk to remove the
    run's stack if the run is killed: once a worker has written the stack's state."""
    import threading
    from pathlib import Path

    from .runtime import reaper
    from .runtime.docker import LABEL_SESSION
    from .shared import read_state

    done = threading.Event()
    config.stash[ryuk_watch_key] = done

    def watch() -> None:
        folder = Path(share.folder)
        while not done.wait(0.2):
            state = read_state(folder)
            if state is not None and state.get("session_id") == share.session_id:
                reaper.register({LABEL_SESSION: share.session_id})
                return

    settings = config.stash.get(settings_key, None)
    if settings is not None and settings.runtime == "kubernetes":
        return  # the stack's port-forwarder deletes a killed run's namespace
    if not reaper.disabled_reason():
        threading.Thread(target=watch, name="aikernel-ryuk-watch", daemon=True).start()


def _xdist_share(config: pytest.Config) -> XdistShare | None:
    workerinput = getattr(config, "workerinput", None)
    if not workerinput or "aikernel_share" not in workerinput:
        return None
    folder, session_id, owner = workerinput["aikernel_share"]
    return XdistShare(folder=folder, session_id=session_id, owner=owner)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """xdist controller: one summary of the run's stack, from the workers that started it."""
    share = config.stash.get(xdist_share_key, None)
    if share is None:
        return
    from pathlib import Path

    from .shared import read_state

    state = read_state(Path(share.folder)) or {}
    started = state.get("started") or {}
    if state.get("failed"):
        terminalreporter.write_line("aikernel: the run's stack could not start (see the errors)")
    if not started:
        return
    parts = [
        f"{name} {seconds:.2f} s ({worker})"
        for name, (worker, seconds) in sorted(
            started.items(), key=lambda item: registry_mod.names().index(item[0])
        )
    ]
    count = len(started)
    terminalreporter.write_line(
        f"aikernel: the run's stack of {count} service{'' if count == 1 else 's'}, session "
        f"{state.get('session_id', '?')}: {', '.join(parts)}"
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    share = config.stash.get(xdist_share_key, None)
    if share is None:
        return
    import shutil

    done = config.stash.get(ryuk_watch_key, None)
    if done is not None:
        done.set()
    # reuse and external runs have no run stack, unless a held reused service made the workers
    # fall back to one: removing by the run's session label is right in every case
    remove_xdist_stack(share, config.stash.get(settings_key, None))
    shutil.rmtree(share.folder, ignore_errors=True)


# ---- progress ------------------------------------------------------------------------------------


def _reporter(config: pytest.Config) -> Callable[[StackEvent], None]:
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if terminal is None:
        return lambda _e: None

    def report(event: StackEvent) -> None:
        if event.kind == "ready":
            text = f"aikernel: {event.service} ready in {event.elapsed:.2f} s ({event.detail})"
        elif event.kind == "summary":
            text = f"aikernel: {event.detail} ready in {event.elapsed:.2f} s"
        elif event.kind == "reused":
            text = f"aikernel: reusing {event.detail}"
        elif event.kind == "replaced":
            text = f"aikernel: replacing reused {event.detail}"
        elif event.kind == "swept":
            text = f"aikernel: removed leftovers of dead sessions: {event.detail}"
        elif event.kind == "note":
            text = f"aikernel: {event.detail}"
        else:
            return
        if capture is not None:
            with capture.global_and_fixture_disabled():
                terminal.ensure_newline()
                terminal.write_line(text)
        else:
            terminal.write_line(text)

    return report


# ---- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def aikernel_settings(pytestconfig: pytest.Config) -> Settings:
    """The pytest-aikernel settings of this session (frozen): images, timeouts, seed files."""
    return pytestconfig.stash[settings_key]


#: why the stack could not be had: (message, reported by another xdist worker)
start_failure_key = pytest.StashKey[tuple[str, bool]]()


def _open(config: pytest.Config) -> None:
    """Open this session's stack with the services the selected tests need, once; the stack or
    the failure goes to the stash."""
    import time

    if stack_key in config.stash or start_failure_key in config.stash:
        return
    settings = config.stash[settings_key]
    wanted = config.stash.get(wanted_key, frozenset())
    began = time.monotonic()
    report = _reporter(config)
    try:
        stack = open_stack(
            settings,
            wanted,
            report=report,
            xdist=_xdist_share(config),
            rootdir=config.rootpath,
            hooks=_hooks(config),
        )
    except StartFailed as exc:
        config.stash[start_failure_key] = (str(exc), exc.elsewhere)
        return
    except (AikernelError, OSError) as exc:  # a lock timeout, an unwritable cache folder...
        text = f"pytest-aikernel could not open the stack: {type(exc).__name__}: {exc}"
        config.stash[start_failure_key] = (text, False)
        return
    config.stash[stack_key] = stack
    if wanted:
        count = len(stack)
        report(
            StackEvent(
                "summary",
                elapsed=time.monotonic() - began,
                detail=f"stack of {count} service{'' if count == 1 else 's'} "
                f"({', '.join(stack.services)}), session {stack.session_id},",
            )
        )


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> Any:
    """Start the stack before the first test, so that its lines come before the progress dots
    (and its time is not charged to whichever test happens to be first)."""
    config = session.config
    wanted = config.stash.get(wanted_key, frozenset())
    if (
        wanted
        and settings_key in config.stash
        and docker_error_key not in config.stash
        and not config.option.collectonly
        and session.items
    ):
        _open(config)
    try:
        return (yield)
    finally:
        stack = config.stash.get(stack_key, None)
        if stack is not None:
            stack.process_ends = True
            stack.stop()


@pytest.fixture(scope="session")
def _aikernel_session_stack(pytestconfig: pytest.Config) -> Iterator[Stack]:
    """The session's stack, started with every service the selected tests need."""
    reason = pytestconfig.stash.get(docker_error_key, None)
    if reason is not None:
        pytest.skip(reason)
    _open(pytestconfig)
    failure = pytestconfig.stash.get(start_failure_key, None)
    if failure is not None:
        raise StackFailed(failure[0], elsewhere=failure[1])
    stack = pytestconfig.stash[stack_key]
    try:
        yield stack
    finally:
        stack.process_ends = True  # the session's end: pytest only reports after this
        stack.stop()


@pytest.fixture(scope="session")
def aikernel_stack(_aikernel_session_stack: Stack) -> Stack:
    """The AI Kernel infrastructure stack of this session.

    ``aikernel_stack["postgres"]`` is a service's object; ``"redis" in aikernel_stack`` tells
    whether it runs. Tests marked ``@pytest.mark.aikernel_stack(...)`` get it without asking; a test
    that asks for it with no marker needs every service.
    """
    return _aikernel_session_stack


@pytest.fixture(autouse=True)
def _aikernel_marker(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker(MARKER) is not None:
        request.getfixturevalue(STACK_FIXTURE)


# the service under test (container.py); its report hook adds the logs to failing tests
pytest_plugins = ["pytest_aikernel.container"]


@pytest.fixture
def aikernel_container(
    request: pytest.FixtureRequest, _aikernel_session_stack: Stack
) -> Iterator[ContainerFactory]:
    """Start your service's own image on the stack's network; removed after the test.

    ``aikernel_container(image, *, env=None, ports=(), wait=None, command=None, name=None,
    stack_env=True, timeout=60.0)`` returns a ``pytest_aikernel.ServiceContainer``: ``url``,
    ``port(container_port)`` (127.0.0.1), ``internal_host``, ``container_id``, ``logs()``,
    ``exec(cmd)``. Its environment has the ``AIKERNEL_*`` variables of every running service with
    in-network addresses (``stack_env``), then ``env``. ``wait``: None, a port (8080), an HTTP
    path ('/health'), 'log:REGEX' or a ``pytest_aikernel.Wait``. A failing test shows its logs.
    """
    from .container import containers_for_test

    with containers_for_test(request, _aikernel_session_stack) as factory:
        yield factory


@pytest.fixture(scope="session")
def aikernel_session_container(
    request: pytest.FixtureRequest, _aikernel_session_stack: Stack
) -> Iterator[ContainerFactory]:
    """``aikernel_container`` for the whole session: the same image and arguments give the same
    running container (started once per process); removed at the end of the session.
    """
    from .container import containers_for_session

    with containers_for_session(request, _aikernel_session_stack) as factory:
        yield factory


WORLD_FIXTURE = "aikernel_world"


@pytest.fixture
def aikernel_world(request: pytest.FixtureRequest, _aikernel_session_stack: Stack) -> World:
    """This test's own world: its own resources on every service it needs, described in Vault.

    For each service the test needs (its fixtures or ``@pytest.mark.aikernel_stack``) that has a
    per-test fixture, the world holds the test's own resource: ``world["postgres"]`` is the same
    clone connection as ``aikernel_pg``; likewise ``redis`` (``aikernel_redis_db``), ``kafka``
    (``aikernel_kafka_topic``) and ``elasticsearch`` (``aikernel_es_index``). Under
    ``world.vault_path`` (KV v2, mount ``secret``), ``aikernel/<service>`` entries have the
    fields of the session's ``secret/aikernel/<service>`` entries but point at those resources,
    so a service configured with a Vault address, a token and that path sees only this test's
    data. ``world.env(internal=False)`` gives the same as environment variables
    (``internal=True``: addresses for a container on the stack network). Cleanup removes it all.
    """
    from .world import build, world_isolations

    stack = _aikernel_session_stack
    services = [n for n in registry_mod.start_order(_needs(request.node)) if n in stack]
    isolations = world_isolations()
    objects = {
        name: request.getfixturevalue(isolations[name].fixture)
        for name in services
        if name in isolations
    }
    vault_path = request.getfixturevalue("aikernel_vault_path")
    return build(stack, services, objects, vault_path)


FAULTS_FIXTURE = "aikernel_faults"


@pytest.fixture
def aikernel_faults(
    request: pytest.FixtureRequest, _aikernel_session_stack: Stack
) -> Iterator[NetworkFaults]:
    """Network faults through Toxiproxy for this test (Toxiproxy joins the stack).

    ``aikernel_faults.proxied("postgres")`` is the same kind of object as ``aikernel_postgres``
    whose host side and in-network address go through a proxy of this test's own. Faults on
    that path: ``latency(service, ms, jitter=0)``, ``bandwidth(service, kbps)``,
    ``timeout(service, ms)``, ``reset_peer(service, ms)``, ``slow_close(service, ms)``,
    ``limit_data(service, nbytes)``, ``down(service)`` and ``toxic(service, kind, **attrs)``;
    each takes ``direction="both"|"upstream"|"downstream"`` and works as a context manager or
    until the test ends. Service-level faults (stop, kill, pause, disconnect, promote) are on
    the service objects themselves. See docs/faults.md.
    """

    stack = _aikernel_session_stack
    _grow(stack, "toxiproxy")
    stash = request.node.stash
    scope = stack.test_scope("toxiproxy", stash.get(stem_key, None))
    stash[stem_key] = scope.name
    faults = NetworkFaults(stack, scope.name, request.node.nodeid)
    try:
        yield faults
    finally:
        faults.close()


class StackFailed(pytest.fail.Exception):  # type: ignore[misc, name-defined]
    """The stack (or a service asked for later) could not be had. The first test that meets it
    shows the whole report; later tests get one line that points to it."""

    def __init__(self, message: str, *, elsewhere: bool = False) -> None:
        super().__init__(message, pytrace=False)
        #: the report was already shown by another xdist worker
        self.elsewhere = elsewhere


def _grow(stack: Stack, service: str) -> None:
    """Start ``service`` on demand (through the stack's lease); a failure fails the test."""
    failure = ""
    try:
        stack.start([service])
        stack.faults.use(service)
    except StartFailed as exc:
        failure = str(exc)
    except AikernelError as exc:  # a fault-wait timeout
        raise pytest.fail.Exception(str(exc), pytrace=False) from None
    if failure:
        raise StackFailed(failure)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    excinfo = call.excinfo
    if call.when != "setup" or excinfo is None or not isinstance(excinfo.value, StackFailed):
        return report
    headline = str(excinfo.value).strip().splitlines()[0]
    first = item.config.stash.get(failure_key, None)
    if excinfo.value.elsewhere:
        report.longrepr = (
            f"{headline} (reported in full by the test that tried first, in another xdist worker)"
        )
    elif first is None:
        item.config.stash[failure_key] = item.nodeid
    elif first != item.nodeid:
        report.longrepr = f"{headline} (reported in full at {first})"
    return report


# ---- faults: every test starts on a healthy stack ------------------------------------------------


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before the test's fixtures: wait while another process's test has one of its services
    down, heal what a dead process left, fail for a service that could not be healed. (A plain
    hook, not a wrapper: raising before a wrapper's yield would skip the other plugins' setup
    wrappers, whose teardown then fails.)"""
    stack = item.config.stash.get(stack_key, None)
    if stack is not None and len(stack):
        # what collection found (the marker and fixtures are read once, not per test)
        needed = item.stash.get(needs_key, None)
        if needed is None:
            needed = frozenset(_needs(item))
        if needed:
            try:
                stack.faults.begin(item.nodeid, needed)
            except AikernelError as exc:
                raise pytest.fail.Exception(str(exc), pytrace=False) from None


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    """Heal what the test did to the stack before its fixtures are torn down (their cleanups
    need the services), then let other processes have the services again."""
    stack = item.config.stash.get(stack_key, None)
    failures: list[str] = []
    if stack is not None and len(stack) and stack.faults.touched:
        failures = stack.faults.heal()
    try:
        result = yield
    finally:
        if stack is not None and len(stack):
            stack.faults.end()
    if failures:
        raise pytest.fail.Exception("\n".join(failures), pytrace=False)
    return result


def _make_service_fixture(service: str) -> Any:
    def fixture(_aikernel_session_stack: Stack) -> Any:
        _grow(_aikernel_session_stack, service)
        return _aikernel_session_stack[service]

    fixture.__doc__ = registry_mod.registry()[service].fixture_doc
    fixture.__name__ = registry_mod.fixture_name(service)
    return pytest.fixture(scope="session", name=fixture.__name__)(fixture)


#: the test's stem: one name shared by every per-test fixture of the test
stem_key = pytest.StashKey[str]()


def _make_isolation_fixture(service: str, iso: Isolation) -> Any:
    def fixture(request: pytest.FixtureRequest, _aikernel_session_stack: Stack) -> Iterator[Any]:
        _grow(_aikernel_session_stack, service)
        stash = request.node.stash
        scope = _aikernel_session_stack.test_scope(service, stash.get(stem_key, None))
        stash[stem_key] = scope.name
        try:
            with iso.make(_aikernel_session_stack[service], scope) as value:
                yield value
        finally:
            # a rerun of the item gets a new name: this run's resources may still be being
            # removed in the background
            if stem_key in stash:
                del stash[stem_key]

    fixture.__doc__ = iso.doc
    fixture.__name__ = iso.fixture
    return pytest.fixture(name=iso.fixture)(fixture)


for _service in registry_mod.names():
    globals()[registry_mod.fixture_name(_service)] = _make_service_fixture(_service)
for _fixture, (_service, _iso) in registry_mod.isolations().items():
    globals()[_fixture] = _make_isolation_fixture(_service, _iso)
del _service
