"""Startup benchmark: pytest-aikernel's parallel start vs plain testcontainers, same images, one run.

    eval "$(tests/images/build)"          # or any AIKERNEL_IMAGE_* / official images
    python benchmarks/startup.py --repeat 5

For each repeat, in the same process and on the same images:
  * plugin, 3 services  - Stack.start(["postgres", "redis", "vault"]): parallel, 50 ms probes,
                          seeded (bundled SQL, Vault entries), until every service is ready;
                          seeded (--aikernel-snapshots off), and from PostgreSQL's seeded
                          snapshot (made by a first start, before the timed runs);
  * testcontainers seq. - testcontainers' PostgresContainer, RedisContainer and VaultContainer
                          started one after another with their default waits (what a hand-written
                          fixture does);
  * plugin, 5 services  - the foundation's whole stack (with both replicas).
It prints the medians, the ratio plugin/sequential (target <= 0.6), and per service how long after
the server could first answer the plugin noticed it: the gap between the server's own "ready" log
line (the Docker daemon's timestamp of that line) and the moment the plugin's probe passed
(target <= 150 ms). A last section starts PostgreSQL alone with and without each of the plugin's
speed settings, to show what each one gives. With --engine-floor, it also times the engine alone
starting three containers that boot nothing, side by side and one after another, on a network of
their own with a published port (as the stack's are) and without a network: the part of a
start that no plugin can cut.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

# testcontainers must reach containers through published loopback ports (this machine has a
# /.dockerenv file, which otherwise makes it use the bridge gateway address). Ryuk stays as the
# environment sets it: on, with RYUK_CONTAINER_IMAGE from tests/images/build here.
os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")

from pytest_aikernel.runtime import ContainerSpec
from pytest_aikernel.runtime.docker import DockerRuntime, new_session_id
from pytest_aikernel.services import image_for, platform_names, registry, start_order
from pytest_aikernel.settings import RawSources, Settings, resolve
from pytest_aikernel.stack import Stack

THREE = ["postgres", "redis", "vault"]
FIVE = ["postgres", "postgres-replica", "redis", "redis-replica", "vault"]


def available(settings: Settings, helpers: bool = False) -> list[str]:
    """Every platform service (what a bare marker starts; with ``helpers``, Toxiproxy too)
    whose image is in the local engine (nothing is pulled)."""
    from pytest_aikernel.runtime.docker import docker_client

    client = docker_client()
    names = []
    try:
        for name in registry() if helpers else platform_names():
            try:
                client.images.get(image_for(name, settings))
                names.append(name)
            except Exception:
                pass
    finally:
        client.close()
    return names


def peak_memory(stack: Stack) -> dict[str, int]:
    """Per service, the container's peak memory from its cgroup (v1 or v2), in bytes."""
    out: dict[str, int] = {}
    for name in stack.services:
        cid = stack.running(name).container_id
        for path in (
            f"/sys/fs/cgroup/memory/docker/{cid}/memory.max_usage_in_bytes",
            f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/memory.peak",
        ):
            try:
                with open(path, encoding="ascii") as fh:
                    out[name] = int(fh.read().strip())
                break
            except OSError:
                continue
    return out


def cpu_seconds(stack: Stack) -> dict[str, float]:
    """Per service, the CPU seconds its container has used so far (cgroup v1 or v2)."""
    out: dict[str, float] = {}
    for name in stack.services:
        cid = stack.running(name).container_id
        try:
            with open(f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage", encoding="ascii") as fh:
                out[name] = int(fh.read()) / 1e9
            continue
        except OSError:
            pass
        try:
            path = f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/cpu.stat"
            with open(path, encoding="ascii") as fh:
                stat = dict(line.split() for line in fh)
            out[name] = int(stat["usage_usec"]) / 1e6
        except (OSError, KeyError, ValueError):
            pass
    return out


def full_stack_runs(
    settings: Settings, names: list[str], repeat: int, compare_jvm: bool = False
) -> None:
    """All available services: plugin (parallel) vs one after another with 1 s polling; with
    ``compare_jvm`` also the plugin with --aikernel-jvm-tuning off."""
    import dataclasses

    import pytest_aikernel.stack as stack_module

    parallel: list[float] = []
    sequential: list[float] = []
    peaks: list[dict[str, int]] = []
    untuned: list[float] = []
    per_service: dict[bool, dict[str, list[float]]] = {True: {}, False: {}}
    cpu: list[tuple[float, dict[str, float]]] = []  # this process, each container
    for i in range(repeat):
        stack = Stack(settings)
        began = time.monotonic()
        own = time.process_time()
        try:
            stack.start(names)
            parallel.append(time.monotonic() - began)
            cpu.append((time.process_time() - own, cpu_seconds(stack)))
            peaks.append(peak_memory(stack))
            for name, secs in stack.timings.items():
                per_service[True].setdefault(name, []).append(secs)
        finally:
            stack.stop()
        if compare_jvm:
            off = Stack(dataclasses.replace(settings, jvm_tuning=False))
            began = time.monotonic()
            try:
                off.start(names)
                untuned.append(time.monotonic() - began)
                for name, secs in off.timings.items():
                    per_service[False].setdefault(name, []).append(secs)
            finally:
                off.stop()
            print(f"  run {i + 1}: plugin, JVM tuning off {untuned[-1]:.2f} s")
        poll = stack_module.POLL_INTERVAL
        stack_module.POLL_INTERVAL = 1.0  # testcontainers' default readiness polling
        seq = Stack(settings)
        began = time.monotonic()
        try:
            for name in start_order(names):
                seq.start([name])
            sequential.append(time.monotonic() - began)
        finally:
            stack_module.POLL_INTERVAL = poll
            seq.stop()
        print(f"  run {i + 1}: plugin {parallel[-1]:.2f} s | sequential {sequential[-1]:.2f} s")
    p, q = median(parallel), median(sequential)
    print(f"\nall available services ({len(names)}: {', '.join(names)})")
    tuning = "on" if settings.jvm_tuning else "off"
    print(f"  plugin, parallel and dependency-ordered    {p:6.2f} s   (JVM tuning {tuning})")
    if compare_jvm:
        print(f"  the same with --aikernel-jvm-tuning off    {median(untuned):6.2f} s")
        print("  per service, container start -> ready and seeded (median): tuning on | off")
        for name in sorted(per_service[True], key=lambda n: -median(per_service[True][n])):
            on_s = median(per_service[True][name])
            off_s = median(per_service[False].get(name, []))
            print(f"    {name:18s} {on_s:6.2f} s | {off_s:6.2f} s")
    print(
        "  one after another, 1 s polling (testcontainers' default; same containers, same seeding)"
    )
    print(f"                                             {q:6.2f} s")
    print(f"  ratio plugin / sequential                  {p / q:6.2f}   (target <= 0.60)")
    if cpu:
        # is the start bound by the CPU? (cores x wall time is what there was)
        wall = parallel[-1]
        mine, used = cpu[-1]
        print(
            f"\nCPU seconds until the stack was ready (last run, {wall:.2f} s on "
            f"{os.cpu_count()} cores = {wall * (os.cpu_count() or 1):.1f} cpu s there were): "
            f"containers {sum(used.values()):.1f}, this process {mine:.1f}"
        )
        print(
            "  " + ", ".join(f"{n} {v:.1f}" for n, v in sorted(used.items(), key=lambda kv: -kv[1]))
        )
    last = peaks[-1] if peaks else {}
    total = sum(last.values())
    print(
        f"\npeak memory of the plugin's containers (cgroup max usage, last run): {total / 2**30:.2f} GiB"
        "   (target: whole stack <= 3 GiB)"
    )
    for name, value in sorted(last.items(), key=lambda kv: -kv[1]):
        print(f"  {name:18s} {value / 2**20:7.0f} MiB")


def settings_from_env() -> Settings:
    raw = RawSources(cli={}, ini={}, env=dict(os.environ), ini_dir=os.getcwd(), cwd=os.getcwd())  # type: ignore[arg-type]
    return resolve(raw, tuple(registry()))


def parse_stamp(stamp: str) -> float:
    """Docker's RFC 3339 nanosecond timestamp -> POSIX seconds."""
    head, _, frac = stamp.rstrip("Z").partition(".")
    base = datetime.fromisoformat(head + "+00:00").timestamp()
    return base + float("0." + (frac or "0"))


def plugin_run(settings: Settings, names: list[str]) -> tuple[float, dict[str, float]]:
    """Seconds to a ready stack, and per service the ms from its ready log line to detection."""
    stack = Stack(settings)
    wall_offset = time.time() - time.monotonic()
    began = time.monotonic()
    try:
        stack.start(names)
        total = time.monotonic() - began
        noticed: dict[str, float] = {}
        for name in names:
            marker = registry()[name].ready_log
            lines = stack.runtime.log_timestamps(name)
            ready_wall = stack.ready_at[name] + wall_offset
            stamps = [parse_stamp(s) for s, text in lines if marker in text]
            before = [s for s in stamps if s <= ready_wall]
            if before:
                noticed[name] = (ready_wall - before[-1]) * 1000
    finally:
        stack.stop()
    return total, noticed


def ensure_snapshot(settings: Settings, timeout: float = 180) -> None:
    """Start PostgreSQL once (seeding; it keeps its snapshot) unless a snapshot for its key
    exists, and wait until the snapshot's image is there."""
    stack = Stack(settings)
    try:
        stack.start(["postgres"])
        svc = registry()["postgres"]
        plan = stack._snapshot_plan("postgres", svc, image_for("postgres", settings))
    finally:
        stack.stop()
    if plan is None:
        raise SystemExit("snapshots do not apply to postgres here")
    from pytest_aikernel.runtime.docker import docker_client, snapshot_tag

    client = docker_client()
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.images.get(snapshot_tag("postgres", plan.key))
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise SystemExit("the snapshot image was not built") from None
                time.sleep(0.2)
    finally:
        client.close()


def testcontainers_sequential(settings: Settings) -> float:
    """Plain testcontainers modules, one after another, default waits."""
    from testcontainers.community.postgres import PostgresContainer
    from testcontainers.community.redis import RedisContainer
    from testcontainers.community.vault import VaultContainer

    def loopback(container: Any, port: int) -> Any:
        container.ports = {f"{port}/tcp": ("127.0.0.1",)}
        return container

    containers = [
        loopback(PostgresContainer(image_for("postgres", settings), driver=None), 5432),
        loopback(RedisContainer(image_for("redis", settings)), 6379),
        loopback(VaultContainer(image_for("vault", settings)), 8200),
    ]
    began = time.monotonic()
    try:
        for c in containers:
            c.start()
        return time.monotonic() - began
    finally:
        for c in containers:
            try:
                c.stop()
            except Exception as exc:
                print(f"  (could not remove a container: {exc})", file=sys.stderr)


def postgres_variant(
    settings: Settings, label: str, spec_change: Callable[[ContainerSpec], ContainerSpec]
) -> float:
    """Seconds from container start to a TCP connection that answers SELECT 1."""
    import dataclasses

    import psycopg

    svc = registry()["postgres"]
    stack = Stack(settings)
    spec = spec_change(svc.container(stack._ctx))
    runtime = DockerRuntime(new_session_id())
    try:
        runtime.create_network()
        running = runtime.start("postgres", dataclasses.replace(spec))
        password = spec.env["POSTGRES_PASSWORD"]
        while True:
            try:
                with psycopg.connect(
                    host=running.host,
                    port=running.host_port(5432),
                    user="aikernel",
                    password=password,
                    dbname="aikernel_catalog",
                    connect_timeout=2,
                ) as conn:
                    conn.execute("SELECT 1")
                return time.monotonic() - running.started_at
            except psycopg.Error:
                if time.monotonic() - running.started_at > 60:
                    raise RuntimeError(f"postgres variant {label!r} not ready in 60 s") from None
                time.sleep(0.02)
    finally:
        runtime.close()
        stack.stop()


def official_defaults(spec: ContainerSpec) -> ContainerSpec:
    """What a plain `docker run postgres:15` does: disk data dir, fsync on, full initdb."""
    import dataclasses

    env = {k: v for k, v in spec.env.items() if k != "POSTGRES_INITDB_ARGS"}
    return dataclasses.replace(spec, env=env, command=("postgres",), tmpfs={})


def with_only(**parts: bool) -> Callable[[ContainerSpec], ContainerSpec]:
    def change(spec: ContainerSpec) -> ContainerSpec:
        import dataclasses

        base = official_defaults(spec)
        if parts.get("tmpfs"):
            base = dataclasses.replace(base, tmpfs=spec.tmpfs)
        if parts.get("nosync"):
            base = dataclasses.replace(base, env=dict(spec.env))
        if parts.get("flags"):
            base = dataclasses.replace(base, command=spec.command)
        return base

    return change


def engine_floor(settings: Settings, repeat: int) -> None:
    """What the engine alone takes to start containers like the stack's: three containers of
    the redis image (a `sleep`, nothing to boot) on a network of their own with a published
    loopback port each, started side by side and one after another, on the default bridge
    with a port, and without a network."""
    import threading

    from pytest_aikernel.runtime.docker import docker_client

    client = docker_client()
    image = image_for("redis", settings)
    ports = {"6379/tcp": ("127.0.0.1", None)}

    def trial(count: int, side_by_side: bool, network: bool | None) -> list[float]:
        """``network``: True a network of their own, None the default bridge, False none."""
        name = f"aikernel-bench-floor-{new_session_id()}"
        kwargs: dict[str, Any] = {"ports": ports} if network is not False else {}
        if network is False:
            kwargs["network_mode"] = "none"
        if network:
            client.networks.create(name, driver="bridge")
            kwargs["network"] = name
        made = [
            client.containers.create(
                image, command=["sleep", "60"], entrypoint=[], detach=True, **kwargs
            )
            for _ in range(count)
        ]
        done: list[float] = []
        began = time.monotonic()
        try:
            if side_by_side:
                threads = [
                    threading.Thread(
                        target=lambda c=c: (c.start(), done.append(time.monotonic() - began))
                    )
                    for c in made
                ]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
            else:
                for c in made:
                    c.start()
                    done.append(time.monotonic() - began)
        finally:
            for c in made:
                c.remove(force=True, v=True)
            if network:
                client.networks.get(name).remove()
        return sorted(done)

    print("\nthe engine alone: `docker start` of containers that boot nothing (median; ms at which")
    print("the 1st, 2nd, 3rd start returned)")
    cases = [
        ("1 container, stack network + port", 1, True, True),
        ("3 side by side, stack network + port", 3, True, True),
        ("3 one after another, stack network + port", 3, False, True),
        ("3 side by side, default bridge + port", 3, True, None),
        ("3 side by side, no network", 3, True, False),
    ]
    try:
        for label, count, side_by_side, network in cases:
            runs = [trial(count, side_by_side, network) for _ in range(repeat)]
            at = [statistics.median(r[i] for r in runs) * 1000 for i in range(count)]
            print(f"  {label:44s} " + " / ".join(f"{v:4.0f}" for v in at) + " ms")
    finally:
        client.close()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5, help="runs of each variant (default 5)")
    parser.add_argument(
        "--skip-variants", action="store_true", help="skip the postgres settings section"
    )
    parser.add_argument("--skip-full", action="store_true", help="skip the all-services section")
    parser.add_argument(
        "--engine-floor",
        action="store_true",
        help="also time the engine alone starting containers that boot nothing",
    )
    parser.add_argument(
        "--compare-jvm-tuning",
        action="store_true",
        help="in the all-services section, also start the plugin's stack with "
        "--aikernel-jvm-tuning off and print both",
    )
    parser.add_argument(
        "--with-helpers",
        action="store_true",
        help="in the all-services section, start the helper Toxiproxy too",
    )
    args = parser.parse_args()
    settings = settings_from_env()
    print("images: " + ", ".join(f"{n}={image_for(n, settings)}" for n in FIVE))
    print(f"repeats: {args.repeat} (medians below; all in one process, same images)\n")

    import dataclasses

    seeded = dataclasses.replace(settings, snapshots=False)
    snapped = dataclasses.replace(settings, snapshots=True)
    print("making PostgreSQL's snapshot (a first seeded start; not timed)")
    ensure_snapshot(snapped)
    plugin3: list[float] = []
    snap3: list[float] = []
    seq: list[float] = []
    plugin5: list[float] = []
    noticed: dict[str, list[float]] = {}
    for i in range(args.repeat):
        t3, n3 = plugin_run(seeded, THREE)
        tsnap, _ = plugin_run(snapped, THREE)
        ts = testcontainers_sequential(settings)
        t5, n5 = plugin_run(seeded, FIVE)
        plugin3.append(t3)
        snap3.append(tsnap)
        seq.append(ts)
        plugin5.append(t5)
        for name, ms in [*n3.items(), *n5.items()]:
            noticed.setdefault(name, []).append(ms)
        print(
            f"  run {i + 1}: plugin(3) {t3:.2f} s | from snapshot(3) {tsnap:.2f} s | "
            f"testcontainers sequential(3) {ts:.2f} s | plugin(5) {t5:.2f} s"
        )

    p3, s3, p5 = median(plugin3), median(seq), median(plugin5)
    q3 = median(snap3)
    print("\nstartup to ready (median)")
    print(f"  plugin, postgres+redis+vault, seeded       {p3:6.2f} s")
    print(f"  plugin, the same from the snapshot         {q3:6.2f} s   (target <= 0.80 s)")
    print(f"  testcontainers modules, one after another  {s3:6.2f} s")
    print(f"  ratio plugin seeded / sequential           {p3 / s3:6.2f}   (target <= 0.60)")
    print(f"  ratio plugin from snapshot / sequential    {q3 / s3:6.2f}   (target <= 0.45)")
    print(f"  plugin, all five services                  {p5:6.2f} s")
    print("\nserver could answer -> plugin noticed (median, max over runs; target <= 150 ms)")
    for name in FIVE:
        values = noticed.get(name, [])
        if values:
            print(
                f"  {name:18s} {median(values):6.0f} ms  (max {max(values):.0f} ms, n={len(values)})"
            )
        else:
            print(f"  {name:18s}   n/a (ready log line '{registry()[name].ready_log}' not seen)")

    if args.engine_floor:
        engine_floor(settings, args.repeat)

    if not args.skip_full:
        names = available(settings, helpers=args.with_helpers)
        print(f"\nall services whose image is present ({args.repeat} runs each)")
        full_stack_runs(settings, names, args.repeat, compare_jvm=args.compare_jvm_tuning)

    if not args.skip_variants:
        variants = [
            ("official defaults (disk, fsync, full initdb)", official_defaults),
            ("+ tmpfs data directory only", with_only(tmpfs=True)),
            ("+ POSTGRES_INITDB_ARGS=--no-sync only", with_only(nosync=True)),
            ("+ fsync/full_page_writes off only", with_only(flags=True)),
            ("all three (what the plugin runs)", with_only(tmpfs=True, nosync=True, flags=True)),
        ]
        print("\npostgres alone, container start -> SELECT 1 over TCP (median)")
        for label, change in variants:
            times = [postgres_variant(settings, label, change) for _ in range(args.repeat)]
            print(
                f"  {label:46s} {median(times):5.2f} s  (min {min(times):.2f}, max {max(times):.2f})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
