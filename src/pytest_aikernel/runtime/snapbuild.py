"""Make a snapshot after the session that needed it, in a process of its own, so that no
session waits for one: ``python -m pytest_aikernel.runtime.snapbuild JOB LOCK_FD``.

The session that seeded a service without a snapshot writes a job (its settings, the service,
the snapshot key) and takes the key's lock, which the child goes on holding. The child starts
a stack of its own with that one service, seeded exactly as the session's was (the key covers
everything that reaches the seeded state), copies its data directories while no test can write,
builds the image and removes its stack. Ryuk holds that stack as any other; the job's folder is
removed at the end, whatever happens. A failed build leaves no image, and a line saying why
beside the lock; the next cold start seeds, shows that line, and tries again.

``aikernel snapshots export`` waits for the locks of running builds (:func:`wait_for_builds`).
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import docker

    from ..settings import Settings

#: the file names of a key's lock and of its last failure, in the temporary folder
LOCK_PREFIX = "aikernel-snapshot-"


def lock_path(service: str, key: str) -> Path:
    return Path(tempfile.gettempdir(), f"{LOCK_PREFIX}{service}-{key}.lock")


def failure_path(service: str, key: str) -> Path:
    return Path(tempfile.gettempdir(), f"{LOCK_PREFIX}{service}-{key}.failed")


def last_failure(service: str, key: str) -> str:
    """Why the last build of this snapshot failed ("" when none did or it is unknown)."""
    try:
        return failure_path(service, key).read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def _take(path: Path) -> int | None:
    """An open descriptor of ``path`` (made if missing) holding its lock, or None when another
    process holds it (or locks cannot be had here)."""
    try:
        import fcntl
    except ImportError:  # Windows: no detached builds there
        return None
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _held(path: Path) -> bool:
    """Whether a process holds the lock ``path``; an observer's check, which never makes the
    file (a build that ended removed it)."""
    try:
        import fcntl
    except ImportError:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def spawn_build(settings: Settings, service: str, key: str) -> bool:
    """Start the detached build of ``service``'s snapshot ``key``; False when another process
    builds it already, or none could be started (then why is kept for the next session's note,
    as for a build that failed)."""
    from .docker import spawn_detached

    fd = _take(lock_path(service, key))
    if fd is None:
        return False
    folder = tempfile.mkdtemp(prefix=LOCK_PREFIX + "job-")
    job = os.path.join(folder, "job.pickle")
    started = False
    why = "no process could be started here (posix_spawn)"
    try:
        with open(job, "wb") as fh:
            pickle.dump({"settings": settings, "service": service, "key": key}, fh)
        started = spawn_detached("pytest_aikernel.runtime.snapbuild", job, str(fd), keep_fds=(fd,))
    except Exception as exc:
        why = f"its job could not be written: {type(exc).__name__}: {exc}"
    finally:
        if not started:
            shutil.rmtree(folder, ignore_errors=True)
            with contextlib.suppress(OSError):
                failure_path(service, key).write_text(why + "\n")
        os.close(fd)  # the child holds the lock from here on
    return started


def wait_for_builds(timeout: float, on_wait: Any = None) -> list[str]:
    """Wait until no snapshot build of this machine holds its lock; the names of the locks
    still held after ``timeout`` seconds. ``on_wait(name)`` is called once for each build that
    is waited for."""
    deadline = time.monotonic() + timeout
    held: list[str] = []
    for path in sorted(Path(tempfile.gettempdir()).glob(f"{LOCK_PREFIX}*.lock")):
        told = False
        while _held(path):
            if time.monotonic() >= deadline:
                held.append(path.name)
                break
            if not told and on_wait is not None:
                on_wait(path.name)
                told = True
            time.sleep(0.2)
    return held


def build_states() -> list[tuple[str, str, str]]:
    """(service, key, state) of this machine's snapshot builds: "running", or "failed: <why>"
    for the last build of a key that failed (and was not tried again since)."""
    states: list[tuple[str, str, str]] = []
    for path in sorted(Path(tempfile.gettempdir()).glob(f"{LOCK_PREFIX}*")):
        stem, dot, suffix = path.name[len(LOCK_PREFIX) :].rpartition(".")
        service, dash, key = stem.rpartition("-")
        if not (dot and dash and service) or service == "job":
            continue
        if suffix == "lock" and lock_held(service, key):
            states.append((service, key, "running"))
        elif suffix == "failed" and not lock_held(service, key):
            states.append((service, key, f"failed: {last_failure(service, key)}"))
    return states


def lock_held(service: str, key: str) -> bool:
    """Whether a build of ``service``'s snapshot ``key`` runs on this machine."""
    return _held(lock_path(service, key))


def _filtered(path: str, archive: bytes, exclude: set[str]) -> bytes:
    """``archive`` (its top folder is the data directory's name) without ``exclude``."""
    top = path.rstrip("/").rsplit("/", 1)[-1]
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(archive)) as src,
        tarfile.open(fileobj=out, mode="w") as dst,
    ):
        for member in src:
            head, _, inner = member.name.partition("/")
            if head == top and inner in exclude:
                continue
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    return out.getvalue()


def build_snapshot_image(
    client: docker.DockerClient,
    *,
    base_image: str,
    tag: str,
    labels: Mapping[str, str],
    archives: Mapping[str, bytes],
    exclude: set[str],
    root: str,
) -> None:
    """Build ``tag`` ``FROM base_image`` with each archive of a data directory (less
    ``exclude``) under ``root``."""
    from .docker import _tar, build_image

    lines = [f"FROM {base_image}"]
    files: dict[str, tuple[bytes, int]] = {}
    for n, (path, archive) in enumerate(archives.items()):
        name = f"data-{n}.tar"
        files[name] = (_filtered(path, archive, exclude), 0o644)
        parent = path.rstrip("/").rsplit("/", 1)[0]
        lines.append(f"ADD {name} {root}{parent}/")
    files["Dockerfile"] = (("\n".join(lines) + "\n").encode(), 0o644)
    build_image(client, io.BytesIO(_tar(files)), tag, labels)


def build(settings: Settings, service: str, key: str) -> str:
    """Seed ``service`` in a stack of its own and keep its snapshot; "" when made (or there
    already), else why not."""
    import dataclasses

    from ..stack import Stack, StackEvent
    from .docker import docker_client, snapshot_tag

    client = docker_client()
    try:
        with contextlib.suppress(Exception):
            client.images.get(snapshot_tag(service, key))
            return ""  # made meanwhile (another machine on this engine, an import)
    finally:
        client.close()
    notes: list[str] = []

    def note(event: StackEvent) -> None:
        if event.kind == "note":
            notes.append(event.detail)

    # only what reaches the seeded state: never reused, never shared, on this engine
    settings = dataclasses.replace(settings, reuse=False, mode="docker", runtime="docker")
    stack = Stack(settings, on_event=note)
    stack.snapshot_now = True
    try:
        stack.start([service])
    finally:
        stack.stop()
    made = stack.snapshots_made.get(service)
    if made == key:
        return ""
    if made:
        return f"the stack's key was {made}, not {key} (its image or settings changed meanwhile)"
    return "; ".join(notes) or "no snapshot was made"


#: seconds a build waits for the session's process to exit before it begins
PARENT_WAIT = 10.0


def _after_parent(parent: int) -> None:
    """Yield the machine to the session's process until it exited (or PARENT_WAIT passed):
    this build must not slow down its end (which is why it also runs niced)."""
    deadline = time.monotonic() + PARENT_WAIT
    while os.getppid() == parent and time.monotonic() < deadline:
        time.sleep(0.02)


def main(argv: list[str]) -> int:
    job_path, lock_fd = argv[0], int(argv[1])
    with contextlib.suppress(OSError):
        os.nice(10)
    _after_parent(os.getppid())
    why = ""
    service = key = ""
    try:
        with open(job_path, "rb") as fh:
            job = pickle.load(fh)  # our own file, in a folder only this user can read
        service, key = job["service"], job["key"]
        with contextlib.suppress(OSError):
            failure_path(service, key).unlink()
        why = build(job["settings"], service, key)
    except Exception as exc:
        why = f"{type(exc).__name__}: {exc}"
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(Path(job_path).parent)
    if why and service:
        with contextlib.suppress(OSError):
            failure_path(service, key).write_text(why.splitlines()[0][:500] + "\n")
    elif service:
        # still held: a build that opened this file meanwhile finds the image there and ends
        with contextlib.suppress(OSError):
            lock_path(service, key).unlink()
    with contextlib.suppress(OSError):
        os.close(lock_fd)
    return 1 if why else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
