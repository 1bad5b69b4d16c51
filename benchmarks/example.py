"""The README example as a whole process: `python -m pytest` on it, start to exit, side by side.

    eval "$(tests/images/build)"          # or any AIKERNEL_IMAGE_* / official images
    python benchmarks/example.py --repeat 5

The test file is the README's own Python block, written to a temporary folder. Each variant is a
new `python -m pytest -q -p no:cacheprovider` process, timed from its start to its exit (so the
interpreter, pytest, the plugin's import, the engine, Ryuk, the stack, the two tests and the
removal of the containers all count). In one run, on the same images, in turns:

  * plugin, snapshots on   - the default; PostgreSQL starts from its seeded snapshot (made after
                             a first run, before the timed ones);
  * plugin, snapshots off  - `--aikernel-snapshots off`: PostgreSQL is seeded;
  * hand-written           - the same two tests written against testcontainers' modules directly
                             (session fixtures, one container after another, the Vault entry
                             written by the fixture), with the plugin switched off (`-p no:aikernel`);
  * floor                  - `pytest --collect-only` of the example with the plugin: the
                             interpreter, pytest and the plugin's import, no engine and no stack.

It prints the medians (target: the plugin with snapshots <= 2 s), and the plugin's own breakdown
from its terminal lines (each service's "ready in").

Before those, `--first-runs N` pairs (default 3) time the first-ever run: the example's snapshot
image is removed, then one process runs with snapshots on (it seeds PostgreSQL, and a separate
process makes the snapshot after it) and one with snapshots off, each after the previous
snapshot build has ended. It also prints how long after the first-ever run's exit its snapshot
image was there.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

HAND_WRITTEN = """
import hvac
import psycopg
import pytest
import redis
from testcontainers.community.postgres import PostgresContainer
from testcontainers.community.redis import RedisContainer
from testcontainers.community.vault import VaultContainer

IMAGES = {images!r}


def loopback(container, port):
    container.ports = {{f"{{port}}/tcp": ("127.0.0.1",)}}
    return container


@pytest.fixture(scope="session")
def postgres():
    pg = loopback(PostgresContainer(IMAGES["postgres"], username="aikernel", password="secret",
                                    dbname="aikernel_catalog", driver=None), 5432)
    with pg:
        yield pg


@pytest.fixture(scope="session")
def vault(postgres):
    with loopback(VaultContainer(IMAGES["vault"]), 8200) as v:
        client = hvac.Client(url=v.get_connection_url(), token=v.root_token)
        client.secrets.kv.v2.create_or_update_secret(
            path="aikernel/postgres", mount_point="secret",
            secret={{"password": postgres.password}})
        yield v


@pytest.fixture(scope="session")
def cache():
    with loopback(RedisContainer(IMAGES["redis"]), 6379) as r:
        yield r


def test_catalog(postgres, vault):
    url = postgres.get_connection_url()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("aikernel",)
    client = hvac.Client(url=vault.get_connection_url(), token=vault.root_token)
    entry = client.secrets.kv.v2.read_secret_version(
        path="aikernel/postgres", mount_point="secret", raise_on_deleted_version=True)
    assert entry["data"]["data"]["password"] == postgres.password


def test_cache(cache):
    client = cache.get_client()
    client.set("greeting", "hello")
    assert client.get("greeting") == b"hello"
"""


def readme_example() -> str:
    """The first ```python block of README.md: the example users copy."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(r"```python\n(.*?)```", text, re.S)
    if found is None:
        raise SystemExit("README.md has no ```python block")
    return found.group(1)


def run(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    began = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    took = time.monotonic() - began
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"`pytest {' '.join(args)}` in {cwd} exited with {proc.returncode}")
    return took, proc.stdout + proc.stderr


READY = re.compile(r"aikernel: (\S+) ready in ([0-9.]+) s")


def snapshot_key(output: str) -> str:
    found = re.search(r"snapshot (\w+) is made by a separate process|from snapshot (\w+)", output)
    if found is None:
        raise SystemExit("the plugin said nothing of PostgreSQL's snapshot:\n" + output[-2000:])
    return found.group(1) or found.group(2)


def made_after(key: str, ended: float) -> float:
    """Wait until the snapshot builds of this machine ended and ``key``'s image is there;
    seconds from ``ended``."""
    from pytest_aikernel.runtime.docker import docker_client, snapshot_tag
    from pytest_aikernel.runtime.snapbuild import wait_for_builds

    wait_for_builds(300)
    client = docker_client()
    try:
        client.images.get(snapshot_tag("postgres", key))
    except Exception:
        raise SystemExit(f"the snapshot {key} was not made") from None
    finally:
        client.close()
    return time.monotonic() - ended


def first_runs(args: argparse.Namespace, cwd: Path, env: dict[str, str], key: str) -> None:
    from pytest_aikernel.runtime.docker import docker_client, snapshot_tag

    if args.first_runs <= 0:
        return
    print(f"\nthe first-ever run: snapshot removed before each 'first' ({args.first_runs} pairs)")
    firsts: list[float] = []
    offs: list[float] = []
    builds: list[float] = []
    for i in range(args.first_runs):
        made_after(key, time.monotonic())
        client = docker_client()
        try:
            client.images.remove(snapshot_tag("postgres", key), force=True)
        finally:
            client.close()
        time.sleep(args.pause)
        took, out = run(["-rA", "-s"], cwd, env)
        ended = time.monotonic()
        if f"snapshot {key} is made by a separate process" not in out:
            raise SystemExit("the first-ever run did not seed PostgreSQL:\n" + out[-2000:])
        builds.append(made_after(key, ended))
        time.sleep(args.pause)
        off, _out = run(["-rA", "-s", "--aikernel-snapshots", "off"], cwd, env)
        firsts.append(took)
        offs.append(off)
        print(
            f"  pair {i + 1}: first-ever {took:.2f} s | snapshots off {off:.2f} s | its snapshot "
            f"there {builds[-1]:.1f} s after its exit"
        )
    print(
        f"  median: first-ever {statistics.median(firsts):.2f} s, snapshots off "
        f"{statistics.median(offs):.2f} s, snapshot there {statistics.median(builds):.1f} s "
        "after the first-ever run's exit\n"
    )


def readies(output: str) -> dict[str, float]:
    return {m.group(1): float(m.group(2)) for m in READY.finditer(output)}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5, help="runs of each variant (default 5)")
    parser.add_argument(
        "--pause", type=float, default=2.0, help="seconds between two processes (default 2)"
    )
    parser.add_argument(
        "--first-runs",
        type=int,
        default=3,
        help="pairs of first-ever (snapshot removed) and snapshots-off runs (default 3)",
    )
    args = parser.parse_args()

    from pytest_aikernel.services import image_for, registry
    from pytest_aikernel.settings import RawSources, resolve

    raw = RawSources(cli={}, ini={}, env=dict(os.environ), ini_dir=os.getcwd(), cwd=os.getcwd())  # type: ignore[arg-type]
    settings = resolve(raw, tuple(registry()))
    images = {n: image_for(n, settings) for n in ("postgres", "redis", "vault")}
    print("images: " + ", ".join(f"{n}={i}" for n, i in images.items()))

    env = dict(os.environ)
    # testcontainers must reach containers through published loopback ports here (/.dockerenv)
    env.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")
    env.pop("PYTEST_ADDOPTS", None)
    # Python's default is to keep compiled bytecode (and pytest its rewritten test modules);
    # without it every process compiles pytest and the plugin again (+0.2 s here)
    if env.pop("PYTHONDONTWRITEBYTECODE", None) is not None:
        print("PYTHONDONTWRITEBYTECODE is set here: dropped for the measured processes")
    with tempfile.TemporaryDirectory(prefix="aikernel-example-") as tmp:
        plugin_dir = Path(tmp, "plugin")
        hand_dir = Path(tmp, "hand")
        plugin_dir.mkdir()
        hand_dir.mkdir()
        (plugin_dir / "test_example.py").write_text(readme_example(), encoding="utf-8")
        (hand_dir / "test_example.py").write_text(
            HAND_WRITTEN.format(images=images), encoding="utf-8"
        )
        verbose = ["-rA", "-s"]
        first, out = run(verbose, plugin_dir, env)
        key = snapshot_key(out)
        print(f"a first run with snapshots on: {first:.2f} s (snapshot {key})")
        first_runs(args, plugin_dir, env, key)
        made_after(key, time.monotonic())
        times: dict[str, list[float]] = {}
        breakdown: dict[str, list[float]] = {}
        variants = [
            ("plugin, snapshots on", "on", verbose, plugin_dir),
            ("plugin, snapshots off", "off", [*verbose, "--aikernel-snapshots", "off"], plugin_dir),
            ("hand-written testcontainers", "hand", ["-p", "no:aikernel"], hand_dir),
            ("floor: --collect-only with the plugin", "floor", ["--collect-only"], plugin_dir),
        ]
        for i in range(args.repeat):
            line = []
            for label, short, extra, cwd in variants:
                # the engine may still be removing the previous run's containers (the plugin's
                # detached remover, testcontainers' Ryuk): let it finish, for every variant alike
                time.sleep(args.pause)
                took, out = run(extra, cwd, env)
                times.setdefault(label, []).append(took)
                if label == "plugin, snapshots on":
                    if "from snapshot" not in out:
                        raise SystemExit("postgres did not start from its snapshot")
                    for name, sec in readies(out).items():
                        breakdown.setdefault(name, []).append(sec)
                line.append(f"{short} {took:.2f}")
            print(f"  run {i + 1}: " + " | ".join(line))

    print("\nwhole process, `python -m pytest` on the README example (median of each)")
    for label, values in times.items():
        note = "   (target <= 2.00 s)" if label == "plugin, snapshots on" else ""
        print(f"  {label:40s} {statistics.median(values):6.2f} s{note}")
    hand = statistics.median(times["hand-written testcontainers"])
    mine = statistics.median(times["plugin, snapshots on"])
    print(f"  ratio plugin (snapshots on) / hand-written {mine / hand:6.2f}")
    print("\nplugin, snapshots on: each service's 'ready in' (container start to ready, median)")
    for name, values in sorted(breakdown.items()):
        print(f"  {name:10s} {statistics.median(values):6.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
