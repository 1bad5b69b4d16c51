"""JVM start-up benchmark: each start-up knob of the JVM services alone and all kept ones, against
--aikernel-jvm-tuning off, in one run; then class-data archives absent (first run) vs present.

    eval "$(tests/images/build)"          # or any AIKERNEL_IMAGE_* / official images
    python benchmarks/jvm.py --repeat 3

Every start goes through the plugin's own Stack (probes every 50 ms, seeding), one service group
at a time: elasticsearch, neo4j, and kafka (with its zookeeper). A variant is the spec of
``--aikernel-jvm-tuning off`` with one knob added (through the stack's container hook), or the
plugin's spec with tuning on. Each round runs every variant once; the rounds rotate the order.
Figures are medians over the rounds: seconds from the container's start to ready and seeded
(``Stack.timings``) and the CPU seconds the container had used by then (its cgroup).

The neo4j stand-in starts its JVM in every variant as the official image does
(``AIKERNEL_NEO4J_IMAGE_EXTRAS=off``: without the C1-only option and the class-data archive the
stand-in has by itself); one more row shows it as it is. With --marginal the table also has the
kept knobs each left out of the tuned spec, and each other knob added to it.

Before the knob table, each group is started once with tuning on and the script waits until its
archives are made. The last section removes a group's archive volumes, starts it (the archive is
absent: the JVM runs without any class-data sharing), waits for the archive to be made (how long,
and the CPU it took), then starts it again with the archive present.

The archive volumes are ``aikernel-cache-jvm-<service>-<image id>``: the script removes and
remakes those of the images it runs, and nothing else.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pytest_aikernel.runtime import ContainerSpec
from pytest_aikernel.runtime.docker import cache_volume_name, docker_client
from pytest_aikernel.services import _jvm, image_for, registry
from pytest_aikernel.services.neo4j import NO_PREALLOC
from pytest_aikernel.settings import Settings
from pytest_aikernel.stack import Stack, StackHooks
from startup import settings_from_env

#: service group -> the services it starts (the first ones are its dependencies)
GROUPS: dict[str, tuple[str, ...]] = {
    "elasticsearch": ("elasticsearch",),
    "neo4j": ("neo4j",),
    "kafka": ("zookeeper", "kafka"),
}

#: service -> variables every variant of its group gets: the neo4j stand-in starts its JVM as
#: the official image does (without its own C1 line and class-data archive)
AS_OFFICIAL: dict[str, dict[str, str]] = {"neo4j": {"AIKERNEL_NEO4J_IMAGE_EXTRAS": "off"}}

G1_OFF_SERIAL = ("-XX:-UseG1GC", "-XX:+UseSerialGC")
#: measured, not kept (docs/services.md, "JVM start-up")
NO_PERF_DATA = _jvm.Knob("no-perf-data", options=("-XX:-UsePerfData",))
KAFKA_SERIAL = "-server -XX:+UseSerialGC -Djava.awt.headless=true"


def cds_without_verify(service: str) -> _jvm.Knob:
    knob = _jvm.cds(service)
    options = tuple(o for o in knob.options if o != "-XX:+VerifySharedSpaces")
    return dataclasses.replace(knob, name="cds-no-verify", options=options)


def candidates(service: str) -> list[_jvm.Knob]:
    """Every knob measured for ``service``: the kept ones and those that were tried. A knob
    named ``<kept knob>-<something>`` is another form of that kept one."""
    out = [_jvm.cds(service), cds_without_verify(service)]
    if service == "elasticsearch":
        cli = "CLI_JAVA_OPTS"  # the launcher JVM (bin/elasticsearch's CLI)
        out += [
            # a second archive, for the launcher JVM
            dataclasses.replace(
                _jvm.cds(service, {cli: "elasticsearch-cli"}), name="cds-with-launcher"
            ),
            _jvm.Knob("c1", options=_jvm.C1.options, more={cli: _jvm.C1.options}),
            dataclasses.replace(_jvm.C1, name="c1-server-only"),
            _jvm.Knob("serial-gc", options=G1_OFF_SERIAL),
            _jvm.NO_PRETOUCH,
            _jvm.Knob("small-initial-heap", options=("-Xms64m",)),
            _jvm.Knob("xss-256k", options=("-Xss256k",)),
            NO_PERF_DATA,
            _jvm.Knob("no-ml", env={"xpack.ml.enabled": "false"}),
        ]
    elif service == "neo4j":
        out += [
            _jvm.C1,
            _jvm.UNSIGNED_JARS,
            NO_PREALLOC,
            _jvm.Knob("serial-gc", options=G1_OFF_SERIAL),
            _jvm.NO_PRETOUCH,
            _jvm.Knob("small-initial-heap", options=("-Xms64m",)),
            NO_PERF_DATA,
        ]
    else:  # zookeeper, kafka: C1 is in their KAFKA_OPTS with tuning off too
        heap = "-Xms16m -Xmx128m" if service == "zookeeper" else "-Xms32m -Xmx256m"
        out += [
            _jvm.Knob("serial-gc", env={"KAFKA_JVM_PERFORMANCE_OPTS": KAFKA_SERIAL}),
            _jvm.Knob("no-jmx-agent", env={"KAFKA_JMX_OPTS": "-Djava.awt.headless=true"}),
            _jvm.Knob("small-initial-heap", env={"KAFKA_HEAP_OPTS": heap}),
            NO_PERF_DATA,
        ]
    return out


def c2_instead_of_c1(spec: ContainerSpec) -> ContainerSpec:
    """Kafka/ZooKeeper as before C1 was added to their KAFKA_OPTS (for reference)."""
    env = dict(spec.env)
    env["KAFKA_OPTS"] = env["KAFKA_OPTS"].replace("-XX:TieredStopAtLevel=1", "").strip()
    return dataclasses.replace(spec, env=env)


@dataclasses.dataclass
class Variant:
    label: str
    settings: Settings
    #: (service, tuning-off spec) -> the spec to run; None: the plugin's own spec
    change: Callable[[str, ContainerSpec], ContainerSpec] | None = None
    #: without AS_OFFICIAL (the stand-in as it is)
    plain: bool = False


def kept(service: str, on: Settings) -> list[_jvm.Knob]:
    return list(registry()[service].jvm_knobs(on))  # type: ignore[attr-defined]


def renamed(knob: _jvm.Knob, service: str, archive: str) -> _jvm.Knob:
    """A class-data knob (or another form of it) of ``service`` with its archive named
    ``archive`` (the service's JVM's only; other JVMs' archives keep their names)."""
    current = knob.archives[0] if knob.archives else service
    if archive == current:
        return knob
    options = tuple(
        o.replace(_jvm.archive_path(current), _jvm.archive_path(archive)).replace(
            _jvm.class_list(current), _jvm.class_list(archive)
        )
        for o in knob.options
    )
    archives = tuple(archive if a == current else a for a in knob.archives)
    return dataclasses.replace(knob, options=options, archives=archives)


def with_named(
    on: Settings, keep: bool, add: str = "", drop: str = ""
) -> Callable[[str, ContainerSpec], ContainerSpec]:
    """A change of the tuning-off spec: the kept knobs (``keep``) minus ``drop``, plus the
    candidate ``add``."""

    def change(service: str, spec: ContainerSpec) -> ContainerSpec:
        # another form of a kept knob replaces it
        gone = {drop, *(k.name for k in kept(service, on) if add.startswith(k.name + "-"))}
        knobs = [k for k in kept(service, on) if k.name not in gone] if keep else []
        knobs += [k for k in candidates(service) if k.name == add and k not in knobs]
        # the archive is named after the knobs that change what it can hold, as the plugin does
        archive = ".".join([service, *(k.archive_tag for k in knobs if k.archive_tag)])
        knobs = [renamed(k, service, archive) if k.name.startswith("cds") else k for k in knobs]
        env_var = registry()[service].jvm_options_env  # type: ignore[attr-defined]
        return _jvm.with_knobs(spec, env_var, knobs)

    return change


def variants(group: str, off: Settings, on: Settings, marginal: bool = False) -> list[Variant]:
    services = GROUPS[group]
    names: list[str] = []
    for service in services:
        names += [k.name for k in candidates(service) if k.name not in names]
    kept_names: list[str] = []
    for service in services:
        kept_names += [k.name for k in kept(service, on) if k.name not in kept_names]
    out = [Variant("tuning off (baseline)", off)]
    if any(s in AS_OFFICIAL for s in services):
        out.append(Variant("tuning off, the stand-in's own JVM extras", off, plain=True))
    for name in names:
        out.append(Variant(f"+ {name}", off, with_named(on, False, add=name)))
    if marginal:
        for name in kept_names:
            out.append(Variant(f"tuning on without {name}", off, with_named(on, True, drop=name)))
        for name in names:
            if name not in kept_names:
                form = next((k for k in kept_names if name.startswith(k + "-")), "")
                label = f"tuning on, {name} for {form}" if form else f"tuning on + {name}"
                out.append(Variant(label, off, with_named(on, True, add=name)))
    if group == "kafka":
        out.append(
            Variant(
                "- C1 (C2 as well; before KAFKA_OPTS had C1)",
                off,
                lambda _s, spec: c2_instead_of_c1(spec),
            )
        )
    out.append(Variant("tuning on (kept knobs)", on))
    return out


def cpu_seconds(container_id: str) -> float:
    for path, scale in (
        (f"/sys/fs/cgroup/cpuacct/docker/{container_id}/cpuacct.usage", 1e-9),
        (f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope/cpu.stat", 1e-6),
    ):
        try:
            with open(path, encoding="ascii") as fh:
                text = fh.read()
        except OSError:
            continue
        if path.endswith("cpu.stat"):
            for line in text.splitlines():
                if line.startswith("usage_usec"):
                    return int(line.split()[1]) * scale
            continue
        return int(text.strip()) * scale
    return float("nan")


@dataclasses.dataclass
class Run:
    total: float
    #: service -> (seconds to ready and seeded, CPU seconds by then)
    per: dict[str, tuple[float, float]]


def start(variant: Variant, group: str, *, keep: Callable[[Stack], None] | None = None) -> Run:
    def change(service: str, spec: ContainerSpec) -> ContainerSpec:
        if variant.change is not None:
            spec = variant.change(service, spec)
        if not variant.plain and service in AS_OFFICIAL:
            spec = dataclasses.replace(spec, env={**spec.env, **AS_OFFICIAL[service]})
        return spec

    stack = Stack(variant.settings, hooks=StackHooks(container=change))
    began = time.monotonic()
    try:
        stack.start([GROUPS[group][-1]])
        total = time.monotonic() - began
        per = {
            name: (stack.timings[name], cpu_seconds(stack.running(name).container_id))
            for name in GROUPS[group]
        }
        if keep is not None:
            keep(stack)
    finally:
        stack.stop()
    return Run(total, per)


def wait_for_archives(
    stack: Stack, services: Iterable[str], timeout: float = 600
) -> dict[str, Any]:
    """Wait until each service's archive job has ended; its last log line, seconds, CPU."""
    out: dict[str, Any] = {}
    began = time.monotonic()
    cpu0 = {s: cpu_seconds(stack.running(s).container_id) for s in services}
    pending = set(services)
    time.sleep(_jvm.CHECK_DELAY)
    while pending and time.monotonic() - began < timeout:
        for service in sorted(pending):
            code, text = stack.runtime.exec(service, _jvm.JOB_STATUS, {})
            if code == 0 and _jvm.job_ended(text):
                last = text.strip().splitlines()[-1]
                used = cpu_seconds(stack.running(service).container_id) - cpu0[service]
                out[service] = (last, time.monotonic() - began, used)
                pending.discard(service)
        time.sleep(0.5)
    for service in pending:
        out[service] = ("still running", time.monotonic() - began, float("nan"))
    return out


def remove_archives(settings: Settings, services: Iterable[str]) -> None:
    client = docker_client()
    try:
        for service in services:
            image_id = str(client.images.get(image_for(service, settings)).id)
            name = cache_volume_name(_jvm.volume_name(service), image_id)
            try:
                client.volumes.get(name).remove(force=True)
            except Exception as exc:
                if "No such volume" not in str(exc) and "not found" not in str(exc).lower():
                    print(f"  (could not remove {name}: {exc})", file=sys.stderr)
    finally:
        client.close()


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def knob_table(
    group: str, off: Settings, on: Settings, repeat: int, marginal: bool = False
) -> None:
    services = GROUPS[group]
    vs = variants(group, off, on, marginal)
    runs: dict[str, list[Run]] = {v.label: [] for v in vs}
    loads: list[float] = []
    for r in range(repeat):
        order = vs[r % len(vs) :] + vs[: r % len(vs)]
        for v in order:
            loads.append(os.getloadavg()[0])
            runs[v.label].append(start(v, group))
        done = ", ".join(f"{runs[v.label][-1].total:.2f}" for v in vs)
        print(f"  round {r + 1}: {done}", flush=True)
    base = runs[vs[0].label]
    print(
        f"\n{group}: median of {repeat} (load average during the runs: "
        f"{min(loads):.1f}-{max(loads):.1f}, mean {statistics.mean(loads):.1f})"
    )
    head = "  variant" + " " * 40
    for s in services:
        head += f"{s + ' s':>16}{'cpu s':>8}"
    if len(services) > 1:
        head += f"{'all s':>9}"
    print(head + f"{'vs off':>9}")
    for v in vs:
        rs = runs[v.label]
        line = f"  {v.label:47s}"
        for s in services:
            line += (
                f"{median([x.per[s][0] for x in rs]):16.2f}{median([x.per[s][1] for x in rs]):8.2f}"
            )
        total = median([x.total for x in rs])
        if len(services) > 1:
            line += f"{total:9.2f}"
        change = total / median([x.total for x in base]) - 1
        print(line + f"{change:+9.0%}")


def first_run_section(group: str, on: Settings, repeat: int) -> None:
    services = GROUPS[group]
    absent: list[Run] = []
    present: list[Run] = []
    dumps: list[dict[str, Any]] = []
    for _ in range(repeat):
        remove_archives(on, services)
        made: dict[str, Any] = {}
        absent.append(
            start(
                Variant("absent", on),
                group,
                keep=lambda st, made=made: made.update(wait_for_archives(st, services)),
            )
        )
        dumps.append(made)
        present.append(start(Variant("present", on), group))
    print(
        f"\n{group}: class-data archives absent (first run) vs present, tuning on "
        f"(median of {repeat})"
    )
    for s in services:
        a = median([x.per[s][0] for x in absent])
        p = median([x.per[s][0] for x in present])
        ac = median([x.per[s][1] for x in absent])
        pc = median([x.per[s][1] for x in present])
        secs = median([d[s][1] for d in dumps if s in d])
        cpu = median([d[s][2] for d in dumps if s in d])
        last = dumps[-1].get(s, ("?",))[0]
        print(
            f"  {s:14s} absent {a:6.2f} s ({ac:5.2f} cpu s) | present {p:6.2f} s ({pc:5.2f} "
            f"cpu s) | archive made {secs:5.1f} s after ready, {cpu:5.1f} cpu s ({last})"
        )


def prepare(group: str, on: Settings, off: Settings) -> None:
    """Start the group once with tuning on and wait until its archives are there; the same for
    each candidate that has archives of its own (e.g. one for Elasticsearch's launcher JVM)."""
    runs: list[tuple[Variant, dict[str, list[_jvm.Knob]]]] = [(Variant("prepare", on), {})]
    for service in GROUPS[group]:
        own = {a for k in kept(service, on) for a in k.archives}
        for knob in candidates(service):
            if set(knob.archives) - own:
                runs.append(
                    (
                        Variant(knob.name, off, with_named(on, True, add=knob.name)),
                        {service: [knob]},
                    )
                )
    for variant, trigger in runs:
        made: dict[str, Any] = {}

        def keep(
            st: Stack, trigger: dict[str, list[_jvm.Knob]] = trigger, made: dict[str, Any] = made
        ) -> None:
            for service, knobs in trigger.items():  # tuning off: the plugin does not check
                _jvm.after_ready(st._ctx, service, knobs)
            made.update(wait_for_archives(st, GROUPS[group]))

        start(variant, group, keep=keep)
        for service, (last, secs, _cpu) in sorted(made.items()):
            print(f"  {service} ({variant.label}): {last} ({secs:.1f} s)")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the knob table (3)")
    parser.add_argument(
        "--first-run-repeat", type=int, default=2, help="absent/present pairs per group (2)"
    )
    parser.add_argument(
        "--groups", default=",".join(GROUPS), help=f"comma-separated, of {', '.join(GROUPS)}"
    )
    parser.add_argument("--skip-knobs", action="store_true", help="skip the knob table")
    parser.add_argument(
        "--marginal",
        action="store_true",
        help="also: tuning on without each kept knob, and tuning on plus each other one",
    )
    parser.add_argument("--skip-first-run", action="store_true", help="skip absent vs present")
    args = parser.parse_args()
    base = settings_from_env()
    if base.runtime != "docker":
        raise SystemExit("the archives need the Docker runtime")
    on = dataclasses.replace(base, jvm_tuning=True)
    off = dataclasses.replace(base, jvm_tuning=False)
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    print("images: " + ", ".join(f"{s}={image_for(s, base)}" for g in groups for s in GROUPS[g]))
    print(f"cores: {os.cpu_count()}, load average now: {os.getloadavg()[0]:.2f}\n")
    for group in groups:
        if not args.skip_knobs:
            print(f"{group}: making the archives (a start with tuning on, not timed)")
            prepare(group, on, off)
            knob_table(group, off, on, args.repeat, args.marginal)
            print()
        if not args.skip_first_run:
            first_run_section(group, on, args.first_run_repeat)
            print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
