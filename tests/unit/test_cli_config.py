"""`aikernel up` reads pytest's configuration as pytest does: files, rootdir, -c, --rootdir.

Each layout is checked twice: against the rootdir and configuration file pytest itself reports
for the same folder and arguments (``pytester.parseconfig``), and against the value written
here, so that a change in pytest's rules shows up as a failing test rather than as a different
reuse identity.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from pytest_aikernel.cli import _settings, load_pytest_config, main
from pytest_aikernel.errors import ConfigError

PYTEST_VERSION = tuple(int(p) for p in pytest.__version__.split(".")[:2])
PYTEST_9 = PYTEST_VERSION >= (9, 0)
needs_pytest_9 = pytest.mark.skipif(
    not PYTEST_9, reason="pytest.toml and [tool.pytest] are pytest 9"
)

#: file name -> its text with aikernel_startup_timeout = 33, in each format pytest reads
LAYOUTS = {
    "pytest.toml": '[pytest]\naikernel_startup_timeout = "33"\n',
    ".pytest.toml": '[pytest]\naikernel_startup_timeout = "33"\n',
    "pyproject.toml": '[tool.pytest.ini_options]\naikernel_startup_timeout = "33"\n',
    "pyproject.toml (native)": '[tool.pytest]\naikernel_startup_timeout = "33"\n',
    "pytest.ini": "[pytest]\naikernel_startup_timeout = 33\n",
    ".pytest.ini": "[pytest]\naikernel_startup_timeout = 33\n",
    "tox.ini": "[pytest]\naikernel_startup_timeout = 33\n",
    "setup.cfg": "[tool:pytest]\naikernel_startup_timeout = 33\n",
}
#: read by pytest 9 (.pytest.ini: by some 8.x too)
NEW_IN_9 = {"pytest.toml", ".pytest.toml", "pyproject.toml (native)", ".pytest.ini"}


def ns(**kwargs: object) -> argparse.Namespace:
    return argparse.Namespace(**kwargs)


def same_as_pytest(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, cwd: Path, *args: str
) -> pytest.Config:
    """Our Config for ``cwd`` and ``args`` (-c/--rootdir), checked against pytest's own."""
    config_file = rootdir = None
    for arg in args:
        key, _, value = arg.partition("=")
        if key == "--config-file":
            config_file = value
        elif key == "--rootdir":
            rootdir = value
    ours = load_pytest_config(cwd, config_file, rootdir)
    monkeypatch.chdir(cwd)
    theirs = pytester.parseconfig(*args)
    assert (ours.rootpath, ours.inipath) == (theirs.rootpath, theirs.inipath)
    return ours


@pytest.mark.parametrize(
    "layout",
    [pytest.param(k, marks=needs_pytest_9) if k in NEW_IN_9 else k for k in LAYOUTS],
)
def test_each_config_file_kind_from_a_subfolder(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, layout: str
) -> None:
    root = pytester.path
    name = layout.removesuffix(" (native)")
    (root / name).write_text(LAYOUTS[layout])
    sub = root / "tests" / "deep"
    sub.mkdir(parents=True)
    config = same_as_pytest(pytester, monkeypatch, sub)
    assert config.rootpath == root
    assert config.inipath == root / name
    settings, rootdir = _settings(ns(), sub)
    assert rootdir == root
    assert settings.startup_timeout == 33
    assert settings.source_of("startup_timeout") == (
        f"ini aikernel_startup_timeout ({root / name})"
    )


def test_pytest_ini_wins_over_pyproject_in_the_same_folder(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = pytester.path
    (root / "pyproject.toml").write_text(LAYOUTS["pyproject.toml"])
    (root / "pytest.ini").write_text("[pytest]\naikernel_startup_timeout = 44\n")
    config = same_as_pytest(pytester, monkeypatch, root)
    assert config.inipath == root / "pytest.ini"
    assert _settings(ns(), root)[0].startup_timeout == 44


def test_files_without_a_pytest_section_are_passed_over(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tox.ini without [pytest] and setup.cfg without [tool:pytest] below a pytest.ini."""
    root = pytester.path
    (root / "pytest.ini").write_text("[pytest]\naikernel_startup_timeout = 33\n")
    sub = root / "pkg"
    sub.mkdir()
    (sub / "tox.ini").write_text("[tox]\nenvlist = py\n")
    (sub / "setup.cfg").write_text("[metadata]\nname = pkg\n")
    config = same_as_pytest(pytester, monkeypatch, sub)
    assert (config.rootpath, config.inipath) == (root, root / "pytest.ini")


def test_pyproject_without_pytest_table_still_roots_the_project(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = pytester.path
    (root / "pyproject.toml").write_text('[project]\nname = "x"\n')
    sub = root / "tests"
    sub.mkdir()
    config = same_as_pytest(pytester, monkeypatch, sub)
    if PYTEST_VERSION >= (8, 1):  # before, such a file did not count
        assert (config.rootpath, config.inipath) == (root, root / "pyproject.toml")
    assert _settings(ns(), sub)[0].startup_timeout == 120


def test_no_config_file_roots_at_the_current_folder(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = pytester.path / "work"
    sub.mkdir()
    config = same_as_pytest(pytester, monkeypatch, sub)
    assert config.inipath is None
    assert config.rootpath == sub


def test_config_file_option(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    root = pytester.path
    (root / "pytest.ini").write_text("[pytest]\naikernel_startup_timeout = 33\n")
    (root / "ci").mkdir()
    (root / "ci" / "pytest-ci.ini").write_text("[pytest]\naikernel_startup_timeout = 55\n")
    config = same_as_pytest(pytester, monkeypatch, root, "--config-file=ci/pytest-ci.ini")
    assert (config.rootpath, config.inipath) == (root / "ci", root / "ci" / "pytest-ci.ini")
    settings, rootdir = _settings(ns(config_file="ci/pytest-ci.ini"), root)
    assert settings.startup_timeout == 55
    assert rootdir == root / "ci"


def test_rootdir_option(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    root = pytester.path
    (root / "pytest.ini").write_text("[pytest]\naikernel_startup_timeout = 33\n")
    (root / "elsewhere").mkdir()
    config = same_as_pytest(pytester, monkeypatch, root, "--rootdir=elsewhere")
    assert (config.rootpath, config.inipath) == (root / "elsewhere", root / "pytest.ini")
    settings, rootdir = _settings(ns(rootdir="elsewhere"), root)
    assert rootdir == root / "elsewhere"
    assert settings.startup_timeout == 33  # the ini file is still the one found from the cwd


def test_config_file_and_rootdir_together(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = pytester.path
    (root / "a.ini").write_text("[pytest]\naikernel_startup_timeout = 12\n")
    (root / "r").mkdir()
    config = same_as_pytest(pytester, monkeypatch, root, "--config-file=a.ini", "--rootdir=r")
    assert (config.rootpath, config.inipath) == (root / "r", root / "a.ini")


def test_bad_config_file_is_a_config_error(pytester: pytest.Pytester) -> None:
    with pytest.raises(ConfigError, match="pytest could not read its configuration"):
        load_pytest_config(pytester.path, config_file="missing.ini")


def test_up_takes_config_file_and_rootdir(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["up", "--help"])
    out = capsys.readouterr().out
    assert "-c FILE, --config-file FILE" in out
    assert "--rootdir DIR" in out


# ---- settings through pytest's configuration -----------------------------------------------------


def test_up_options_come_after_addopts(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As if typed after `pytest`: a scalar replaces the addopts value, a list adds to it."""
    root = pytester.path
    (root / "pytest.ini").write_text(
        "[pytest]\naddopts = --aikernel-startup-timeout=8 --aikernel-kafka-topic=a\n"
        "aikernel_neo4j_heap = 1g\n"
    )
    settings, _ = _settings(ns(), root)
    assert settings.startup_timeout == 8
    assert [t.name for t in settings.kafka_topics] == ["a"]
    settings, _ = _settings(ns(startup_timeout="9", kafka_topics=["b"]), root)
    assert settings.startup_timeout == 9
    assert [t.name for t in settings.kafka_topics] == ["a", "b"]
    assert settings.reuse
    assert settings.mode == "docker"


def test_up_env_beats_ini_and_cli_beats_env(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = pytester.path
    (root / "pytest.ini").write_text(
        "[pytest]\naikernel_startup_timeout = 33\naikernel_images = redis=ini/redis:1\n"
    )
    monkeypatch.setenv("AIKERNEL_STARTUP_TIMEOUT", "44")
    monkeypatch.setenv("AIKERNEL_IMAGE_REDIS", "env/redis:1")
    settings, _ = _settings(ns(), root)
    assert settings.startup_timeout == 44
    assert settings.images == {"redis": "env/redis:1"}
    settings, _ = _settings(ns(startup_timeout="55", images=["redis=cli/redis:1"]), root)
    assert settings.startup_timeout == 55
    assert settings.images == {"redis": "cli/redis:1"}


def test_up_names_override_in_pytest_addopts(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    (pytester.path / "pytest.ini").write_text("[pytest]\naikernel_startup_timeout = 3\n")
    monkeypatch.setenv("PYTEST_ADDOPTS", "-o aikernel_startup_timeout=soon")
    with pytest.raises(ConfigError, match=r"^-o aikernel_startup_timeout: .*'soon'"):
        _settings(ns(), pytester.path)


def test_up_warns_about_unknown_env_on_stderr(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AIKERNEL_NEO4J_HEAPP", "1g")
    settings, _ = _settings(ns(), pytester.path)
    assert settings.neo4j_heap == "256m"
    err = capsys.readouterr().err
    assert "aikernel: warning: env AIKERNEL_NEO4J_HEAPP" in err
    assert "did you mean AIKERNEL_NEO4J_HEAP?" in err


def test_up_reads_settings_when_pytest_would_not_load_the_plugin(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    (pytester.path / "pytest.ini").write_text("[pytest]\naikernel_startup_timeout = 33\n")
    assert _settings(ns(), pytester.path)[0].startup_timeout == 33


def test_project_filterwarnings_error_does_not_stop_up(pytester: pytest.Pytester) -> None:
    """pytest_aikernel is imported before pytest could rewrite it: a config-time warning that
    `filterwarnings = error` must not turn into a failure of `aikernel up`."""
    (pytester.path / "pytest.ini").write_text(
        "[pytest]\nfilterwarnings = error\ntestpaths = nothing-here\naikernel_startup_timeout = 3\n"
    )
    assert _settings(ns(), pytester.path)[0].startup_timeout == 3
