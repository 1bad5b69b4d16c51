"""Parsing of the Vault seed file."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_aikernel.errors import ConfigError
from pytest_aikernel.services.vault import load_seed

GOOD = """
kv: {aikernel/api: {signing_key: abc}}
policies: {catalog-reader: 'path "secret/data/aikernel/*" { capabilities = ["read"] }'}
approles: {catalog-service: {token_policies: [catalog-reader]}}
transit_keys: [aikernel-kek]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "seed.yaml"
    path.write_text(text)
    return path


def test_good_seed(tmp_path: Path) -> None:
    seed = load_seed(write(tmp_path, GOOD))
    assert seed.kv == {"aikernel/api": {"signing_key": "abc"}}
    assert list(seed.policies) == ["catalog-reader"]
    assert seed.approles == {"catalog-service": {"token_policies": ["catalog-reader"]}}
    assert seed.transit_keys == ("aikernel-kek",)


def test_empty_seed(tmp_path: Path) -> None:
    assert load_seed(write(tmp_path, "")).kv == {}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("kv: [1, 2", "not valid YAML"),
        ("- a\n- b\n", "expected a mapping"),
        ("secrets: {a: {b: c}}\n", "unknown top-level key 'secrets'"),
        ("kv: {aikernel/x: 3}\n", "kv entry 'aikernel/x'"),
        ("kv: {/abs: {a: b}}\n", "kv path '/abs'"),
        ("policies: {p: ''}\n", "policy 'p'"),
        ("approles: {r: [1]}\n", "approle 'r'"),
        ("approles: {r: {token_policies: [nope]}}\n", "policy 'nope'"),
        ("transit_keys: abc\n", "'transit_keys' must be a list"),
    ],
)
def test_bad_seed_names_file_and_key(tmp_path: Path, text: str, needle: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_seed(path)
    assert str(path) in str(info.value)
    assert needle in str(info.value)


def test_bad_seed_is_a_usage_error_at_configure(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x():\n    pass\n")
    pytester.path.joinpath("seed.yaml").write_text("users: {}\n")
    result = pytester.runpytest("--aikernel-vault-seed=seed.yaml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*seed.yaml*unknown top-level key 'users'*"])
