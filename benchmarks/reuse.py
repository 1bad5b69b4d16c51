"""Time from `pytest` start to the first test: a cold stack vs a reused one (--aikernel-reuse).

    eval "$(tests/images/build)"
    TESTCONTAINERS_RYUK_DISABLED=true python benchmarks/reuse.py --repeat 3

A throw-away project with one test that needs every service whose image is present runs with
--aikernel-reuse: the first run starts and seeds the stack (cold), the next runs attach to it.
Each run is a real `python -m pytest` process; the test writes the time it started, so the figure
is process start -> first test, pytest's own start-up included. Target with reuse: <= 1.5 s.
`aikernel down` removes the stack at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from startup import available, settings_from_env

TEST = """
import pathlib, time
import pytest

@pytest.mark.aikernel_stack({services})
def test_first(aikernel_stack):
    pathlib.Path("started.txt").write_text(repr(time.time()))
    assert len(aikernel_stack) == {count}
"""


def run_once(project: Path, env: dict[str, str]) -> float:
    marker = project / "started.txt"
    marker.unlink(missing_ok=True)
    began = time.time()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--aikernel-reuse"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"pytest failed:\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}")
    return float(marker.read_text()) - began


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3, help="warm runs (default 3)")
    args = parser.parse_args()
    names = available(settings_from_env())
    with tempfile.TemporaryDirectory(prefix="aikernel-reuse-bench-") as tmp:
        project = Path(tmp)
        (project / "test_first.py").write_text(
            TEST.format(services=", ".join(repr(n) for n in names), count=len(names))
        )
        env = {**os.environ, "XDG_CACHE_HOME": str(project / "cache")}
        try:
            cold = run_once(project, env)
            warm = [run_once(project, env) for _ in range(args.repeat)]
        finally:
            subprocess.run(
                [sys.executable, "-m", "pytest_aikernel", "down"],
                env=env,
                check=False,
                capture_output=True,
                timeout=300,
            )
    print(f"services: {', '.join(names)}")
    print(f"  cold (start and seed the stack)   {cold:6.2f} s to the first test")
    print(
        f"  reused (median of {args.repeat})            {statistics.median(warm):6.2f} s to the "
        f"first test   (target <= 1.5 s; runs: {', '.join(f'{w:.2f}' for w in warm)})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
