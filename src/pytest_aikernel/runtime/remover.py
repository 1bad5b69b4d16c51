"""Remove a finished session's containers, volumes and network in a process of its own, so that
pytest exits without waiting for the engine: ``python -m pytest_aikernel.runtime.remover SESSION``.

A plain stack whose session Ryuk holds hands its removal here at the end (docs/lifecycle.md): if
this process fails or is killed, Ryuk removes the same things once its reconnection timeout has
passed, and the next session's sweep removes what a dead owner left.
"""

from __future__ import annotations

import contextlib
import sys


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0]:
        print("usage: python -m pytest_aikernel.runtime.remover SESSION_ID", file=sys.stderr)
        return 2
    from .docker import LABEL_SESSION, docker_client, remove_by_labels

    client = docker_client(timeout=120)
    try:
        remove_by_labels(client, {LABEL_SESSION: argv[0]})
    finally:
        with contextlib.suppress(Exception):
            client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
