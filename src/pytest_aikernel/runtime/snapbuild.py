"""Build a snapshot image in a process of its own, so that the session that made the snapshot
does not wait for it: ``python -m pytest_aikernel.runtime.snapbuild MANIFEST.json``.

The manifest names the service's image, the tag and labels, and for each data directory the raw
archive the Docker API gave and the files to leave out. Its folder (a temporary one) is removed at
the end, whatever happens. A failed build leaves no image: the next cold start seeds and tries
again.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import docker


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


def build_from_manifest(client: docker.DockerClient, manifest_path: str) -> None:
    from .docker import _tar, build_image

    manifest: dict[str, Any] = json.loads(Path(manifest_path).read_text())
    exclude = set(manifest["exclude"])
    lines = [f"FROM {manifest['base_image']}"]
    files: dict[str, tuple[bytes, int]] = {}
    for n, (path, file) in enumerate(manifest["archives"].items()):
        name = f"data-{n}.tar"
        files[name] = (_filtered(path, Path(file).read_bytes(), exclude), 0o644)
        parent = path.rstrip("/").rsplit("/", 1)[0]
        lines.append(f"ADD {name} {manifest['root']}{parent}/")
    files["Dockerfile"] = (("\n".join(lines) + "\n").encode(), 0o644)
    context = io.BytesIO(_tar(files))
    build_image(client, context, manifest["tag"], manifest["labels"])


def main(argv: list[str]) -> int:
    manifest_path = argv[0]
    try:
        from .docker import docker_client

        client = docker_client(timeout=300)
        try:
            build_from_manifest(client, manifest_path)
        finally:
            client.close()
    except Exception:
        return 1
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(Path(manifest_path).parent)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
