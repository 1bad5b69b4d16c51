"""Kubernetes benchmark: the same stack on the Docker engine and on a cluster, side by side, one run.

    eval "$(tests/images/build)"                  # the stand-ins (AIKERNEL_IMAGE_*)
    eval "$(tests/k8s/cluster up)"                # KUBECONFIG of the local test cluster
    python benchmarks/startup_kubernetes.py --repeat 5 [--nodeport]

Both runtimes start the same images with the same settings, in this process, taking turns (the
first in a round alternates). Snapshots are off on both (Kubernetes has none; docs/snapshots.md),
so both seed PostgreSQL from scratch; the Docker column with snapshots on is printed too.

  * start     - Stack.start(["postgres", "redis", "vault"]) to ready and seeded;
  * stop      - stack.stop(): every container removed / the namespace deleted (the call only;
                Kubernetes finishes the namespace's deletion in the background);
  * connect   - a new PostgreSQL connection and SELECT 1, 20 times: on Kubernetes each new
                connection is a new port-forward stream through the API server;
  * query     - SELECT 1 on an open connection, 200 times (the steady cost of the forward).

--nodeport adds a column: Kubernetes with --aikernel-kube-access nodeport (NodePort Services at
the node's address through kube-proxy, no port-forward).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")

from pytest_aikernel.services import registry
from pytest_aikernel.settings import RawSources, Settings, resolve
from pytest_aikernel.stack import Stack

THREE = ["postgres", "redis", "vault"]


def settings(runtime: str, snapshots: bool, access: str = "forward") -> Settings:
    env = {**os.environ, "AIKERNEL_RUNTIME": runtime}
    if runtime == "kubernetes":
        env["AIKERNEL_KUBE_ACCESS"] = access
    env["AIKERNEL_SNAPSHOTS"] = "on" if snapshots else "off"
    raw = RawSources(cli={}, ini={}, env=env, ini_dir=os.getcwd(), cwd=os.getcwd())  # type: ignore[arg-type]
    return resolve(raw, tuple(registry()))


def run(cfg: Settings, names: list[str], connects: int, queries: int) -> dict[str, float]:
    stack = Stack(cfg)
    began = time.monotonic()
    out: dict[str, float] = {}
    try:
        stack.start(names)
        out["start"] = time.monotonic() - began
        pg: Any = stack["postgres"]
        times = []
        for _ in range(connects):
            t = time.monotonic()
            with pg.connect("postgres") as conn:
                conn.execute("SELECT 1").fetchone()
            times.append(time.monotonic() - t)
        out["connect"] = statistics.median(times) * 1000
        with pg.connect("postgres") as conn:
            times = []
            for _ in range(queries):
                t = time.monotonic()
                conn.execute("SELECT 1").fetchone()
                times.append(time.monotonic() - t)
        out["query"] = statistics.median(times) * 1000
    finally:
        t = time.monotonic()
        stack.stop()
        out["stop"] = time.monotonic() - t
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--connects", type=int, default=20)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument(
        "--nodeport",
        action="store_true",
        help="add a column: Kubernetes with --aikernel-kube-access nodeport",
    )
    args = parser.parse_args()
    if not os.environ.get("KUBECONFIG"):
        print('KUBECONFIG is not set: eval "$(tests/k8s/cluster up)" first', file=sys.stderr)
        return 2
    columns = {
        "docker": settings("docker", False),
        "kubernetes": settings("kubernetes", False),
        "docker+snapshots": settings("docker", True),
    }
    if args.nodeport:
        columns["kubernetes nodeport"] = settings("kubernetes", False, "nodeport")
    # one start each before timing: images in the engine's cache, a snapshot made for the last
    for name, cfg in columns.items():
        print(f"warm-up: {name}", file=sys.stderr)
        run(cfg, THREE, 1, 1)
        time.sleep(2 if name == "docker+snapshots" else 0)  # its snapshot image builds
    results: dict[str, list[dict[str, float]]] = {name: [] for name in columns}
    order = list(columns)
    for i in range(args.repeat):
        turn = order[i % len(order) :] + order[: i % len(order)]
        for name in turn:
            results[name].append(run(columns[name], THREE, args.connects, args.queries))
            r = results[name][-1]
            print(
                f"round {i + 1} {name:19s} start {r['start']:.2f} s, stop {r['stop']:.2f} s, "
                f"connect {r['connect']:.1f} ms, query {r['query']:.2f} ms",
                file=sys.stderr,
            )
    print(f"\npostgres + redis + vault, medians of {args.repeat} (stand-in images, this machine)")
    print(f"{'figure':30s}" + "".join(f"{n:>21s}" for n in order))
    rows = [
        ("start to ready (s)", "start", "{:.2f}"),
        ("stop (s)", "stop", "{:.2f}"),
        ("new connection + SELECT 1 (ms)", "connect", "{:.1f}"),
        ("SELECT 1, open connection (ms)", "query", "{:.2f}"),
    ]
    for label, key, fmt in rows:
        cells = [fmt.format(statistics.median(r[key] for r in results[n])) for n in order]
        print(f"{label:30s}" + "".join(f"{c:>21s}" for c in cells))
    ratio = statistics.median(r["start"] for r in results["kubernetes"]) / statistics.median(
        r["start"] for r in results["docker"]
    )
    print(f"\nstart, kubernetes / docker (both seeding): {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
