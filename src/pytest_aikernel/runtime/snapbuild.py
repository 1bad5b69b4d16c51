"""Build a snapshot image in a process of its own, so that the session that made the snapshot
does not wait for it: ``python -m pytest_aikernel.runtime.snapbuild CONTEXT.tar TAG LABELS``.

The build context (Dockerfile and the data archives) is a temporary file; it is removed at the
end, whatever happens. A failed build leaves no image: the next cold start seeds and tries again.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys


def main(argv: list[str]) -> int:
    path, tag, labels = argv[0], argv[1], json.loads(argv[2])
    try:
        from .docker import build_image, docker_client

        client = docker_client(timeout=300)
        try:
            with open(path, "rb") as context:
                build_image(client, context, tag, labels)
        finally:
            client.close()
    except Exception:
        return 1
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
