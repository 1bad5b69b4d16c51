"""How a process gets its stack: start it, attach to an xdist run's, or reuse one across runs.

plain      this process starts the stack and removes it at the end
xdist      the first worker that needs the stack starts it under the run's lock; the others
           attach through the state file; the controller removes it once all are done
reuse      the stack outlives the session, found again by a key that hashes everything that
           shapes it; a dead or changed stack is replaced, never trusted
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from . import services as registry_mod
from .errors import DockerUnavailable, StackStartError
from .runtime.docker import (
    LABEL_SESSION,
    Owner,
    docker_client,
    remove_by_labels,
)
from .settings import Settings
from .shared import LOCK, clear_state, locked, read_state, write_state
from .stack import Stack, StackEvent, StackHooks

LABEL_REUSE = "pytest-aikernel.reuse"
LABEL_PROJECT = "pytest-aikernel.project"
REUSE_OWNER = Owner(host="reuse", pid=0, start="")


class StartFailed(Exception):
    """The stack could not be had; the message is what the user sees."""


@dataclass(frozen=True)
class XdistShare:
    """What the xdist controller hands to its workers."""

    folder: str
    session_id: str
    owner: str


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pytest-aikernel"


def project_id(rootdir: Path) -> str:
    return hashlib.sha256(str(rootdir.resolve()).encode()).hexdigest()[:12]


def reuse_key(settings: Settings, wanted: Iterable[str]) -> str:
    """A hash of everything that shapes a stack: services, images, settings, seed contents."""
    services = sorted(registry_mod.closure(wanted))
    fields = asdict(settings)
    for name in ("sources", "reuse", "docker_missing", "startup_timeout", "mode"):
        fields.pop(name, None)
    files: list[Path] = [f.path for f in settings.postgres_init]
    files += [*settings.neo4j_init, *settings.elasticsearch_init]
    if settings.vault_seed is not None:
        files.append(settings.vault_seed)
    blob = {
        "services": services,
        "images": {s: registry_mod.image_for(s, settings) for s in services},
        "settings": fields,
        "seeds": {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files},
    }
    text = json.dumps(blob, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _start(stack: Stack, wanted: Iterable[str]) -> None:
    try:
        stack.start(wanted)
    except DockerUnavailable as exc:
        raise StartFailed(f"pytest-aikernel: {exc}") from None
    except StackStartError as exc:
        raise StartFailed(str(exc)) from None


def open_stack(
    settings: Settings,
    wanted: frozenset[str],
    *,
    report: Callable[[StackEvent], None],
    xdist: XdistShare | None,
    rootdir: Path,
    hooks: StackHooks | None = None,
) -> Stack:
    """The stack for this process (see the module docstring); StartFailed with the message."""
    if settings.mode == "external":
        stack = Stack(settings, on_event=report, hooks=hooks)  # every process attaches on its own
        _start(stack, wanted)
        return stack
    if settings.reuse:
        return _reused(settings, wanted, report, rootdir, hooks)
    if xdist is None:
        stack = Stack(settings, on_event=report, hooks=hooks)
        _start(stack, wanted)
        return stack
    folder = Path(xdist.folder)
    owner = Owner.parse(xdist.owner)
    with locked(folder):
        state = read_state(folder)
        if state is not None and state.get("failed"):
            raise StartFailed(str(state["failed"]))
        if state is not None:
            stack = Stack.attach(settings, state, on_event=report, owner=owner)
            stack.hooks = hooks or stack.hooks
            if not registry_mod.closure(wanted) <= set(stack.services):
                _start(stack, wanted)
                write_state(folder, stack.export())
            return stack
        stack = Stack(
            settings, on_event=report, session_id=xdist.session_id, owner=owner, hooks=hooks
        )
        try:
            _start(stack, wanted)
        except StartFailed as exc:
            write_state(folder, {"failed": str(exc)})
            raise
        stack.owned = False  # the controller removes it once every worker is done
        write_state(folder, stack.export())
        return stack


def _reused(
    settings: Settings,
    wanted: frozenset[str],
    report: Callable[[StackEvent], None],
    rootdir: Path,
    hooks: StackHooks | None,
) -> Stack:
    key = reuse_key(settings, wanted)
    project = project_id(rootdir)
    folder = cache_dir() / "reuse" / key
    labels = {LABEL_REUSE: key, LABEL_PROJECT: project}
    with locked(folder):
        state = read_state(folder)
        if state is not None:
            stack = Stack.attach(
                settings, state, on_event=report, owner=REUSE_OWNER, extra_labels=labels
            )
            dead = stack.verify()
            if not dead:
                report(StackEvent("reused", detail=f"key {key}, session {stack.session_id}"))
                return stack
            report(StackEvent("replaced", detail=f"{', '.join(dead)} no longer answer"))
            _remove_session(str(state["session_id"]))
            clear_state(folder)
        _remove_other_reused(project, key)
        stack = Stack(
            settings, on_event=report, owner=REUSE_OWNER, extra_labels=labels, hooks=hooks
        )
        _start(stack, wanted)
        stack.owned = False  # kept after the session: `aikernel down` removes it
        state = stack.export()
        state["key"] = key
        state["project"] = project
        write_state(folder, state)
        return stack


def _remove_session(session_id: str) -> None:
    client = docker_client()
    try:
        remove_by_labels(client, {LABEL_SESSION: session_id})
    finally:
        client.close()


def _remove_other_reused(project: str, key: str) -> None:
    """A changed key replaces the project's old reused stack."""
    client = docker_client()
    try:
        stale: set[str] = set()
        for container in client.containers.list(
            all=True, filters={"label": [f"{LABEL_PROJECT}={project}", LABEL_REUSE]}
        ):
            if container.labels.get(LABEL_REUSE) != key:
                stale.add(container.labels.get(LABEL_SESSION, ""))
        for session in stale - {""}:
            remove_by_labels(client, {LABEL_SESSION: session})
        for old in (cache_dir() / "reuse").glob("*"):
            if old.name != key:
                state = read_state(old)
                if state is not None and state.get("project") == project:
                    clear_state(old)
    finally:
        client.close()


def remove_xdist_stack(share: XdistShare) -> int:
    """The controller's teardown: remove every container of the run's shared stack."""
    folder = Path(share.folder)
    removed = 0
    if (folder / LOCK).exists():  # some worker went for the stack
        try:
            client = docker_client(timeout=30)
        except DockerUnavailable:
            return 0
        try:
            removed = remove_by_labels(client, {LABEL_SESSION: share.session_id})
        finally:
            client.close()
    return removed
