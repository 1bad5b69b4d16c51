"""Per-test isolation cost: setup + teardown of each function-scoped fixture, over N tests.

    eval "$(tests/images/build)"
    python benchmarks/isolation.py --tests 200

Starts one stack with every service that has a per-test fixture (those whose image is available;
see --services), then enters and leaves each fixture's context N times, the way pytest does around
each test, doing one small write inside so that the cleanup has something to remove. Prints the
median, 95th percentile and mean cost per test of each fixture, and their sum (what a test that
used every fixture would pay). The test's own write is not counted, except for the factories
(aikernel_pg_factory, aikernel_kafka_topic), where making the database or topic is the fixture's
work. Cleanups that run in the background after the test (dropping clones, deleting indices and
topics) are not on the test's path and not counted. Targets: postgres clone <= 50 ms; all
together <= 100 ms.
The postgres template is the seeded one (bundled init plus the project's
tests/integration/data/*.sql).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_aikernel.services import isolations, registry
from pytest_aikernel.settings import InitFile, RawSources, Settings, resolve
from pytest_aikernel.stack import Stack

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "integration" / "data"


def touch_pg(conn: Any) -> None:
    conn.execute("INSERT INTO catalog.resources (name) VALUES ('bench')")
    conn.commit()


def touch_pg_audit(conn: Any) -> None:
    conn.execute("INSERT INTO audit.events (kind) VALUES ('bench')")
    conn.commit()


def touch_factory(make: Any) -> None:
    touch_pg(make())


def touch_redis(client: Any) -> None:
    client.set("bench", "1")


def touch_vault(path: Any) -> None:
    path.write("bench", value="1")


def touch_kafka(make: Any) -> None:
    make("bench")


def touch_es(prefix: Any) -> None:
    from pytest_aikernel import _http

    _http.request("PUT", f"{prefix.url}/{prefix.name('bench')}")


def touch_neo4j(session: Any) -> None:
    session.run("CREATE (:Bench {n: 1})").consume()


#: fixtures whose value is a factory: the call inside the test is the fixture's own work
FACTORIES = {"aikernel_pg_factory", "aikernel_kafka_topic"}

TOUCH: dict[str, Callable[[Any], None]] = {
    "aikernel_pg": touch_pg,
    "aikernel_pg_audit": touch_pg_audit,
    "aikernel_pg_factory": touch_factory,
    "aikernel_redis_db": touch_redis,
    "aikernel_vault_path": touch_vault,
    "aikernel_kafka_topic": touch_kafka,
    "aikernel_es_index": touch_es,
    "aikernel_neo4j_session": touch_neo4j,
}


def settings(seed: bool) -> Settings:
    raw = RawSources(cli={}, ini={}, env=dict(os.environ), ini_dir=ROOT, cwd=ROOT)
    base = resolve(raw, tuple(registry()))
    if not seed:
        return base
    from dataclasses import replace

    return replace(
        base,
        postgres_init=(
            InitFile(DATA / "catalog.sql"),
            InitFile(DATA / "audit.sql", "aikernel_audit"),
        ),
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tests", type=int, default=200, help="tests per fixture (default 200)")
    parser.add_argument(
        "--services",
        default="postgres,redis,vault,kafka,elasticsearch,neo4j",
        help="services to include (comma-separated)",
    )
    args = parser.parse_args()
    wanted = [s.strip() for s in args.services.split(",") if s.strip()]
    stack = Stack(settings(seed=True))
    began = time.monotonic()
    try:
        stack.start(wanted)
        print(f"stack of {', '.join(stack.services)} ready in {time.monotonic() - began:.1f} s")
        print(f"{args.tests} tests per fixture; cost = fixture setup + teardown (see --help)\n")
        totals: dict[str, float] = {}
        for fixture, (service, iso) in isolations().items():
            if service not in stack:
                continue
            obj = stack[service]
            costs: list[float] = []
            for _ in range(args.tests):
                scope = stack.test_scope(service)
                t0 = time.perf_counter()
                with iso.make(obj, scope) as value:
                    t1 = time.perf_counter()
                    TOUCH[fixture](value)
                    t2 = time.perf_counter()
                # the fixture's cost: setup and teardown, not the test's own write (except for
                # the factories, where making the database or topic is the fixture's work)
                own = 0.0 if fixture in FACTORIES else t2 - t1
                costs.append((time.perf_counter() - t0 - own) * 1000)
            costs.sort()
            p95 = costs[int(len(costs) * 0.95) - 1]
            med = statistics.median(costs)
            totals[fixture] = med
            print(
                f"  {fixture:24s} median {med:6.1f} ms   p95 {p95:6.1f} ms   "
                f"mean {statistics.fmean(costs):6.1f} ms"
            )
        one_each = {k: v for k, v in totals.items() if k != "aikernel_pg_factory"}
        print(
            f"\n  all per-test fixtures in one test (sum of medians, factory excluded): "
            f"{sum(one_each.values()):.1f} ms   (target <= 100 ms)"
        )
        if "aikernel_pg" in totals:
            print(
                f"  postgres clone (aikernel_pg): {totals['aikernel_pg']:.1f} ms   (target <= 50 ms)"
            )
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
