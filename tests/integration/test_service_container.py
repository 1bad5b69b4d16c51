"""The service under test: the user's own image on the stack network (``aikernel_container``).

A tiny image is built once per session from the base stand-in (Debian's python3 and
python3-redis): an HTTP server answering ``/health``, ``/env`` (its environment as JSON) and
``/redis?key=K`` (PING and GET on the Redis at ``AIKERNEL_REDIS_URL``, through the stack network).
The whole-session cases (session container, report sections, xdist, reuse, Ryuk) run pytest in a
subprocess, as users do, and look at the engine's containers afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from pytest_aikernel import (
    ContainerArgumentError,
    ContainerExited,
    ContainerFactory,
    ImageUnavailable,
    RedisService,
    ServiceContainer,
    ServiceStartTimeout,
    Wait,
)
from pytest_aikernel.lease import project_id
from pytest_aikernel.runtime.docker import LABEL_OWNER, LABEL_SERVICE, LABEL_SESSION

BASE_IMAGE = "aikernel-standin/base:bookworm"
RYUK = os.environ.get("RYUK_CONTAINER_IMAGE", "")
#: the stand-in Ryuk waits this long for its clients to come back (short, for the tests)
RECONNECT = 2.0

DOCKERFILE = f"""\
FROM {BASE_IMAGE}
RUN apt-get update \\
 && apt-get install -y --no-install-recommends python3 python3-redis \\
 && rm -rf /var/lib/apt/lists/*
COPY app.py /app.py
EXPOSE 8080
CMD ["python3", "-u", "/app.py"]
"""

APP = """\
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/health":
            return self.reply(200, {"status": "ok"})
        if url.path == "/env":
            return self.reply(200, dict(os.environ))
        if url.path == "/redis":
            import redis

            client = redis.Redis.from_url(os.environ["AIKERNEL_REDIS_URL"], socket_timeout=5)
            key = parse_qs(url.query).get("key", ["greeting"])[0]
            value = client.get(key)
            return self.reply(200, {"ping": client.ping(), "value": value and value.decode()})
        return self.reply(404, {"error": "no such path: " + url.path})

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


port = int(os.environ.get("PORT", "8080"))
print(f"service-under-test listening on :{port}", flush=True)
ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()
"""


@pytest.fixture(scope="session")
def sut_image(docker_api: docker.DockerClient) -> str:
    """The service-under-test image, built once and kept under a tag naming its content."""
    try:
        base = docker_api.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.skip(f"image {BASE_IMAGE} is not in the local engine (tests/images/build)")
    digest = hashlib.sha256(f"{DOCKERFILE}\0{APP}\0{base.id}".encode()).hexdigest()[:12]
    tag = f"aikernel-test/service-under-test:{digest}"
    with contextlib.suppress(docker.errors.ImageNotFound):
        docker_api.images.get(tag)
        return tag
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, text in (("Dockerfile", DOCKERFILE), ("app.py", APP)):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    try:
        docker_api.images.build(
            fileobj=context, custom_context=True, tag=tag, pull=False, rm=True, forcerm=True
        )
    except docker.errors.BuildError as exc:
        log = "".join(str(chunk.get("stream", chunk)) for chunk in exc.build_log)
        pytest.fail(f"building {tag} failed: {exc}\n{log[-3000:]}")
    return tag


def get(url: str) -> tuple[int, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as response:
        return response.status, response.read()


def get_json(url: str) -> dict:
    status, body = get(url)
    assert status == 200
    return json.loads(body)


def labelled(client: docker.DockerClient, service: str) -> list:
    return client.containers.list(
        all=True, ignore_removed=True, filters={"label": f"{LABEL_SERVICE}={service}"}
    )


# ---- one test's container ------------------------------------------------------------------------


def test_url_answers_and_the_object_says_where_it_runs(
    aikernel_container: ContainerFactory, sut_image: str, docker_api: docker.DockerClient
) -> None:
    api = aikernel_container(sut_image, ports=(8080,), wait="/health")
    assert isinstance(api, ServiceContainer)
    assert api.host == "127.0.0.1"
    assert api.url == f"http://127.0.0.1:{api.port(8080)}"
    assert get(api.url + "/health") == (200, b'{"status": "ok"}')
    assert api.internal_host.startswith("service-under-test-")
    assert api.internal_url == f"http://{api.internal_host}:8080"
    assert "service-under-test listening on :8080" in api.logs()
    assert "GET /health" in api.logs(tail=5)
    assert api.exec(["python3", "-c", "print(6 * 7)"]) == (0, "42\n")
    raw = docker_api.containers.get(api.container_id)
    assert raw.labels[LABEL_SERVICE] == f"container:{api.internal_host}"
    assert raw.labels[LABEL_SESSION].startswith("u")
    assert raw.labels[LABEL_OWNER].split(":")[3] == str(os.getpid())
    assert raw.attrs["HostConfig"]["PortBindings"]["8080/tcp"][0]["HostIp"] == "127.0.0.1"
    with pytest.raises(ContainerArgumentError, match=r"port 9000 is not published"):
        api.port(9000)


@pytest.mark.aikernel_stack("redis", "postgres")
def test_environment_has_the_in_network_addresses_and_env_wins(
    aikernel_container: ContainerFactory,
    aikernel_redis: RedisService,
    aikernel_postgres,
    aikernel_stack,
    sut_image: str,
) -> None:
    api = aikernel_container(
        sut_image,
        ports=(8080,),
        wait=Wait.http("/health", status=200),
        env={"AIKERNEL_POSTGRES_URL": "postgresql://mine", "GREETING": "hi"},
        name="api",
    )
    env = get_json(api.url + "/env")
    assert env["AIKERNEL_REDIS_URL"] == aikernel_redis.internal_url
    assert "@redis:6379/" in env["AIKERNEL_REDIS_URL"]
    assert env["AIKERNEL_POSTGRES_URL"] == "postgresql://mine", "env= wins over the stack's"
    assert env["GREETING"] == "hi"
    internal = aikernel_stack.environment()
    assert set(internal) == set(aikernel_stack.environment(internal=False))
    for key, value in internal.items():
        assert "127.0.0.1" not in value, key
        if key != "AIKERNEL_POSTGRES_URL":
            assert env[key] == value
    assert api.internal_host == "api"
    assert api.env["GREETING"] == "hi"

    bare = aikernel_container(sut_image, ports=(8080,), wait="/health", stack_env=False)
    assert not [k for k in get_json(bare.url + "/env") if k.startswith("AIKERNEL_")]


def test_the_service_reaches_redis_through_the_stack_network(
    aikernel_container: ContainerFactory, aikernel_redis: RedisService, sut_image: str
) -> None:
    aikernel_redis.client().set("from-the-test", "over the network")
    api = aikernel_container(sut_image, ports=(8080,), wait="log:listening on :8080")
    answer = get_json(api.url + "/redis?key=from-the-test")
    assert answer == {"ping": True, "value": "over the network"}


def test_a_port_wait_passes_once_the_server_listens(
    aikernel_container: ContainerFactory, sut_image: str
) -> None:
    # the server starts listening 1.5 s after the container: Docker's port proxy accepts
    # connections before that, and the wait must not take that for ready
    api = aikernel_container(
        sut_image,
        ports=(8080,),
        wait=8080,
        command=["sh", "-c", "sleep 1.5; exec python3 -u /app.py"],
    )
    assert get(api.url + "/health")[0] == 200


# ---- failures ------------------------------------------------------------------------------------


def test_a_wait_that_never_passes_names_it_the_timeout_and_the_logs(
    aikernel_container: ContainerFactory, sut_image: str, docker_api: docker.DockerClient
) -> None:
    began = time.monotonic()
    with pytest.raises(ServiceStartTimeout) as info:
        aikernel_container(sut_image, ports=(8080,), wait="/missing", timeout=2, name="never")
    elapsed = time.monotonic() - began
    text = str(info.value)
    assert 2 <= elapsed < 10
    assert "wait for HTTP GET /missing on the first port to answer 2xx/3xx" in text
    assert "did not pass within 2 s (timeout=2 of aikernel_container)" in text
    assert "last check: GET /missing answered HTTP 404" in text
    assert "Last 50 log lines of container never" in text
    assert "  | service-under-test listening on :8080" in text
    assert info.value.service == "container:never"
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert labelled(docker_api, "container:never") == [], "a failed container is removed"


def test_a_container_that_exits_is_reported_at_once_with_code_and_logs(
    aikernel_container: ContainerFactory, sut_image: str
) -> None:
    began = time.monotonic()
    with pytest.raises(ContainerExited) as info:
        aikernel_container(
            sut_image,
            ports=(8080,),
            wait="/health",
            command=["python3", "-c", "print('boom: no config'); raise SystemExit(3)"],
            timeout=60,
        )
    assert time.monotonic() - began < 10, "not after the timeout"
    text = str(info.value)
    assert "exited with code 3" in text
    assert "  | boom: no config" in text


def test_an_image_that_cannot_be_had_is_named(aikernel_container: ContainerFactory) -> None:
    image = "aikernel-test/no-such-image:0.0.1"
    with pytest.raises(ImageUnavailable) as info:
        aikernel_container(image)
    text = str(info.value)
    assert f"the image {image!r} is not in the Docker engine and could not be pulled" in text
    assert f"docker build -t {image} ." in text
    assert "Traceback" not in text


def test_bad_arguments_fail_before_anything_starts(aikernel_container: ContainerFactory) -> None:
    with pytest.raises(ContainerArgumentError, match=r"wait=3\.5: expected None"):
        aikernel_container("any:1", ports=(8080,), wait=3.5)  # type: ignore[arg-type]
    with pytest.raises(ContainerArgumentError, match=r"port 9000 is not in ports=\(8080,\)"):
        aikernel_container("any:1", ports=(8080,), wait=Wait.port(9000))
    with pytest.raises(ContainerArgumentError, match=r"name='redis' is the network alias"):
        aikernel_container("any:1", name="redis")


# ---- whole sessions ------------------------------------------------------------------------------

RECORD = """
import os, pathlib

def record(name, value):
    pathlib.Path(os.environ["AIKTEST_OUT"], name).write_text(str(value))
"""


@pytest.fixture
def inner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sut_image: str, docker_api: docker.DockerClient
) -> Iterator[Path]:
    """The inner runs' environment: the image, an out folder, a private cache folder, fast Ryuk.
    Afterwards, every container whose id an inner test recorded is removed if still there."""
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setenv("AIKTEST_OUT", str(out))
    monkeypatch.setenv("AIKTEST_IMAGE", sut_image)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("RYUK_RECONNECTION_TIMEOUT", f"{RECONNECT:g}s")
    yield out
    for path in out.glob("id-*"):
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            docker_api.containers.get(path.read_text()).remove(force=True, v=True)


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=300)


def exists(client: docker.DockerClient, container_id: str) -> bool:
    try:
        client.containers.get(container_id)
    except docker.errors.NotFound:
        return False
    return True


def test_the_session_container_starts_once_for_two_tests_and_goes_at_the_end(
    pytester: pytest.Pytester, inner: Path, docker_api: docker.DockerClient
) -> None:
    pytester.makepyfile(
        helper=RECORD,
        test_twice="""
import os
from helper import record

def start(aikernel_session_container):
    return aikernel_session_container(os.environ["AIKTEST_IMAGE"], ports=(8080,), wait="/health")

def test_one(aikernel_session_container):
    record("id-one", start(aikernel_session_container).container_id)

def test_two(aikernel_session_container):
    record("id-two", start(aikernel_session_container).container_id)
    other = aikernel_session_container(os.environ["AIKTEST_IMAGE"], ports=(8080,), env={"X": "1"})
    record("id-other", other.container_id)
""",
    )
    result = run(pytester)
    result.assert_outcomes(passed=2)
    one, two, other = ((inner / f"id-{n}").read_text() for n in ("one", "two", "other"))
    assert one == two, "the same arguments give the same container"
    assert other != one, "other arguments give another container"
    assert not exists(docker_api, one) and not exists(docker_api, other), "removed at the end"


def test_a_failing_test_shows_its_containers_logs(pytester: pytest.Pytester, inner: Path) -> None:
    pytester.makepyfile(
        helper=RECORD,
        test_report="""
import os, urllib.request
from helper import record

IMAGE = os.environ["AIKTEST_IMAGE"]

def test_fails(aikernel_container):
    api = aikernel_container(IMAGE, ports=(8080,), wait="/health", name="api")
    record("id-api", api.container_id)
    urllib.request.urlopen(api.url + "/health?from=the-failing-test").read()
    assert False, "the service answered wrongly"

def test_passes(aikernel_container):
    api = aikernel_container(IMAGE, ports=(8080,), wait="/health", name="quiet")
    record("id-quiet", api.container_id)

def test_fails_with_the_session_one(aikernel_session_container):
    shared = aikernel_session_container(IMAGE, ports=(8080,), wait="/health", name="shared")
    record("id-shared", shared.container_id)
    assert False
""",
    )
    result = run(pytester)
    result.assert_outcomes(passed=1, failed=2)
    text = result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "*_ test_fails _*",
            "*the service answered wrongly*",
            "*- aikernel container api logs -*",
            "service-under-test listening on :8080",
            '*"GET /health?from=the-failing-test HTTP/1.1" 200*',
            "*_ test_fails_with_the_session_one _*",
            "*- aikernel container shared logs -*",
            "(a session container: the lines since this test began)",
            "service-under-test listening on :8080",
        ]
    )
    assert text.count("aikernel container api logs") == 1
    assert "aikernel container quiet logs" not in text, "a passing test shows none"


def test_containers_join_the_shared_stack_under_xdist(
    pytester: pytest.Pytester, inner: Path, docker_api: docker.DockerClient
) -> None:
    pytester.makepyfile(
        helper=RECORD,
        test_workers="""
import json, os, urllib.request
import pytest
from helper import record

@pytest.mark.parametrize("i", range(4))
def test_redis_through_the_network(aikernel_container, aikernel_redis, i):
    aikernel_redis.client().set(f"key-{i}", f"value-{i}")
    api = aikernel_container(os.environ["AIKTEST_IMAGE"], ports=(8080,), wait="/health")
    record(f"id-{i}", api.container_id)
    with urllib.request.urlopen(f"{api.url}/redis?key=key-{i}") as response:
        assert json.load(response) == {"ping": True, "value": f"value-{i}"}
""",
    )
    result = run(pytester, "-n", "2")
    result.assert_outcomes(passed=4)
    for path in inner.glob("id-*"):
        assert not exists(docker_api, path.read_text())


def test_containers_join_a_reused_stack_and_leave_it_running(
    pytester: pytest.Pytester, inner: Path, docker_api: docker.DockerClient
) -> None:
    pytester.makepyfile(
        helper=RECORD,
        test_reuse="""
import json, os, urllib.request
import pytest
from helper import record

@pytest.mark.aikernel_stack("redis")
def test_reused(aikernel_container, aikernel_stack):
    api = aikernel_container(os.environ["AIKTEST_IMAGE"], ports=(8080,), wait="/redis")
    record("id-api", api.container_id)
    record("network", aikernel_stack.runtime.network_name)
    with urllib.request.urlopen(api.url + "/redis") as response:
        assert json.load(response)["ping"] is True
""",
    )
    project = project_id(pytester.path)
    try:
        result = run(pytester, "--aikernel-reuse")
        result.assert_outcomes(passed=1)
        assert (inner / "network").read_text() == f"pytest-aikernel-r{project}"
        assert not exists(docker_api, (inner / "id-api").read_text())
        reused = docker_api.containers.list(filters={"label": f"pytest-aikernel.project={project}"})
        assert [c.labels[LABEL_SERVICE] for c in reused] == ["redis"], "the stack stays"
        assert docker_api.networks.list(names=[f"pytest-aikernel-r{project}"])
    finally:
        from pytest_aikernel.runtime.docker import remove_by_labels

        remove_by_labels(docker_api, {"pytest-aikernel.project": project})


@pytest.mark.skipif(
    not RYUK or os.environ.get("TESTCONTAINERS_RYUK_DISABLED", "").lower() == "true",
    reason="needs Ryuk on: RYUK_CONTAINER_IMAGE (the tests/images/ryuk stand-in) set and "
    "TESTCONTAINERS_RYUK_DISABLED not true",
)
def test_ryuk_reaps_the_containers_of_a_killed_run(
    pytester: pytest.Pytester, inner: Path, docker_api: docker.DockerClient
) -> None:
    pytester.makepyfile(
        helper=RECORD,
        test_hang="""
import os, time
from helper import record

def test_hang(aikernel_container):
    api = aikernel_container(os.environ["AIKTEST_IMAGE"], ports=(8080,), wait="/health")
    record("id-api", api.container_id)
    time.sleep(300)
""",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "test_hang.py"],
        cwd=pytester.path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        path = inner / "id-api"
        deadline = time.monotonic() + 120
        while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert path.exists(), "the inner run never started its container"
        container = docker_api.containers.get(path.read_text())
        (network,) = container.attrs["NetworkSettings"]["Networks"]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + RECONNECT + 30
        while exists(docker_api, container.id) and time.monotonic() < deadline:
            time.sleep(0.25)
        assert not exists(docker_api, container.id), "Ryuk removed the killed run's container"
        assert not docker_api.networks.list(names=[network]), "and the stack's network"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
