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
from typing import Any

from . import services as registry_mod
from .errors import AikernelError
from .settings import OPTIONS, RawSources, resolve


def _add_settings(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("settings (as for pytest; AIKERNEL_* env vars apply too)")
    for opt in OPTIONS:
        if opt.field in ("reuse", "mode", "docker_missing", "seed_external"):
            continue
        if opt.repeatable:
            group.add_argument(
                opt.cli, dest=opt.field, action="append", metavar=opt.metavar, help=opt.help
            )
        else:
            group.add_argument(opt.cli, dest=opt.field, metavar=opt.metavar, help=opt.help)


def find_ini(start: Path) -> tuple[Path | None, dict[str, str | list[str]]]:
    """The pytest configuration file pytest would use from ``start``, and its aikernel_* keys.

    Looked for upwards as pytest does: pytest.ini, pyproject.toml with [tool.pytest.ini_options],
    tox.ini with [pytest], setup.cfg with [tool:pytest]; the first file that has the section wins.
    """
    import configparser

    for folder in (start, *start.parents):
        for name, section in (
            ("pytest.ini", "pytest"),
            ("pyproject.toml", ""),
            ("tox.ini", "pytest"),
            ("setup.cfg", "tool:pytest"),
        ):
            path = folder / name
            if not path.is_file():
                continue
            if name == "pyproject.toml":
                if sys.version_info >= (3, 11):
                    import tomllib
                else:  # pragma: no cover - pytest depends on tomli there
                    import tomli as tomllib  # type: ignore[no-redef, import-not-found, unused-ignore]
                data = tomllib.loads(path.read_text(encoding="utf-8"))
                table = data.get("tool", {}).get("pytest", {}).get("ini_options")
                if table is None:
                    continue
                values = {k: v for k, v in table.items() if k.startswith("aikernel_")}
                return path, values
            parser = configparser.ConfigParser(interpolation=None)
            parser.read(path, encoding="utf-8")
            if name == "pytest.ini" or parser.has_section(section):
                if not parser.has_section(section):
                    return path, {}
                return path, {k: v for k, v in parser.items(section) if k.startswith("aikernel_")}
    return None, {}


def _settings(args: argparse.Namespace, cwd: Path) -> tuple[Any, Path]:
    """Settings as pytest would read them from ``cwd``, and the rootdir of the project."""
    import os

    inipath, values = find_ini(cwd)
    cli = {opt.field: getattr(args, opt.field, None) for opt in OPTIONS}
    cli["reuse"] = "true"
    cli["mode"] = "docker"
    ini: dict[str, str | list[str] | None] = {}
    for opt in OPTIONS:
        value = values.get(opt.ini)
        if value is None:
            continue
        if opt.repeatable and isinstance(value, str):
            value = [line for line in value.splitlines() if line.strip()]
        ini[opt.field] = value if isinstance(value, (str, list)) else str(value).lower()
    root = inipath.parent if inipath else cwd
    raw = RawSources(
        cli=cli,
        ini=ini,
        env=dict(os.environ),
        ini_dir=root,
        cwd=cwd,
        inipath=str(inipath) if inipath else "ini file",
    )
    return resolve(raw, registry_mod.names()), root


def _progress(event: Any) -> None:
    if event.kind == "ready":
        print(
            f"aikernel: {event.service} ready in {event.elapsed:.2f} s ({event.detail})",
            file=sys.stderr,
        )
    elif event.kind in ("reused", "replaced", "swept"):
        print(f"aikernel: {event.kind} {event.detail}", file=sys.stderr)


def cmd_up(args: argparse.Namespace) -> int:
    from .session import StartFailed, open_stack

    requested = args.services or list(registry_mod.names())
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
    for container in client.containers.list(all=True, filters={"label": [LABEL_SESSION]}):
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
    from .runtime.docker import LABEL_OWNER, Owner
    from .session import LABEL_REUSE

    if LABEL_REUSE in container.labels:
        return f"reused (key {container.labels[LABEL_REUSE]})"
    owner = Owner.parse(container.labels.get(LABEL_OWNER, ""))
    if owner is None:
        return "unknown owner"
    state = "dead" if owner.is_dead() else "live"
    return f"{state} session of pid {owner.pid} on {owner.host}"


def cmd_status(args: argparse.Namespace) -> int:
    from .runtime.docker import LABEL_SERVICE, docker_client

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


def cmd_down(args: argparse.Namespace) -> int:
    from .runtime.docker import LABEL_OWNER, LABEL_SESSION, Owner, docker_client, remove_by_labels
    from .session import LABEL_REUSE, cache_dir
    from .shared import clear_state

    client = docker_client()
    removed = 0
    try:
        for session, containers in sorted(_stacks(client).items()):
            labels = containers[0].labels
            owner = Owner.parse(labels.get(LABEL_OWNER, ""))
            reused = LABEL_REUSE in labels
            dead = owner is not None and owner.is_dead()
            if reused or dead or args.all:
                count = remove_by_labels(client, {LABEL_SESSION: session})
                removed += count
                why = "reused" if reused else ("dead" if dead else "live, --all")
                print(f"removed session {session} ({why}): {count} containers", file=sys.stderr)
        for state_dir in (cache_dir() / "reuse").glob("*"):
            clear_state(state_dir)
    finally:
        client.close()
    print(f"aikernel: removed {removed} containers", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="aikernel", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
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
        help=f"services to start (default: all): {', '.join(registry_mod.names())}",
    )
    _add_settings(up)
    up.set_defaults(func=cmd_up)
    status = sub.add_parser(
        "status",
        help="list the stacks on this engine",
        description="List pytest-aikernel stacks: services, ports, age.",
    )
    status.set_defaults(func=cmd_status)
    down = sub.add_parser(
        "down",
        help="remove reused stacks and leftovers of dead sessions",
        description="Remove reused stacks and the containers of sessions whose process is dead. "
        "Stacks of running sessions stay unless --all is given.",
    )
    down.add_argument("--all", action="store_true", help="also remove stacks of live sessions")
    down.set_defaults(func=cmd_down)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except AikernelError as exc:
        print(f"aikernel: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
