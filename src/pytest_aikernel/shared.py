"""One stack shared by several processes: a lock file and a state file in a shared folder.

pytest-xdist workers share the stack of their run (the folder is the run's own, made by the
controller); reused stacks are shared across runs (the folder is in the user's cache).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

STATE = "stack.json"
LOCK = "stack.lock"


@contextlib.contextmanager
def locked(folder: Path, timeout: float = 900.0, name: str = LOCK) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (blocking up to ``timeout`` s; POSIX flock)."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / name, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"pytest-aikernel: waited {timeout:.0f} s for the lock {folder / name}"
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def read_state(folder: Path) -> dict[str, Any] | None:
    path = folder / STATE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_state(folder: Path, state: dict[str, Any]) -> None:
    """Write atomically, readable by the owner only (the state holds the stack's secrets)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{STATE}.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(state, fh)
    os.replace(tmp, folder / STATE)


def clear_state(folder: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (folder / STATE).unlink()
