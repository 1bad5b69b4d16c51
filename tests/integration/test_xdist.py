"""One stack for all pytest-xdist workers, and reuse of a stack across runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import docker
import pytest

from .conftest import containers_of, networks_of

WORKER_TESTS = """
import json, os, pathlib, uuid
import docker, pytest

SERVICES = os.environ["AIKTEST_SERVICES"].split(",")

@pytest.mark.aikernel_stack(*SERVICES)
@pytest.mark.parametrize("i", range(12))
def test_worker(aikernel_stack, aikernel_pg, aikernel_redis_db, aikernel_vault_path, request, i):
    client = docker.from_env()
    found = client.containers.list(
        all=True, filters={"label": "pytest-aikernel.session=" + aikernel_stack.session_id})
    seen = {c.labels["pytest-aikernel.service"]: c.id for c in found}
    client.close()
    # one name per test, across services
    stem = aikernel_pg.scope_name
    assert stem.startswith("aik_" + os.environ["PYTEST_XDIST_WORKER"] + "_")
    assert aikernel_pg.database == stem == aikernel_redis_db.scope_name
    assert aikernel_vault_path.prefix == "tests/" + stem
    # no test sees another's data
    assert aikernel_pg.execute("SELECT count(*) FROM catalog.resources").fetchone() == (1,)
    aikernel_pg.execute("INSERT INTO catalog.resources (name) VALUES (%s)", (str(i),))
    aikernel_pg.commit()
    assert aikernel_redis_db.dbsize() == 0
    aikernel_redis_db.set("mine", i)
    aikernel_vault_path.write("x", i=i)
    if "kafka" in SERVICES:
        topic = request.getfixturevalue("aikernel_kafka_topic")("t")
        assert topic == stem + ".t"
        admin = aikernel_stack["kafka"].admin()
        mine = [t for t in admin.list_topics(timeout=10).topics if t.endswith(".t")]
        assert topic in mine
    if "elasticsearch" in SERVICES:
        prefix = request.getfixturevalue("aikernel_es_index")
        assert prefix.prefix == stem + "-"
        from pytest_aikernel import _http
        url = aikernel_stack["elasticsearch"].url
        assert _http.request("PUT", f"{url}/{prefix.name('docs')}").ok
        listed = _http.request("GET", f"{url}/_cat/indices/{prefix.prefix}*?format=json").json()
        assert [x["index"] for x in listed] == [prefix.name("docs")]
    if "neo4j" in SERVICES:
        session = request.getfixturevalue("aikernel_neo4j_session")
        assert session.run("MATCH (n:WorkerNode) RETURN count(n) AS c").single()["c"] == 0
        session.run("CREATE (:WorkerNode {i: $i})", i=i).consume()
    out = pathlib.Path(os.environ["AIKTEST_OUT"]) / f"{uuid.uuid4().hex}.json"
    out.write_text(json.dumps({"worker": os.environ.get("PYTEST_XDIST_WORKER"),
                               "session": aikernel_stack.session_id, "containers": seen}))
"""


def run_workers(pytester: pytest.Pytester, out: Path, *args: str) -> pytest.RunResult:
    out.mkdir(exist_ok=True)
    pytester.makepyfile(test_workers=WORKER_TESTS)
    pytester.path.joinpath("catalog.sql").write_text(
        "CREATE TABLE catalog.resources (name text); INSERT INTO catalog.resources VALUES ('s');"
    )
    return pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-n",
        "4",
        "--aikernel-postgres-init=catalog.sql",
        *args,
        timeout=600,
    )


def records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in out.glob("*.json")]


#: every service that has a stand-in image (Kibana and Grafana have none)
STANDINS = (
    "postgres",
    "postgres-replica",
    "redis",
    "redis-replica",
    "vault",
    "neo4j",
    "elasticsearch",
    "zookeeper",
    "kafka",
    "prometheus",
    "jaeger",
)


def test_four_workers_share_one_stack(
    pytester: pytest.Pytester, docker_api: docker.DockerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = pytester.path / "out"
    monkeypatch.setenv("AIKTEST_OUT", str(out))
    monkeypatch.setenv("AIKTEST_SERVICES", ",".join(STANDINS))
    result = run_workers(pytester, out)
    result.assert_outcomes(passed=12)
    seen = records(out)
    assert len({r["worker"] for r in seen}) == 4
    sessions = {r["session"] for r in seen}
    assert len(sessions) == 1
    ids: dict[str, set[str]] = {}
    for r in seen:
        for service, cid in r["containers"].items():
            ids.setdefault(service, set()).add(cid)
    assert sorted(ids) == sorted(STANDINS)
    assert all(len(v) == 1 for v in ids.values()), f"each container made once: {ids}"
    session = sessions.pop()
    assert containers_of(docker_api, session) == {}
    assert networks_of(docker_api, session) == []


def test_reuse_attaches_to_the_same_stack_and_down_removes_it(
    pytester: pytest.Pytester,
    docker_api: docker.DockerClient,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    out = pytester.path / "out"
    monkeypatch.setenv("AIKTEST_OUT", str(out))
    monkeypatch.setenv("AIKTEST_SERVICES", "postgres,redis,vault")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = run_workers(pytester, out, "--aikernel-reuse")
    first.assert_outcomes(passed=12)
    first_ids = {cid for r in records(out) for cid in r["containers"].values()}
    session = records(out)[0]["session"]
    assert set(containers_of(docker_api, session)) == {"postgres", "redis", "vault"}
    try:
        for p in out.glob("*.json"):
            p.unlink()
        second = run_workers(pytester, out, "--aikernel-reuse")
        second.assert_outcomes(passed=12)
        assert {cid for r in records(out) for cid in r["containers"].values()} == first_ids
        # a dead container makes the stack untrusted: it is replaced
        docker_api.containers.get(next(iter(first_ids))).kill()
        for p in out.glob("*.json"):
            p.unlink()
        third = run_workers(pytester, out, "--aikernel-reuse")
        third.assert_outcomes(passed=12)
        third_ids = {cid for r in records(out) for cid in r["containers"].values()}
        assert len(first_ids & third_ids) == 2, "only the dead container is replaced"
        live = {c.id for c in docker_api.containers.list(all=True)}
        assert not (first_ids - third_ids) & live, "the dead container is removed"
    finally:
        down = pytester.run(sys.executable, "-m", "pytest_aikernel", "down", timeout=120)
        assert down.ret == 0, down.stderr.str()
    for r in records(out):
        assert containers_of(docker_api, r["session"]) == {}
