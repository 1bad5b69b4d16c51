"""Reuse keys, owners of stacks and the aikernel command, without a Docker engine."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_aikernel import services as registry_mod
from pytest_aikernel.lease import service_keys
from pytest_aikernel.runtime.docker import Owner
from pytest_aikernel.settings import InitFile, Settings
from pytest_aikernel.shared import locked, read_state, write_state


def test_reuse_keys_are_per_service_and_change_with_what_shapes_it(tmp_path: Path) -> None:
    sql = tmp_path / "a.sql"
    sql.write_text("SELECT 1;")
    base = Settings(postgres_init=(InitFile(sql),))
    keys = service_keys(base, ["postgres-replica", "redis"])
    assert set(keys) == {"postgres", "postgres-replica", "redis"}
    assert keys == service_keys(base, ["postgres-replica", "redis"]), "stable"
    assert service_keys(base, ["postgres"])["postgres"] == keys["postgres"], "any subset"
    assert service_keys(dataclasses.replace(base, startup_timeout=5), ["postgres"]) == {
        "postgres": keys["postgres"]
    }, "lifecycle settings shape nothing"
    other_image = service_keys(
        dataclasses.replace(base, images={"postgres": "x:1"}), ["postgres-replica", "redis"]
    )
    assert other_image["postgres"] != keys["postgres"]
    assert other_image["postgres-replica"] != keys["postgres-replica"], "dependents follow"
    assert other_image["redis"] == keys["redis"], "unrelated services keep their key"
    heap = service_keys(dataclasses.replace(base, neo4j_heap="1g"), ["postgres", "neo4j"])
    assert heap["postgres"] == keys["postgres"], "the Neo4j heap does not restart Postgres"
    assert heap["neo4j"] != service_keys(base, ["neo4j"])["neo4j"]
    sql.write_text("SELECT 2;")
    assert service_keys(base, ["postgres"])["postgres"] != keys["postgres"], "file contents count"


def test_every_setting_a_service_module_reads_shapes_its_key() -> None:
    """A service module that reads ``settings.X`` must list X in ``shaped_by`` of one of its
    services, or a changed X would silently keep a stale reused container."""
    import inspect
    import re

    from pytest_aikernel.settings import Settings as S

    lifecycle = {"images", "sources", "startup_timeout", "mode", "reuse", "seed_external"}
    fields = {f.name for f in dataclasses.fields(S)} - lifecycle
    by_module: dict[str, set[str]] = {}
    for svc in registry_mod.registry().values():
        by_module.setdefault(type(svc).__module__, set()).update(svc.shaped_by)
    for module_name, shaped in by_module.items():
        source = inspect.getsource(sys.modules[module_name])
        read = set(re.findall(r"settings\.([a-z_]+)", source)) & fields
        assert read <= shaped, f"{module_name} reads {sorted(read - shaped)} but no key has it"


def test_owner_of_a_dead_process_is_dead() -> None:
    me = Owner.current()
    assert Owner.parse(me.label()) == me
    assert not me.is_dead()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    gone = dataclasses.replace(me, pid=child.pid, start="1")
    assert gone.is_dead()
    assert not dataclasses.replace(gone, host="another-host").is_dead()
    assert not dataclasses.replace(gone, boot="0" * 16).is_dead(), "another boot: unprovable"
    assert not dataclasses.replace(gone, pidns="1").is_dead(), "another pid namespace"
    assert not dataclasses.replace(gone, start="").is_dead(), "no start time: unprovable"
    reuse = Owner.parse("reuse::::0:")
    assert reuse is not None
    assert not reuse.is_dead(), "reused stacks are never swept"
    assert Owner.parse("host:123:456") is None, "an old three-part owner is never judged"
    assert Owner.parse("garbage") is None


def test_state_file_is_private_and_atomic(tmp_path: Path) -> None:
    with locked(tmp_path):
        write_state(tmp_path, {"session_id": "abc", "secrets": {"x": "y"}})
    assert read_state(tmp_path) == {"session_id": "abc", "secrets": {"x": "y"}}
    assert oct(os.stat(tmp_path / "stack.json").st_mode & 0o777) == "0o600"
    assert read_state(tmp_path / "missing") is None


@pytest.mark.parametrize("command", [[], ["up"], ["status"], ["down"]])
def test_aikernel_command_help(command: list[str]) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pytest_aikernel", *command, "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "usage: aikernel" in out
    if command == ["up"]:
        assert "--aikernel-image" in out and "--aikernel-postgres-init" in out


@pytest.mark.parametrize(
    ("args", "helper"), [([], False), (["toxiproxy"], True)], ids=["no names", "toxiproxy named"]
)
def test_aikernel_up_starts_the_thirteen_unless_a_helper_is_named(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    helper: bool,
) -> None:
    from pytest_aikernel import lease
    from pytest_aikernel.cli import main
    from pytest_aikernel.services import platform_names

    asked: list[list[str]] = []

    def refuse(settings: object, services: list[str], **_kw: object) -> None:
        asked.append(list(services))
        raise lease.StartFailed("not started (test)")

    monkeypatch.setattr(lease, "open_stack", refuse)
    monkeypatch.chdir(tmp_path)
    assert main(["up", *args]) == 1
    assert "not started (test)" in capsys.readouterr().err
    if helper:
        assert asked == [["toxiproxy"]]
    else:
        assert set(asked[0]) == set(platform_names())
        assert "toxiproxy" not in asked[0]


def test_aikernel_without_engine_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest_aikernel", "status"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "no Docker engine answered at unix:///nonexistent" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("layout", ["pyproject", "pytest.ini", "tox.ini", "setup.cfg"])
def test_aikernel_up_reads_the_project_ini_as_pytest_does(tmp_path: Path, layout: str) -> None:
    import argparse

    from pytest_aikernel.cli import _settings

    (tmp_path / "db").mkdir()
    (tmp_path / "db" / "a.sql").write_text("SELECT 1;")
    if layout == "pyproject":
        (tmp_path / "pyproject.toml").write_text(
            "[tool.pytest.ini_options]\n"
            'aikernel_postgres_init = ["db/a.sql", "aikernel_audit:db/a.sql"]\n'
            'aikernel_images = "redis=my/redis:7"\n'
            'aikernel_startup_timeout = "33"\n'
        )
    else:
        section = "tool:pytest" if layout == "setup.cfg" else "pytest"
        (tmp_path / layout).write_text(
            f"[{section}]\naikernel_postgres_init =\n    db/a.sql\n    aikernel_audit:db/a.sql\n"
            "aikernel_images = redis=my/redis:7\naikernel_startup_timeout = 33\n"
        )
    sub = tmp_path / "tests" / "deep"
    sub.mkdir(parents=True)
    settings, root = _settings(argparse.Namespace(), sub)
    assert root == tmp_path
    assert [(f.path, f.database) for f in settings.postgres_init] == [
        (tmp_path / "db" / "a.sql", "aikernel_catalog"),
        (tmp_path / "db" / "a.sql", "aikernel_audit"),
    ]
    assert settings.images == {"redis": "my/redis:7"}
    assert settings.startup_timeout == 33
    assert settings.reuse
