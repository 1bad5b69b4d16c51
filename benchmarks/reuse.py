"""Time from `pytest` start to the first test with --aikernel-reuse: subsets, `aikernel up`, all.

    eval "$(tests/images/build)"
    python benchmarks/reuse.py --repeat 3

Every run is a real `python -m pytest -q -p no:cacheprovider --aikernel-reuse` process in a
throw-away project with its own cache folder (XDG_CACHE_HOME); each test writes the time it
started, so a figure is process start -> first test, pytest's own start-up included. Ryuk stays
as the environment sets it (on, unless TESTCONTAINERS_RYUK_DISABLED=true).

  subsets     `-k a` (postgres), `-k b` (redis), `-k a`, `-k b`: the third and fourth runs attach
              to the containers the first two started (target for the fourth: <= 1.0 s)
  up+subset   `aikernel up postgres redis vault`, then a run that needs only postgres
              (target <= 1.0 s)
  all         one test that needs every service whose image is present: cold, then --repeat
              reused runs (skipped with --no-all)

`aikernel down` (with each project's cache folder) removes its stack at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from startup import available, settings_from_env

SUBSETS = """
import pathlib, time

def test_a(aikernel_postgres):
    pathlib.Path("started.txt").write_text(repr(time.time()))
    with aikernel_postgres.connect() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)

def test_b(aikernel_redis):
    pathlib.Path("started.txt").write_text(repr(time.time()))
    assert aikernel_redis.client().ping()
"""

ALL = """
import pathlib, time
import pytest

@pytest.mark.aikernel_stack({services})
def test_first(aikernel_stack):
    pathlib.Path("started.txt").write_text(repr(time.time()))
    assert len(aikernel_stack) == {count}
"""


@contextmanager
def project(test: str) -> Iterator[tuple[Path, dict[str, str]]]:
    with tempfile.TemporaryDirectory(prefix="aikernel-reuse-bench-") as tmp:
        root = Path(tmp)
        (root / "test_bench.py").write_text(test)
        env = {**os.environ, "XDG_CACHE_HOME": str(root / "cache")}
        try:
            yield root, env
        finally:
            subprocess.run(
                [sys.executable, "-m", "pytest_aikernel", "down"],
                env=env,
                cwd=root,
                check=False,
                capture_output=True,
                timeout=300,
            )


def run_once(root: Path, env: dict[str, str], *args: str) -> float:
    marker = root / "started.txt"
    marker.unlink(missing_ok=True)
    began = time.time()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--aikernel-reuse", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"pytest failed:\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}")
    return float(marker.read_text()) - began


def subsets(repeat: int) -> None:
    rounds: list[list[float]] = []
    for _ in range(repeat):
        with project(SUBSETS) as (root, env):
            rounds.append([run_once(root, env, "-k", k) for k in ("a", "b", "a", "b")])
    print("subsets (-k a, -k b, -k a, -k b; medians of", repeat, "fresh projects):")
    for i, label in enumerate(
        (
            "1st -k a (cold postgres)",
            "2nd -k b (adds redis)",
            "3rd -k a (attaches)",
            "4th -k b (attaches)",
        )
    ):
        values = [r[i] for r in rounds]
        print(
            f"  {label:28s} {statistics.median(values):6.2f} s   "
            f"(runs: {', '.join(f'{v:.2f}' for v in values)})"
        )
    print("  target: 4th <= 1.0 s")


def up_then_subset(repeat: int) -> None:
    values = []
    up_times = []
    for _ in range(repeat):
        with project(SUBSETS) as (root, env):
            began = time.time()
            done = subprocess.run(
                [sys.executable, "-m", "pytest_aikernel", "up", "postgres", "redis", "vault"],
                cwd=root,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            if done.returncode != 0:
                raise SystemExit(f"aikernel up failed:\n{done.stderr[-3000:]}")
            up_times.append(time.time() - began)
            values.append(run_once(root, env, "-k", "a"))
    print(f"aikernel up postgres redis vault: {statistics.median(up_times):6.2f} s (median)")
    print(
        f"  then pytest --aikernel-reuse -k a (postgres only): {statistics.median(values):6.2f} s "
        f"to the first test (target <= 1.0 s; runs: {', '.join(f'{v:.2f}' for v in values)})"
    )


def everything(repeat: int) -> None:
    names = available(settings_from_env())
    test = ALL.format(services=", ".join(repr(n) for n in names), count=len(names))
    with project(test) as (root, env):
        cold = run_once(root, env)
        warm = [run_once(root, env) for _ in range(repeat)]
    print(f"all available services: {', '.join(names)}")
    print(f"  cold (start and seed the stack)   {cold:6.2f} s to the first test")
    print(
        f"  reused (median of {repeat})            {statistics.median(warm):6.2f} s to the "
        f"first test   (runs: {', '.join(f'{w:.2f}' for w in warm)})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3, help="rounds of each part (default 3)")
    parser.add_argument("--no-all", action="store_true", help="skip the all-services part")
    args = parser.parse_args()
    ryuk = "off" if os.environ.get("TESTCONTAINERS_RYUK_DISABLED", "").lower() == "true" else "on"
    print(f"Ryuk: {ryuk} ({os.environ.get('RYUK_CONTAINER_IMAGE', 'testcontainers default')})")
    subsets(args.repeat)
    up_then_subset(args.repeat)
    if not args.no_all:
        everything(args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
