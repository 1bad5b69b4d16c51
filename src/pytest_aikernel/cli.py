"""The ``aikernel`` command: start, list and remove stacks with the plugin's own code.

    eval "$(aikernel up postgres redis vault)"   # start (or reuse) a stack, export its addresses
    pytest --aikernel-mode external               # tests use it without any start-up cost
    aikernel status                               # stacks on this engine
    aikernel down                                 # remove reused and dead stacks

Settings come from the same options as the plugin's (``--aikernel-image`` ...), the project's
pytest configuration file (found from the current folder as pytest finds it) and the ``AIKERNEL_*``
environment variables, with the same precedence; so `aikernel up` and `pytest --aikernel-reuse`
in the same project share one reused stack. Progress goes to stderr, exports to stdout.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import services as registry_mod
from .errors import AikernelError, ConfigError
from .settings import OPTIONS, Settings, raw_sources, resolve, unknown_env

if TYPE_CHECKING:
    import pytest


def _add_settings(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("settings (as for pytest; AIKERNEL_* env vars apply too)")
    for opt in OPTIONS:
        if opt.field in ("reuse", "mode", "docker_missing", "seed_external"):
            continue
        if opt.repeatable:
            group.add_argument(
                opt.cli, dest=opt.field, action="append", metavar=opt.metavar, help=opt.help
            )
        elif opt.field == "bind_address":
            # `aikernel up --bind-address ADDR`: serve runners on other machines
            group.add_argument(
                opt.cli, "--bind-address", dest=opt.field, metavar=opt.metavar, help=opt.help
            )
        else:
            group.add_argument(opt.cli, dest=opt.field, metavar=opt.metavar, help=opt.help)


def load_pytest_config(
    cwd: Path, config_file: str | None = None, rootdir: str | None = None
) -> pytest.Config:
    """pytest's configuration for a run started in ``cwd`` with these ``-c``/``--rootdir``.

    pytest builds it itself, so every rule of pytest applies: which file configures the project
    (pytest.toml, .pytest.toml, pytest.ini, .pytest.ini, pyproject.toml with [tool.pytest] or
    [tool.pytest.ini_options], tox.ini, setup.cfg), the rootdir, ``-c`` and ``--rootdir``,
    ``addopts``, ``PYTEST_ADDOPTS``, ``-o`` in them, the plugins and the initial conftest files.

    pytest has no public function that only finds the configuration: ``determine_setup`` and
    ``_prepareconfig`` are private and changed their signatures between pytest 8 and 9, and a
    ``pytest`` subprocess costs a second interpreter. So this runs :func:`pytest.main` (public)
    with a plugin that takes the parsed Config in ``pytest_cmdline_main`` and ends the run
    there, as ``pytest --help`` and ``pytest --fixtures`` do: no session, no collection, no
    ``pytest_configure``. Raise ConfigError when pytest rejects its configuration (pytest has
    then printed why on stderr, or raised it).
    """
    import os

    import pytest

    from . import plugin

    class Catch:
        config: pytest.Config | None = None

        @pytest.hookimpl(tryfirst=True)
        def pytest_cmdline_main(self, config: pytest.Config) -> pytest.ExitCode:
            if not config.pluginmanager.is_registered(plugin):
                # pytest would not load the plugin here (plugin autoload disabled, or
                # -p no:aikernel): register it now so that its ini keys can be read; its
                # pytest_addoption is historic and runs at once, pytest_configure does not run
                config.pluginmanager.register(plugin, "aikernel-up")
            self.config = config
            return pytest.ExitCode.OK

    # Config-time warnings are not ours to report, and a project's filterwarnings = error would
    # turn one (this package is imported before pytest can rewrite it) into a failure.
    args = ["-p", "no:warnings"]
    if config_file is not None:
        args.append(f"--config-file={config_file}")
    if rootdir is not None:
        args.append(f"--rootdir={rootdir}")
    catch = Catch()
    before = Path.cwd()
    os.chdir(cwd)  # pytest takes the invocation folder from the process
    try:
        code = pytest.main(args, plugins=[catch])
    except Exception as exc:  # pytest reports most errors itself; older ones escape (pytest 7)
        raise ConfigError(
            f"pytest could not read its configuration in {cwd}: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        os.chdir(before)
    if catch.config is None:
        raise ConfigError(
            f"pytest could not read its configuration in {cwd} (exit code {int(code)}; its "
            "message is above)"
        )
    return catch.config


def _settings(args: argparse.Namespace, cwd: Path) -> tuple[Settings, Path]:
    """Settings as pytest would read them from ``cwd``, and the rootdir of the project.

    The options of ``aikernel up`` count as if typed after ``pytest`` on its command line:
    after ``addopts`` and ``PYTEST_ADDOPTS``, so a setting given here replaces theirs and a
    repeatable one adds to theirs. Unknown ``AIKERNEL_*`` variables are warned about on stderr.
    """
    import dataclasses

    config = load_pytest_config(
        cwd, getattr(args, "config_file", None), getattr(args, "rootdir", None)
    )
    raw = raw_sources(config)
    cli = dict(raw.cli)
    for opt in OPTIONS:
        mine = getattr(args, opt.field, None)
        if mine is None:
            continue
        theirs = cli.get(opt.field)
        cli[opt.field] = [*theirs, *mine] if opt.repeatable and isinstance(theirs, list) else mine
    cli["reuse"] = "true"
    cli["mode"] = "docker"
    known = registry_mod.names()
    for message in unknown_env(raw.env, known):
        print(f"aikernel: warning: {message}", file=sys.stderr)
    return resolve(dataclasses.replace(raw, cli=cli), known), config.rootpath


def _progress(event: Any) -> None:
    if event.kind == "ready":
        print(
            f"aikernel: {event.service} ready in {event.elapsed:.2f} s ({event.detail})",
            file=sys.stderr,
        )
    elif event.kind in ("reused", "replaced", "swept"):
        print(f"aikernel: {event.kind} {event.detail}", file=sys.stderr)
    elif event.kind == "note":
        print(f"aikernel: {event.detail}", file=sys.stderr)


def cmd_up(args: argparse.Namespace) -> int:
    from .lease import StartFailed, open_stack

    requested = args.services or list(registry_mod.platform_names())
    registry_mod.check_names(requested, "aikernel up")
    settings, root = _settings(args, Path.cwd())
    began = time.monotonic()
    try:
        stack = open_stack(
            settings,
            registry_mod.closure(requested),
            report=_progress,
            xdist=None,
            rootdir=root,
            fallback=False,
        )
    except StartFailed as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(
        f"aikernel: stack of {', '.join(stack.services)} ready in "
        f"{time.monotonic() - began:.1f} s (session {stack.session_id}); `aikernel down` "
        "removes it",
        file=sys.stderr,
    )
    engine = stack.runtime.engine
    if engine.exposed and not engine.attached:
        print(
            f"aikernel: ports published on {engine.bind}: open to that host's network. "
            + (
                f"Runners on other machines use the exports below ({engine.host})."
                if engine.host not in ("127.0.0.1", "::1")
                else "The exports name 127.0.0.1: on other machines, put this machine's "
                "address in its place (or pass --bind-address with that address)."
            ),
            file=sys.stderr,
        )
    exports = {"AIKERNEL_MODE": "external"}
    for name in stack:
        exports.update(registry_mod.registry()[name].external_exports(stack[name]))
    for key, value in exports.items():
        print(f"export {key}={shlex.quote(value)}")
    stack.stop()  # detaches: the reused stack keeps running
    return 0


def _stacks(client: Any) -> dict[str, list[Any]]:
    from .runtime.docker import LABEL_SESSION

    out: dict[str, list[Any]] = {}
    for container in client.containers.list(
        all=True, ignore_removed=True, filters={"label": [LABEL_SESSION]}
    ):
        out.setdefault(container.labels[LABEL_SESSION], []).append(container)
    return out


def _age(created: str) -> str:
    try:
        stamp = datetime.fromisoformat(created.split(".", maxsplit=1)[0].rstrip("Z")).replace(
            tzinfo=timezone.utc
        )
    except ValueError:
        return "?"
    seconds = int((datetime.now(timezone.utc) - stamp).total_seconds())
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def _kind(container: Any) -> str:
    from .lease import LABEL_REUSE
    from .runtime.docker import LABEL_OWNER, Owner

    if LABEL_REUSE in container.labels:
        return "reused"
    owner = Owner.parse(container.labels.get(LABEL_OWNER, ""))
    if owner is None:
        return "unknown owner"
    state = "dead" if owner.is_dead() else "live"
    return f"{state} session of {owner.describe()}"


def _kube_api(args: argparse.Namespace) -> Any:
    from .runtime.kubernetes import KubernetesRuntime

    return KubernetesRuntime("cli", context=args.kube_context).client


def _kube_kind(annotations: dict[str, str]) -> str:
    from .lease import LABEL_REUSE
    from .runtime.docker import LABEL_OWNER, Owner

    owner = Owner.parse(annotations.get(LABEL_OWNER, ""))
    if owner is None or owner.host == "reuse" or LABEL_REUSE in annotations:
        return "reused"
    return f"{'dead' if owner.is_dead() else 'live'} session of {owner.describe()}"


def _kube_status(args: argparse.Namespace) -> int:
    from .runtime.docker import LABEL_SERVICE
    from .runtime.kubernetes import LABEL_MANAGED, MANAGER

    api = _kube_api(args)
    spaces = api.list_namespace(label_selector=f"{LABEL_MANAGED}={MANAGER}").items
    if not spaces:
        print("no pytest-aikernel stack on this cluster")
        return 0
    for ns in spaces:
        meta = ns.metadata
        gone = " (being deleted)" if meta.deletion_timestamp is not None else ""
        created = meta.creation_timestamp.isoformat() if meta.creation_timestamp else ""
        kind = _kube_kind(dict(meta.annotations or {}))
        print(f"namespace {meta.name}: {kind}, up {_age(created[:19])}{gone}")
        for pod in api.list_namespaced_pod(meta.name).items:
            service = (pod.metadata.labels or {}).get(LABEL_SERVICE, pod.metadata.name)
            print(f"  {service:18s} {pod.status.phase or '?':8s} {pod.status.pod_ip or ''}")
    return 0


def _kube_down(args: argparse.Namespace) -> tuple[int, int]:
    """Delete namespaces of dead sessions (live ones with --all, reused ones with --force):
    (namespaces removed, kept)."""
    from .runtime.kubernetes import LABEL_MANAGED, MANAGER, delete_namespace

    api = _kube_api(args)
    removed = kept = 0
    for ns in api.list_namespace(label_selector=f"{LABEL_MANAGED}={MANAGER}").items:
        meta = ns.metadata
        if meta.deletion_timestamp is not None:
            continue
        kind = _kube_kind(dict(meta.annotations or {}))
        if kind == "reused":
            if not args.force:
                kept += 1
                print(
                    f"kept reused namespace {meta.name}: `aikernel down` in its project, or "
                    "--force",
                    file=sys.stderr,
                )
                continue
        elif not (kind.startswith("dead") or args.all):
            continue
        if delete_namespace(api, str(meta.name)):
            removed += 1
            print(f"removed namespace {meta.name} ({kind})", file=sys.stderr)
    return removed, kept


def _runtime_of(args: argparse.Namespace) -> str:
    import os

    return str(args.runtime or os.environ.get("AIKERNEL_RUNTIME") or "docker").lower()


def cmd_status(args: argparse.Namespace) -> int:
    from .runtime.docker import LABEL_SERVICE, docker_client

    if _runtime_of(args) == "kubernetes":
        return _kube_status(args)

    client = docker_client()
    try:
        stacks = _stacks(client)
        if not stacks:
            print("no pytest-aikernel stack on this engine")
            return 0
        for session, containers in sorted(stacks.items()):
            first = containers[0]
            print(f"session {session}: {_kind(first)}, up {_age(first.attrs.get('Created', ''))}")
            for c in sorted(containers, key=lambda c: c.labels.get(LABEL_SERVICE, "")):
                ports = ", ".join(
                    f"{b[0]['HostIp']}:{b[0]['HostPort']}->{p}"
                    for p, b in (c.attrs["NetworkSettings"]["Ports"] or {}).items()
                    if b
                )
                print(f"  {c.labels.get(LABEL_SERVICE, '?'):18s} {c.status:8s} {ports}")
    finally:
        client.close()
    return 0


def _snapshot_images(client: Any) -> list[Any]:
    from .runtime.docker import LABEL_SNAPSHOT

    return list(client.images.list(filters={"label": LABEL_SNAPSHOT}))


def _in_use(client: Any, image: Any) -> list[str]:
    """Names of the containers that run from ``image``."""
    return [
        c.name
        for c in client.containers.list(all=True, ignore_removed=True)
        if c.attrs.get("Image") == image.id
    ]


#: seconds export, prune and down --snapshots wait for snapshot builds still running
BUILD_WAIT = 300.0


def wait_for_snapshot_builds(what: str) -> list[str]:
    """Wait for the snapshots being made after earlier sessions on this machine (their
    detached builders): what ``what`` does should see their images. Messages for those still
    running after BUILD_WAIT."""
    from .runtime.snapbuild import wait_for_builds

    def told(name: str) -> None:
        print(f"{what}: waiting for the snapshot being made ({name})", file=sys.stderr)

    held = wait_for_builds(BUILD_WAIT, told)
    return [
        f"{what}: a snapshot build ({name}) still runs after {BUILD_WAIT:.0f} s; its image "
        "may appear later"
        for name in held
    ]


def remove_snapshots(client: Any) -> tuple[list[str], list[str]]:
    """Remove every snapshot image that no container uses (once the builds running on this
    machine ended): (removed tags, kept messages)."""
    removed: list[str] = []
    kept: list[str] = wait_for_snapshot_builds("removing snapshots")
    for image in _snapshot_images(client):
        tags = image.tags or [image.short_id]
        users = _in_use(client, image)
        if users:
            kept.append(f"kept snapshot {tags[0]}: in use by {', '.join(users)}")
            continue
        try:
            client.images.remove(image.id, force=True)
        except Exception as exc:
            kept.append(f"kept snapshot {tags[0]}: {exc}")
            continue
        removed.extend(tags)
    return removed, kept


def remove_cache_volumes(client: Any) -> tuple[list[str], list[str]]:
    """Remove the cache volumes (JVM class-data archives, kept per image) that no container
    mounts: (removed names, kept messages)."""
    from .runtime.docker import LABEL_CACHE

    removed: list[str] = []
    kept: list[str] = []
    mounted = {
        mount.get("Name")
        for c in client.containers.list(all=True, ignore_removed=True)
        for mount in c.attrs.get("Mounts") or []
    }
    for volume in client.volumes.list(filters={"label": LABEL_CACHE}):
        if volume.name in mounted:
            kept.append(f"kept cache volume {volume.name}: a container mounts it")
            continue
        try:
            volume.remove()
        except Exception as exc:
            kept.append(f"kept cache volume {volume.name}: {exc}")
            continue
        removed.append(volume.name)
    return removed, kept


#: an exported cache volume: ``cache-<volume name>.tar`` holds its files, the ``.json`` beside
#: it its labels (the image the volume belongs to)
CACHE_EXPORT_PREFIX = "cache-"
#: where a cache volume is mounted in the container that copies it
CACHE_MOUNT = "/aikernel-cache"


def _with_volume(client: Any, image: str, volume: str, path: str, work: Any) -> Any:
    """Run ``work(container)`` on a created (never started) container of ``image`` that mounts
    ``volume`` on ``path``; the container is removed afterwards, with the anonymous volumes the
    engine made for the image's other ``VOLUME`` paths (``volume`` is named: the engine keeps
    it)."""
    from docker.types import Mount

    container = client.containers.create(
        image,
        command=["true"],
        mounts=[Mount(target=path, source=volume, type="volume")],
        labels={"pytest-aikernel.cache-copy": volume},
    )
    try:
        return work(container)
    finally:
        container.remove(force=True, v=True)


def export_cache_volumes(client: Any, folder: Path) -> int:
    """Write each cache volume whose image is here into ``folder``; the number written."""
    import json

    from .runtime.docker import LABEL_CACHE, LABEL_CACHE_IMAGE

    count = 0
    for volume in client.volumes.list(filters={"label": LABEL_CACHE}):
        labels = volume.attrs.get("Labels") or {}
        image = labels.get(LABEL_CACHE_IMAGE, "")
        try:
            client.images.get(image)
        except Exception:
            print(
                f"skipped cache volume {volume.name}: its image {image[:19]} is gone",
                file=sys.stderr,
            )
            continue
        target = folder / f"{CACHE_EXPORT_PREFIX}{volume.name}.tar"

        def save(container: Any, target: Path = target) -> None:
            stream, _ = container.get_archive(f"{CACHE_MOUNT}/.")
            with open(target, "wb") as fh:
                for chunk in stream:
                    fh.write(chunk)

        _with_volume(client, image, volume.name, CACHE_MOUNT, save)
        target.with_suffix(".json").write_text(json.dumps(labels, indent=1), encoding="utf-8")
        print(f"exported cache volume {volume.name} to {target}", file=sys.stderr)
        count += 1
    return count


def import_cache_volumes(client: Any, folder: Path) -> int:
    """Make the cache volumes exported into ``folder`` whose image is here; the number made."""
    import json

    from .runtime.docker import LABEL_CACHE, LABEL_CACHE_IMAGE

    count = 0
    for tar in sorted(folder.glob(f"{CACHE_EXPORT_PREFIX}*.tar")):
        name = tar.stem[len(CACHE_EXPORT_PREFIX) :]
        try:
            labels = json.loads(tar.with_suffix(".json").read_text(encoding="utf-8"))
            image = str(labels[LABEL_CACHE_IMAGE])
            str(labels[LABEL_CACHE])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(
                f"{tar}: skipped: no readable {tar.with_suffix('.json').name} ({exc})",
                file=sys.stderr,
            )
            continue
        try:
            client.images.get(image)
        except Exception:
            print(f"{tar}: skipped: its image {image[:19]} is not in this engine", file=sys.stderr)
            continue
        try:
            client.volumes.get(name)
        except Exception:
            pass
        else:  # a running JVM may map its archive: never written over
            print(f"{tar}: skipped: the cache volume {name} exists", file=sys.stderr)
            continue
        client.volumes.create(name=name, labels=labels)
        data = tar.read_bytes()
        _with_volume(
            client, image, name, CACHE_MOUNT, lambda c, d=data: c.put_archive(CACHE_MOUNT, d)
        )
        print(f"imported cache volume {name} from {tar}", file=sys.stderr)
        count += 1
    return count


def cmd_snapshots(args: argparse.Namespace) -> int:
    """List, export, import or remove the snapshot images of this engine."""
    from .runtime.docker import (
        LABEL_CACHE,
        LABEL_CACHE_IMAGE,
        LABEL_SNAPSHOT,
        LABEL_SNAPSHOT_KEY,
        docker_client,
    )

    client = docker_client()
    try:
        if args.action == "list":
            for image in _snapshot_images(client):
                labels = image.labels or {}
                size = image.attrs.get("Size", 0) / 1e6
                print(
                    f"{(image.tags or [image.short_id])[0]}\t{labels.get(LABEL_SNAPSHOT)}\t"
                    f"key {labels.get(LABEL_SNAPSHOT_KEY)}\t{size:.0f} MB\t"
                    f"{image.attrs.get('Created', '')[:19]}"
                )
            from .runtime.snapbuild import build_states

            for service, key, state in build_states():
                print(f"(build on this machine)\t{service}\tkey {key}\t{state}")
            for volume in client.volumes.list(filters={"label": LABEL_CACHE}):
                labels = volume.attrs.get("Labels") or {}
                print(
                    f"{volume.name}\tcache {labels.get(LABEL_CACHE)}\t"
                    f"image {labels.get(LABEL_CACHE_IMAGE, '?')[:19]}\tvolume\t"
                    f"{volume.attrs.get('CreatedAt', '')[:19]}"
                )
            return 0
        if args.action == "prune":
            removed, kept = remove_snapshots(client)
            volumes, kept_volumes = remove_cache_volumes(client)
            for line in [*kept, *kept_volumes]:
                print(line, file=sys.stderr)
            print(
                f"removed {len(removed)} snapshot image(s) and {len(volumes)} cache volume(s)",
                file=sys.stderr,
            )
            return 0
        folder = Path(args.folder)
        if args.action == "export":
            folder.mkdir(parents=True, exist_ok=True)
            for line in wait_for_snapshot_builds("aikernel snapshots export"):
                print(line, file=sys.stderr)
            count = 0
            for image in _snapshot_images(client):
                for tag in image.tags:
                    target = folder / (tag.replace("/", "_").replace(":", "-") + ".tar")
                    with open(target, "wb") as fh:
                        for chunk in image.save(named=True):
                            fh.write(chunk)
                    print(f"exported {tag} to {target}", file=sys.stderr)
                    count += 1
            exported = export_cache_volumes(client, folder)
            print(
                f"exported {count} snapshot image(s) and {exported} cache volume(s) to {folder}",
                file=sys.stderr,
            )
            return 0
        if args.action == "import":
            tars = [
                t
                for t in sorted(folder.glob("*.tar"))
                if not t.name.startswith(CACHE_EXPORT_PREFIX)
            ]
            imported = import_cache_volumes(client, folder)
            if not tars and not imported:
                raise ConfigError(f"aikernel snapshots import: no .tar files in {folder}")
            for tar in tars:
                with open(tar, "rb") as fh:
                    images = client.images.load(fh)
                for image in images:
                    if LABEL_SNAPSHOT not in (image.labels or {}):
                        print(
                            f"{tar}: {', '.join(image.tags)} is not a pytest-aikernel snapshot "
                            "(loaded anyway; it will not be used)",
                            file=sys.stderr,
                        )
                    else:
                        print(f"imported {', '.join(image.tags)} from {tar}", file=sys.stderr)
            return 0
    finally:
        client.close()
    return 2


def cmd_down(args: argparse.Namespace) -> int:
    """Reused stacks (services no live run holds; all with --force), dead sessions' leftovers,
    and live sessions' stacks with --all."""
    from .lease import LABEL_PROJECT, LABEL_REUSE, cache_dir, remove_reused
    from .runtime.docker import LABEL_OWNER, LABEL_SESSION, Owner, docker_client, remove_by_labels

    removed = 0
    kept = 0
    ours: set[str] = set()
    for folder in sorted((cache_dir() / "reuse").glob("*")):
        if not folder.is_dir():
            continue
        ours.add(folder.name)
        gone, held = remove_reused(folder, force=args.force)
        removed += len(gone)
        if gone:
            print(f"removed reused {', '.join(gone)} (project {folder.name})", file=sys.stderr)
        for service, holders in sorted(held.items()):
            kept += 1
            print(
                f"kept reused {service} (project {folder.name}): in use by {', '.join(holders)}; "
                "`aikernel down --force` removes it anyway",
                file=sys.stderr,
            )
        _remove_empty(folder)
    if _runtime_of(args) == "kubernetes":
        gone_ns, kept_ns = _kube_down(args)
        print(
            f"aikernel: removed {removed} reused services and {gone_ns} namespaces"
            + (f", kept {kept + kept_ns} in use" if kept + kept_ns else ""),
            file=sys.stderr,
        )
        return 0
    client = docker_client()
    try:
        if args.snapshots:
            gone_images, kept_images = remove_snapshots(client)
            for line in kept_images:
                print(line, file=sys.stderr)
            if gone_images:
                print(f"removed snapshots {', '.join(gone_images)}", file=sys.stderr)
            gone_volumes, kept_volumes = remove_cache_volumes(client)
            for line in kept_volumes:
                print(line, file=sys.stderr)
            if gone_volumes:
                print(f"removed cache volumes {', '.join(gone_volumes)}", file=sys.stderr)
        for session, containers in sorted(_stacks(client).items()):
            labels = containers[0].labels
            if LABEL_REUSE in labels:
                project = labels.get(LABEL_PROJECT, "")
                if project in ours and not args.force:
                    continue  # governed by its project's leases, above
                if not args.force:
                    kept += len(containers)
                    print(
                        f"kept reused session {session}: its project ({project or '?'}) has no "
                        "state in this cache folder (another machine or user?); --force removes "
                        "it",
                        file=sys.stderr,
                    )
                    continue
                why = "reused, --force"
            else:
                owner = Owner.parse(labels.get(LABEL_OWNER, ""))
                dead = owner is not None and owner.is_dead()
                if not (dead or args.all):
                    continue
                why = "dead" if dead else "live, --all"
            count = remove_by_labels(client, {LABEL_SESSION: session})
            removed += count
            print(f"removed session {session} ({why}): {count} containers", file=sys.stderr)
    finally:
        client.close()
    print(
        f"aikernel: removed {removed} containers" + (f", kept {kept} in use" if kept else ""),
        file=sys.stderr,
    )
    return 0


def _remove_empty(folder: Path) -> None:
    """Remove the project folder's empty lease folders, and the folder itself once it holds
    nothing but its lock file."""
    import contextlib

    from .shared import LOCK, STATE

    for leases in sorted(folder.glob("leases/*"), reverse=True):
        with contextlib.suppress(OSError):
            leases.rmdir()
    with contextlib.suppress(OSError):
        (folder / "leases").rmdir()
    if not (folder / STATE).exists() and [p.name for p in folder.iterdir()] == [LOCK]:
        with contextlib.suppress(OSError):
            (folder / LOCK).unlink()
            folder.rmdir()


def _add_runtime(parser: argparse.ArgumentParser) -> None:
    import os

    parser.add_argument(
        "--runtime",
        choices=("docker", "kubernetes"),
        default=None,
        help="the stacks of the Docker engine or of a Kubernetes cluster (default: env "
        "AIKERNEL_RUNTIME, else docker)",
    )
    parser.add_argument(
        "--kube-context",
        default=os.environ.get("AIKERNEL_KUBE_CONTEXT") or None,
        metavar="NAME",
        help="the kubeconfig context (default: env AIKERNEL_KUBE_CONTEXT, else the current one)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="aikernel", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    every = registry_mod.platform_names()
    up = sub.add_parser(
        "up",
        help="start (or reuse) a stack and print env exports for external mode",
        description="Start and seed a stack (kept running, reused while its settings do not "
        "change) and print `export` lines that point `pytest --aikernel-mode external` at it.",
    )
    up.add_argument(
        "services",
        nargs="*",
        metavar="SERVICE",
        help=f"services to start (default: {', '.join(every)}); helpers only when named: "
        + ", ".join(n for n in registry_mod.names() if n not in every),
    )
    up.add_argument(
        "-c",
        "--config-file",
        dest="config_file",
        metavar="FILE",
        help="pytest's configuration file, as `pytest -c FILE` (default: the one pytest finds "
        "from the current folder)",
    )
    up.add_argument(
        "--rootdir",
        metavar="DIR",
        help="the project's rootdir, as `pytest --rootdir DIR` (default: the one pytest "
        "finds); it identifies the reused stack that `pytest --aikernel-reuse` shares",
    )
    _add_settings(up)
    up.set_defaults(func=cmd_up)
    status = sub.add_parser(
        "status",
        help="list the stacks on this engine",
        description="List pytest-aikernel stacks: services, ports, age.",
    )
    _add_runtime(status)
    status.set_defaults(func=cmd_status)
    down = sub.add_parser(
        "down",
        help="remove reused stacks and leftovers of dead sessions",
        description="Remove reused stacks and the containers of sessions whose process is dead. "
        "Reused services that a running pytest holds stay unless --force is given; stacks of "
        "running sessions stay unless --all is given.",
    )
    down.add_argument("--all", action="store_true", help="also remove stacks of live sessions")
    down.add_argument(
        "--force",
        action="store_true",
        help="also remove reused services that a running process holds, and reused stacks of "
        "projects this cache folder does not know",
    )
    down.add_argument(
        "--snapshots",
        action="store_true",
        help="also remove the snapshot images and the JVM class-data cache volumes (those no "
        "container uses)",
    )
    _add_runtime(down)
    down.set_defaults(func=cmd_down)
    snaps = sub.add_parser(
        "snapshots",
        help="list, export, import or remove snapshot images",
        description="Snapshot images hold a seeded service (docs/snapshots.md). export/import "
        "carry them between CI jobs as one tarball per image (e.g. in a CI cache folder).",
    )
    snaps.add_argument("action", choices=("list", "export", "import", "prune"))
    snaps.add_argument("folder", nargs="?", default=".", help="folder for export/import")
    snaps.set_defaults(func=cmd_snapshots)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except AikernelError as exc:
        print(f"aikernel: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `aikernel status | head`: the reader left; nothing is wrong
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
