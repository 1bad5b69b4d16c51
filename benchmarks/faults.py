"""Fault benchmark: what each fault of the plugin costs, and how fast the stack is healed, one run.

    eval "$(tests/images/build)"          # or any AIKERNEL_IMAGE_* / official images
    python benchmarks/faults.py --repeat 10

Starts one stack (postgres, postgres-replica, redis, redis-replica, toxiproxy) through the
plugin's own Stack, then measures, --repeat times each, through the public API a test uses (the
service objects of the stack, NetworkFaults for Toxiproxy), healing after each repetition with
stack.faults.heal() and stack.faults.end() as the plugin does after a test:

  * Toxiproxy: proxied("postgres") of a new NetworkFaults (the first proxy of a test), then a
    latency toxic on it, both directions and upstream only: time to apply and to remove it
    (target <= 20 ms each); down() and its removal; one check that the toxic really delays a
    query;
  * pause() + unpause() of postgres (target <= 100 ms) and of redis;
  * kill() + start() (to ready) of postgres and of redis, each repetition followed by a cold
    start of the same service alone in a fresh Stack on the same images (Stack.start() to ready
    and seeded), side by side. The first kill of postgres also makes the keeper container of
    its tmpfs data volume (runtime/docker.py keep_data): it is reported apart from the others;
  * stop() (graceful) + start() of postgres;
  * promote() of postgres-replica and of redis-replica, then stack.faults.heal() (PostgreSQL's
    replica is made again from a new base backup; Redis's becomes a replica again in place).

It prints the median, min and max of each figure, the targets and whether they were met. Every
container is removed at the end (stack.stop()), also after an error, Ctrl-C or SIGTERM. The
anonymous volume that a postgres keeper container gets for its image's VOLUME survives
stack.stop() (DockerRuntime.remove() removes keepers without v=True): the script removes it.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

# the reaper (Ryuk) stays as the environment sets it, as in the other benchmarks
os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")

from pytest_aikernel.runtime.docker import LABEL_SERVICE, LABEL_SESSION, docker_client
from pytest_aikernel.services import image_for, registry
from pytest_aikernel.settings import RawSources, Settings, resolve
from pytest_aikernel.stack import Stack
from pytest_aikernel.toxics import NetworkFaults

SERVICES = ["postgres", "postgres-replica", "redis", "redis-replica", "toxiproxy"]
TEST = "benchmarks/faults.py"


def settings_from_env() -> Settings:
    raw = RawSources(cli={}, ini={}, env=dict(os.environ), ini_dir=os.getcwd(), cwd=os.getcwd())  # type: ignore[arg-type]
    return resolve(raw, tuple(registry()))


def timed(call: Callable[[], Any]) -> float:
    """Seconds that ``call()`` took."""
    began = time.perf_counter()
    call()
    return time.perf_counter() - began


def fmt(seconds: float) -> str:
    if math.isnan(seconds):
        return "n/a"
    if seconds < 1.0:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


@dataclass
class Figure:
    label: str
    values: list[float] = field(default_factory=list)
    #: seconds; None: no target
    target: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    def met(self) -> str:
        if self.target is None or not self.values:
            return ""
        median_ok = self.median <= self.target
        max_ok = max(self.values) <= self.target
        if median_ok and max_ok:
            return "yes (every run)"
        if median_ok:
            return "yes (median; max over)"
        return "NO"


class Report:
    def __init__(self) -> None:
        self.sections: list[tuple[str, list[Figure]]] = []

    def section(self, title: str, *figures: Figure) -> None:
        self.sections.append((title, list(figures)))

    def print(self) -> None:
        width = max(len(f.label) for _t, figs in self.sections for f in figs)
        head = f"  {'figure':{width}s} {'median':>10s} {'min':>10s} {'max':>10s} {'n':>3s}  target     met"
        for title, figures in self.sections:
            print(f"\n{title}")
            print(head)
            for f in figures:
                if not f.values:
                    print(f"  {f.label:{width}s} {'n/a':>10s}")
                    continue
                target = f"<= {fmt(f.target)}" if f.target is not None else ""
                print(
                    f"  {f.label:{width}s} {fmt(f.median):>10s} {fmt(min(f.values)):>10s} "
                    f"{fmt(max(f.values)):>10s} {len(f.values):3d}  {target:10s} {f.met()}"
                )


def heal(stack: Stack) -> float:
    """What the plugin does after a test that faulted services; raises if healing failed."""
    began = time.perf_counter()
    try:
        failures = stack.faults.heal()
    finally:
        stack.faults.end()
    if failures:
        raise RuntimeError("heal failed: " + "; ".join(failures))
    return time.perf_counter() - began


def begin(stack: Stack, name: str, service: str) -> None:
    """What the plugin does before a test that needs ``service``."""
    stack.faults.begin(f"{TEST}::{name}", [service])


def select_one(conn: Any) -> float:
    return timed(lambda: conn.execute("SELECT 1").fetchone())


# ---- sections -----------------------------------------------------------------------------------


def toxiproxy_section(stack: Stack, repeat: int, report: Report) -> None:
    first_ever = Figure("proxied('postgres'), first of the process")
    proxied = Figure("proxied('postgres'), first proxy of a test")
    both_on = Figure("latency toxic, both directions: apply", target=0.020)
    both_off = Figure("latency toxic, both directions: remove", target=0.020)
    up_on = Figure("latency toxic, upstream only: apply", target=0.020)
    up_off = Figure("latency toxic, upstream only: remove", target=0.020)
    down_on = Figure("down(): apply (proxy disabled)", target=None)
    down_off = Figure("down(): remove (proxy enabled)", target=None)
    close = Figure("NetworkFaults.close() (end of the test)")
    for i in range(repeat):
        net = NetworkFaults(stack, stack.test_scope("toxiproxy").name, f"{TEST}::toxics[{i}]")
        try:
            t = timed(functools.partial(net.proxied, "postgres"))
            (first_ever if i == 0 else proxied).values.append(t)
            began = time.perf_counter()
            toxic = net.latency("postgres", 50)
            both_on.values.append(time.perf_counter() - began)
            both_off.values.append(timed(toxic.remove))
            began = time.perf_counter()
            toxic = net.latency("postgres", 50, direction="upstream")
            up_on.values.append(time.perf_counter() - began)
            up_off.values.append(timed(toxic.remove))
            began = time.perf_counter()
            toxic = net.down("postgres")
            down_on.values.append(time.perf_counter() - began)
            down_off.values.append(timed(toxic.remove))
        finally:
            close.values.append(timed(net.close))
    report.section(
        f"Toxiproxy (a new NetworkFaults per repetition, like aikernel_faults; {repeat} runs)",
        first_ever,
        proxied,
        both_on,
        both_off,
        up_on,
        up_off,
        down_on,
        down_off,
        close,
    )

    # one check that the toxic is in force once latency() returns, on an open connection
    net = NetworkFaults(stack, stack.test_scope("toxiproxy").name, f"{TEST}::toxic-check")
    try:
        pg = net.proxied("postgres")
        with pg.connect() as conn:
            before = statistics.median(select_one(conn) for _ in range(5))
            with net.latency("postgres", 50):
                during = statistics.median(select_one(conn) for _ in range(3))
            after = statistics.median(select_one(conn) for _ in range(5))
        with net.latency("postgres", 50, direction="upstream"), pg.connect() as conn:
            one_way = statistics.median(select_one(conn) for _ in range(3))
    finally:
        net.close()
    print(
        "\ncheck: SELECT 1 through the proxy on one open connection (median): "
        f"{fmt(before)} before, {fmt(during)} with latency 50 ms both ways (expected >= 100 ms), "
        f"{fmt(after)} after remove(); {fmt(one_way)} with 50 ms upstream only (new connection)"
    )


def pause_section(stack: Stack, service: str, repeat: int, report: Report) -> None:
    obj = stack[service]
    target = 0.100 if service == "postgres" else None
    pause = Figure(f"{service}: pause()")
    unpause = Figure(f"{service}: unpause()")
    both = Figure(f"{service}: pause() + unpause()", target=target)
    healed = Figure(f"{service}: heal afterwards (probe, dependents settle)")
    for i in range(repeat):
        begin(stack, f"pause-{service}[{i}]", service)
        a = timed(obj.pause)
        b = timed(obj.unpause)
        pause.values.append(a)
        unpause.values.append(b)
        both.values.append(a + b)
        healed.values.append(heal(stack))
    report.section(f"pause + unpause of {service} ({repeat} runs)", pause, unpause, both, healed)


def cold_start(settings: Settings, service: str) -> tuple[float, float]:
    """A fresh Stack with ``service`` alone: (Stack.start() wall time, container start to ready
    and seeded as the stack measured it)."""
    cold = Stack(settings)
    try:
        began = time.perf_counter()
        cold.start([service])
        wall = time.perf_counter() - began
        return wall, cold.timings[service]
    finally:
        cold.stop()


def keeper_exists(stack: Stack, service: str) -> bool:
    """Whether the keeper container of ``service``'s tmpfs volumes exists (runtime keep_data)."""
    name = stack.runtime.keeper_name(service)
    return bool(stack.runtime.client.containers.list(all=True, filters={"name": f"^/{name}$"}))


def kill_section(
    stack: Stack, settings: Settings, service: str, repeat: int, report: Report
) -> None:
    obj = stack[service]
    kills: list[float] = []
    starts: list[float] = []
    healed = Figure(f"{service}: heal afterwards (dependents settle)")
    cold_wall = Figure(f"{service}: cold start, fresh Stack.start() to ready")
    cold_ready = Figure(f"{service}: cold start, container start to ready+seeded")
    had_keeper = keeper_exists(stack, service)
    made_keeper = False
    for i in range(repeat):
        begin(stack, f"kill-{service}[{i}]", service)
        kills.append(timed(obj.kill))
        if i == 0:
            made_keeper = not had_keeper and keeper_exists(stack, service)
        starts.append(timed(obj.start))
        healed.values.append(heal(stack))
        wall, ready = cold_start(settings, service)
        cold_wall.values.append(wall)
        cold_ready.values.append(ready)
    figures: list[Figure] = []
    later = ""
    if made_keeper:
        later = ", later ones"
        figures += [
            Figure(f"{service}: 1st kill() (makes the tmpfs keeper)", kills[:1]),
            Figure(f"{service}: 1st start() to ready", starts[:1]),
            Figure(f"{service}: 1st kill() + start()", [kills[0] + starts[0]]),
        ]
        kills, starts = kills[1:], starts[1:]
    both = Figure(
        f"{service}: kill() + start(){later}", [a + b for a, b in zip(kills, starts, strict=True)]
    )
    figures += [
        Figure(f"{service}: kill(){later}", kills),
        Figure(f"{service}: start() to ready{later}", starts),
        both,
        healed,
        cold_wall,
        cold_ready,
    ]
    report.section(
        f"kill (SIGKILL) + start of {service}, against a cold start of {service} alone "
        f"({repeat} runs, interleaved)",
        *figures,
    )
    if both.values:
        print(
            f"\n{service}: kill() + start() median {fmt(both.median)} = "
            f"{both.median / cold_wall.median:.2f} x its cold start ({fmt(cold_wall.median)}); "
            f"keeper container made by the first kill: {'yes' if made_keeper else 'no'}"
        )


def stop_section(stack: Stack, service: str, repeat: int, report: Report) -> None:
    obj = stack[service]
    stop = Figure(f"{service}: stop() (SIGTERM/stop signal)")
    start = Figure(f"{service}: start() to ready")
    both = Figure(f"{service}: stop() + start()")
    healed = Figure(f"{service}: heal afterwards (dependents settle)")
    for i in range(repeat):
        begin(stack, f"stop-{service}[{i}]", service)
        a = timed(obj.stop)
        b = timed(obj.start)
        stop.values.append(a)
        start.values.append(b)
        both.values.append(a + b)
        healed.values.append(heal(stack))
    report.section(f"graceful stop + start of {service} ({repeat} runs)", stop, start, both, healed)


def promote_section(stack: Stack, service: str, repeat: int, report: Report) -> None:
    promote = Figure(f"{service}: promote()")
    healed = Figure(f"{service}: heal() (a replica again, streaming)")
    both = Figure(f"{service}: promote() + heal()")
    for i in range(repeat):
        begin(stack, f"promote-{service}[{i}]", service)
        obj = stack[service]
        a = timed(obj.promote)
        b = heal(stack)
        promote.values.append(a)
        healed.values.append(b)
        both.values.append(a + b)
        # the stack's probe of a replica passes only on a streaming replica (or linked one)
        registry()[service].probe(stack._ctx, stack.running(service))
    report.section(f"promote + heal of {service} ({repeat} runs)", promote, healed, both)


def keeper_anonymous_volumes(stack: Stack) -> list[str]:
    """The unlabelled volumes of this stack's keeper containers other than the kept tmpfs ones:
    the image's own VOLUME (postgres: /var/lib/postgresql/data), which Docker gives the keeper
    as an anonymous volume. DockerRuntime.remove() removes a keeper without v=True, so these
    outlive stack.stop(); the benchmark removes them itself afterwards."""
    names: list[str] = []
    try:
        client = stack.runtime.client
        found = client.containers.list(
            all=True, filters={"label": f"{LABEL_SESSION}={stack.session_id}"}
        )
        for container in found:
            if not str(container.labels.get(LABEL_SERVICE, "")).startswith("keeper:"):
                continue
            for mount in container.attrs.get("Mounts") or []:
                name = str(mount.get("Name") or "")
                if mount.get("Type") != "volume" or not name:
                    continue
                if not client.volumes.get(name).attrs.get("Labels"):
                    names.append(name)
    except Exception as exc:
        print(f"  (could not list the keepers' volumes: {exc})", file=sys.stderr)
    return names


def remove_volumes(names: list[str]) -> int:
    """Remove the volumes ``names`` that are still there and unused; how many were."""
    removed = 0
    client = docker_client()
    try:
        for name in names:
            try:
                client.volumes.get(name).remove()
                removed += 1
            except Exception:
                pass
    finally:
        client.close()
    return removed


# ---- main ---------------------------------------------------------------------------------------


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--repeat", type=int, default=10, help="repetitions of each fault (default 10)"
    )
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    signal.signal(signal.SIGTERM, _terminate)  # removes the containers as Ctrl-C does

    settings = settings_from_env()
    print("images: " + ", ".join(f"{n}={image_for(n, settings)}" for n in SERVICES))
    print(f"repeats: {args.repeat}; every figure in one process, on one stack (cold starts apart)")

    report = Report()
    stack = Stack(settings)
    try:
        began = time.perf_counter()
        stack.start(SERVICES)
        print(
            f"stack ready in {time.perf_counter() - began:.2f} s ("
            + ", ".join(f"{n} {stack.timings[n]:.2f} s" for n in SERVICES)
            + ", container start to ready and seeded)"
        )
        toxiproxy_section(stack, args.repeat, report)
        for service in ("postgres", "redis"):
            pause_section(stack, service, args.repeat, report)
        for service in ("postgres", "redis"):
            kill_section(stack, settings, service, args.repeat, report)
        stop_section(stack, "postgres", args.repeat, report)
        for service in ("postgres-replica", "redis-replica"):
            promote_section(stack, service, args.repeat, report)
    except KeyboardInterrupt:
        print("\ninterrupted: removing the stack", file=sys.stderr)
        return 130
    finally:
        leftovers = keeper_anonymous_volumes(stack)
        stack.stop()
        removed = remove_volumes(leftovers)
        if removed:
            print(
                f"\nremoved {removed} anonymous volume(s) of the keeper containers that "
                "stack.stop() left behind (DockerRuntime.remove() removes a keeper without v=True)"
            )
    report.print()
    missed = [
        f.label
        for _title, figures in report.sections
        for f in figures
        if f.target is not None and f.values and f.median > f.target
    ]
    print("\ntargets: " + ("all met (medians)" if not missed else "NOT met: " + ", ".join(missed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
