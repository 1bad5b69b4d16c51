"""Start-up settings of the JVM services (Elasticsearch, Neo4j, Kafka, ZooKeeper).

Every setting is a :class:`Knob`: JVM options added to the variable the official image reads
them from (``ES_JAVA_OPTS``, ``NEO4J_server_jvm_additional``, ``KAFKA_OPTS``), other documented
variables, and volumes. ``--aikernel-jvm-tuning off`` leaves the specs as they were without any.
What each one measured: docs/services.md, "JVM start-up".

Class-data sharing (:func:`cds`) works with the same options at every start, whatever state
the archive is in: the JVM maps ``-XX:SharedArchiveFile`` when it is there and fits, and starts
without it otherwise (``-Xshare:auto``; ``-XX:+VerifySharedSpaces`` checks its checksums, so a
missing, stale or damaged file is never an error). Each start also writes the list of the
classes it loaded (``-XX:DumpLoadedClassList``, inside the container). A few seconds after the
service is ready, :func:`after_ready` starts a job in the container that looks whether the JVM
mapped the archive, else checks it with the JVM's own java and class path (``-Xshare:on ...
-version``); when that fails it makes
a static archive from the class list (``java -Xshare:dump``, niced) and renames it into the
volume, which the Docker runtime keeps per service and image. No JVM has to exit for it, so
containers are still removed with force; it needs only the image's ``java`` (JDK 11 or newer,
no ``jcmd``). Classes of custom class loaders (Elasticsearch's modules and plugins) are not in
such an archive.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from ..runtime import ContainerSpec
from ..settings import Settings
from .base import StackContext

#: where each JVM service's class-data archive volume is mounted
CDS_DIR = "/aikernel-jvm"


@dataclass(frozen=True)
class Knob:
    """One start-up setting of a JVM service."""

    name: str
    #: JVM options, appended to the service's JVM options variable
    options: tuple[str, ...] = ()
    #: JVM options for other JVMs of the container: variable -> options appended to it
    more: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: other environment variables (server settings, launcher variables)
    env: Mapping[str, str] = field(default_factory=dict)
    #: cache volumes: name -> mount path
    volumes: Mapping[str, str] = field(default_factory=dict)
    #: files put in the container before it starts: path -> (content, mode)
    files: Mapping[str, tuple[bytes, int]] = field(default_factory=dict)
    #: class-data archives (names) whose JVMs the job after the start checks
    archives: tuple[str, ...] = ()
    #: only where the runtime keeps volumes and puts files cheaply (Docker)
    docker_only: bool = False
    #: the knob changes which classes an archive can hold: the service's archive gets a name of
    #: its own with it (``<service>.<tag>``), so that an archive made without it is not kept
    archive_tag: str = ""


def archive_path(name: str) -> str:
    """The class-data archive ``name`` (a service's, or one of its other JVMs') in the container."""
    return f"{CDS_DIR}/{name}.jsa"


def class_list(name: str) -> str:
    """The classes the JVM of archive ``name`` loaded, written by it (in the container only)."""
    return f"/tmp/aikernel-jvm.{name}.classlist"


def volume_name(service: str) -> str:
    """The cache volume of ``service``'s archives (the runtime keys it by image id too)."""
    return f"jvm-{service}"


def cds_options(name: str) -> tuple[str, ...]:
    """The options of a JVM that uses (and, through the job, makes) the archive ``name``."""
    return (
        "-Xshare:auto",
        f"-XX:SharedArchiveFile={archive_path(name)}",
        # a damaged archive is then ignored; without it, the JVM may crash on one
        "-XX:+VerifySharedSpaces",
        f"-XX:DumpLoadedClassList={class_list(name)}",
        # no warnings on stdout when the archive is missing or does not fit
        "-Xlog:cds=off",
    )


def cds(service: str, others: Mapping[str, str] | None = None, archive: str = "") -> Knob:
    """Application class-data sharing from archives in a volume kept per service and image: one
    for the service's JVM (named ``archive``, by default the service), and one for each of
    ``others`` (JVM options variable -> archive name), such as the launcher JVM that starts
    Elasticsearch."""
    others = dict(others or {})
    archive = archive or service
    return Knob(
        "cds",
        options=cds_options(archive),
        more={variable: cds_options(name) for variable, name in others.items()},
        volumes={volume_name(service): CDS_DIR},
        archives=(archive, *others.values()),
        docker_only=True,
    )


#: only the first JIT compiler (C1): a start compiles far less; long-running code is slower
C1 = Knob("c1", options=("-XX:TieredStopAtLevel=1",))

#: the heap is not touched page by page at start (Elasticsearch's own options and Neo4j's
#: neo4j.conf ask for -XX:+AlwaysPreTouch): its pages are taken as the JVM uses them, so a
#: test server holds hundreds of MiB less, and the start zeroes no memory it never uses
NO_PRETOUCH = Knob("no-pretouch", options=("-XX:-AlwaysPreTouch",))

#: the security properties file of :data:`UNSIGNED_JARS` in the container
JAR_SECURITY_FILE = "/tmp/aikernel-jvm.security"
#: JDK 17's list, with the signature algorithms (RSA, DSA, EC) disabled whatever their key size
JAR_DISABLED = "MD2, MD5, RSA, DSA, EC, SHA1 denyAfter 2019-01-01"

#: signed jars on the class path are read as unsigned: the JVM checks no signature and digest
#: of them at each start, and class-data sharing can archive their classes (it leaves out the
#: classes of signed jars). It is the JDK's security property ``jdk.jar.disabledAlgorithms``
#: ("JARs signed with any of the disabled algorithms ... will be treated as unsigned", says the
#: JDK's java.security), from a properties file put in the container and named by
#: ``-Djava.security.properties``; TLS is not touched.
UNSIGNED_JARS = Knob(
    "unsigned-jars",
    options=(f"-Djava.security.properties={JAR_SECURITY_FILE}",),
    files={
        JAR_SECURITY_FILE: (
            b"# pytest-aikernel (--aikernel-jvm-tuning unsigned-jars): signed jars are read as\n"
            b"# unsigned, so that no start verifies them and class-data sharing archives them\n"
            + f"jdk.jar.disabledAlgorithms={JAR_DISABLED}\n".encode(),
            0o644,
        )
    },
    docker_only=True,
    archive_tag="unsigned",
)


def knobs(service: str, settings: Settings, kept: Iterable[Knob]) -> tuple[Knob, ...]:
    """What ``service`` starts with: nothing with ``--aikernel-jvm-tuning off``; else
    :func:`cds` and the chosen ones of ``kept``, those marked ``docker_only`` only where the
    runtime is Docker. The archive's name carries the ``archive_tag`` of the others."""
    if not settings.jvm_tuning:
        return ()
    chosen = settings.jvm_knobs
    docker = settings.runtime == "docker"
    picked = tuple(k for k in kept if k.name in chosen and (docker or not k.docker_only))
    if not docker or "cds" not in chosen:
        return picked
    archive = ".".join([service, *(k.archive_tag for k in picked if k.archive_tag)])
    return (cds(service, archive=archive), *picked)


def archive_of(knobs: Iterable[Knob]) -> str:
    """The name of the service JVM's class-data archive among ``knobs`` ("" without :func:`cds`)."""
    return next((k.archives[0] for k in knobs if k.name == "cds" and k.archives), "")


def with_knobs(spec: ContainerSpec, variable: str, knobs: Iterable[Knob]) -> ContainerSpec:
    """``spec`` with the knobs: their JVM options appended to ``env[variable]`` (and those for
    other JVMs to their variables), after what is there so that they win over it; their other
    variables and volumes added."""
    knobs = list(knobs)
    env = dict(spec.env)
    appended: dict[str, list[str]] = {}
    for knob in knobs:
        appended.setdefault(variable, []).extend(knob.options)
        for other, options in knob.more.items():
            appended.setdefault(other, []).extend(options)
    for name, added in appended.items():
        if added:
            env[name] = " ".join([*([env[name]] if env.get(name) else []), *added])
    for knob in knobs:
        env.update(knob.env)
    volumes = dict(spec.volumes)
    files = dict(spec.files)
    for knob in knobs:
        volumes.update(knob.volumes)
        files.update(knob.files)
    return replace(spec, env=env, volumes=volumes, files=files)


#: seconds the archive check waits after a service is ready, so that it does not compete with
#: the start of the services after it
CHECK_DELAY = 5.0


def after_ready(
    ctx: StackContext, service: str, knobs: Iterable[Knob], delay: float | None = None
) -> None:
    """For the archives of the knobs (:func:`cds`): after ``delay`` seconds
    (:data:`CHECK_DELAY`), in the background, make each one again unless it maps (never
    raises)."""
    if delay is None:
        delay = CHECK_DELAY
    names = [name for knob in knobs for name in knob.archives]
    if not names:
        return
    pairs = [arg for name in names for arg in (archive_path(name), class_list(name))]
    with contextlib.suppress(Exception):
        ctx.exec(
            service,
            ["sh", "-c", _LAUNCH, "aikernel-jvm", f"{delay:g}", *pairs],
            {"AIKERNEL_JVM_JOB": JOB_SCRIPT},
        )


#: starts the job detached, so that the exec returns at once
_LAUNCH = 'nohup sh -c "$AIKERNEL_JVM_JOB" aikernel-jvm-job "$@" </dev/null >/dev/null 2>&1 &'

#: a command whose output is the archive job's log, then RUNNING while the job runs: the job
#: has ended when the output is not empty and has no RUNNING (benchmarks and tests wait so)
JOB_STATUS = [
    "sh",
    "-c",
    "cat /tmp/aikernel-jvm.log 2>/dev/null; "
    "if test -d /tmp/aikernel-jvm.lock; then echo RUNNING; fi",
]


def job_ended(output: str) -> bool:
    """Whether JOB_STATUS's ``output`` says the archive job ran and has ended."""
    return bool(output.strip()) and "RUNNING" not in output


#: POSIX sh, run in the service's container: DELAY, then pairs ARCHIVE CLASS_LIST. For each
#: pair it finds the JVM started with -XX:SharedArchiveFile=ARCHIVE and reads its java, its
#: class/module path and its security properties file from its command line. Unless that java
#: maps ARCHIVE with them (``-Xshare:on``, checksums verified: absent, stale and damaged
#: archives fail) and if the archive's directory is a writable volume, it dumps a static
#: archive from the class list and moves it into place (atomic rename). Its log is
#: /tmp/aikernel-jvm.log in the container; the directory /tmp/aikernel-jvm.lock exists while it
#: runs (see JOB_STATUS).
JOB_SCRIPT = r"""
log=/tmp/aikernel-jvm.log
mkdir /tmp/aikernel-jvm.lock 2>/dev/null || exit 0
trap 'rm -rf /tmp/aikernel-jvm.lock' EXIT
exec >>"$log" 2>&1
# off the start of the services that start after this one
sleep "$1"; shift
nice=; command -v nice >/dev/null 2>&1 && nice="nice -n 19"

one() {
  archive=$1 list=$2 dir=${1%/*}
  # the JVM started with the archive (command lines are readable by any user)
  pid=
  for d in /proc/[0-9]*; do
    if tr '\0' '\n' <"$d/cmdline" 2>/dev/null | grep -qxF -e "-XX:SharedArchiveFile=$archive"; then
      pid=${d#/proc/}
    fi
  done
  [ -n "$pid" ] || { echo "no JVM started with $archive"; return; }
  [ -d "$dir" ] && [ -w "$dir" ] || { echo "$dir is not a writable directory"; return; }
  args=/tmp/aikernel-jvm.args
  tr '\0' '\n' <"/proc/$pid/cmdline" >"$args"
  java= take=
  set --
  while IFS= read -r a; do
    if [ -z "$java" ]; then java=$a; continue; fi
    if [ -n "$take" ]; then set -- "$@" "$take" "$a"; take=; continue; fi
    case $a in
      -cp|-classpath|--class-path|-p|--module-path|--upgrade-module-path|--add-modules) take=$a ;;
      --class-path=*|--module-path=*|--upgrade-module-path=*|--add-modules=*) set -- "$@" "$a" ;;
      -jar) take=-cp ;;
      # what the JVM reads as signed decides which classes an archive may hold
      -Djava.security.properties=*) set -- "$@" "$a" ;;
      -m|--module) break ;;
      -*) ;;
      *) break ;;
    esac
  done <"$args"
  rm -f "$args"
  case $java in /*) ;; *) java=$(command -v "$java") || return ;; esac
  # the JVM mapped the archive (it checked it): kept. Another user's JVM cannot be looked at
  # without ptrace rights; then a JVM of this java maps it with these paths, checksums
  # verified, or not
  if grep -qF -e "$archive" "/proc/$pid/maps" 2>/dev/null; then
    echo "$archive is in use (mapped by JVM $pid)"; return
  fi
  if [ -s "$archive" ] && $nice "$java" -Xshare:on -XX:SharedArchiveFile="$archive" \
      -XX:+VerifySharedSpaces -Xlog:cds=off "$@" -version >/dev/null 2>&1; then
    echo "$archive is in use"; return
  fi
  [ -s "$list" ] || { echo "no class list $list"; return; }
  find "$dir" -name '*.tmp.*' -mmin +60 -exec rm -f {} + 2>/dev/null
  # without the last line (the JVM may not have written all of it yet) and without lines that
  # JDK 17's parser refuses (longer than 4096 characters, such as some @lambda-proxy ones); no
  # regular expression: sed's or grep's for that takes many seconds on such a list
  sed '$d' "$list" >"$list.all"
  if command -v awk >/dev/null 2>&1; then
    awk 'length($0) < 4096' "$list.all" >"$list.done"
  else
    while IFS= read -r line; do
      [ "${#line}" -lt 4096 ] && printf '%s\n' "$line"
    done <"$list.all" >"$list.done"
  fi
  rm -f "$list.all"
  # pids repeat across containers that share the volume: the host name (the container) too
  tmp="$archive.tmp.$(hostname 2>/dev/null || cat /etc/hostname).$$"
  echo "JVM $pid has no usable $archive: dumping one with $java"
  times >/tmp/aikernel-jvm.times
  if $nice "$java" -Xshare:dump -XX:SharedClassListFile="$list.done" \
      -XX:SharedArchiveFile="$tmp" "$@" >"$list.dump.log" 2>&1 && [ -s "$tmp" ]; then
    [ "$(id -u)" = 0 ] && chown "$(stat -c %u:%g "/proc/$pid")" "$tmp" 2>/dev/null
    # the CPU time the job's children had used (user, system), before and after the dump
    times >>/tmp/aikernel-jvm.times
    echo "dump of $archive, cpu before and after: $(sed -n '2p;4p' /tmp/aikernel-jvm.times)"
    mv -f "$tmp" "$archive" && echo "made $archive"
  else
    echo "dump failed, see $list.dump.log"; rm -f "$tmp"
  fi
  rm -f "$list.done"
}

while [ "$#" -ge 2 ]; do
  one "$1" "$2"
  shift 2
done
"""
