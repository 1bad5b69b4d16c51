"""Network faults through a real Toxiproxy (``aikernel_faults``), seen through the real clients.

Each test gets proxies of its own: the service's direct address stays fast while its proxied
path is degraded, and another xdist worker's proxied path is not touched at all.
"""

from __future__ import annotations

import os
import time

import pytest
import redis

from pytest_aikernel import FaultError

from .test_lifecycle import RECORD, env, out, run  # noqa: F401 - env is a fixture


def _timed(fn: object) -> float:
    began = time.monotonic()
    fn()  # type: ignore[operator]
    return time.monotonic() - began


def test_latency_slows_only_the_proxied_path(aikernel_faults, aikernel_postgres):
    pg = aikernel_faults.proxied("postgres")
    assert (pg.host, pg.internal_host) == ("127.0.0.1", "toxiproxy")
    assert pg.port != aikernel_postgres.port
    with (
        pg.connect("postgres", autocommit=True) as conn,
        aikernel_postgres.connect("postgres", autocommit=True) as direct,
    ):
        conn.execute("SELECT 1")
        with aikernel_faults.latency("postgres", 300):
            slow = _timed(lambda: conn.execute("SELECT 1").fetchone())
            unaffected = _timed(lambda: direct.execute("SELECT 1").fetchone())
        after = min(_timed(lambda: conn.execute("SELECT 1").fetchone()) for _ in range(3))
    # both directions: at least 300 ms (one toxic per direction adds up)
    assert slow >= 0.3, slow
    assert unaffected < 0.05, unaffected
    assert after < 0.05, after


def test_one_direction_and_until_the_test_ends(aikernel_faults, aikernel_toxiproxy):
    r = aikernel_faults.proxied("redis")
    client = r.client()
    client.ping()
    toxic = aikernel_faults.latency("redis", 200, direction="upstream")
    assert _timed(client.ping) >= 0.2
    listed = aikernel_toxiproxy.api("GET", "/proxies").json()
    ours = [p for name, p in listed.items() if name.startswith(aikernel_faults.scope_name)]
    assert [t["stream"] for p in ours for t in p["toxics"]] == ["upstream"]
    toxic.remove()
    assert _timed(client.ping) < 0.05


def test_what_a_test_leaves_is_gone_for_the_next(pytester, env):  # noqa: F811
    pytester.makepyfile(
        RECORD
        + """
import time

def test_leaves_everything(aikernel_faults):
    aikernel_faults.proxied("redis")
    aikernel_faults.latency("redis", 1000)
    aikernel_faults.down("redis")
    record("scope", aikernel_faults.scope_name)

def test_next(aikernel_faults, aikernel_toxiproxy, aikernel_redis):
    scope = wait_for("scope")
    names = list(aikernel_toxiproxy.api("GET", "/proxies").json())
    assert not [n for n in names if n.startswith(scope)], names
    r = aikernel_faults.proxied("redis")
    began = time.monotonic()
    r.client().ping()
    record("took", time.monotonic() - began)
"""
    )
    result = run(pytester)
    result.assert_outcomes(passed=2)
    assert float(out("took")) < 0.1


def test_down_refuses_then_heals(aikernel_faults):
    r = aikernel_faults.proxied("redis")
    assert r.client().ping()
    with aikernel_faults.down("redis"), pytest.raises(redis.exceptions.ConnectionError):
        r.client(socket_connect_timeout=2).ping()
    assert r.client().ping()


def test_timeout_reset_peer_and_limit_data(aikernel_faults):
    r = aikernel_faults.proxied("redis")
    silent = r.client(socket_timeout=1, socket_connect_timeout=1, retry=None)
    with (
        aikernel_faults.timeout("redis", 0),
        pytest.raises((redis.exceptions.TimeoutError, redis.exceptions.ConnectionError)),
    ):
        silent.ping()
    with (
        aikernel_faults.reset_peer("redis"),
        pytest.raises(redis.exceptions.ConnectionError),
    ):
        r.client(socket_timeout=2, retry=None).ping()
    client = r.client(socket_timeout=2, retry=None)
    client.set("big", "x" * 10_000)
    with (
        aikernel_faults.limit_data("redis", 64, direction="downstream"),
        pytest.raises(redis.exceptions.ConnectionError),
    ):
        r.client(socket_timeout=2, retry=None).get("big")
    assert r.client().ping()


def test_bandwidth(aikernel_faults, aikernel_redis):
    aikernel_redis.client().set("blob", b"x" * 100_000)
    r = aikernel_faults.proxied("redis")
    client = r.client()
    fast = _timed(lambda: client.get("blob"))
    with aikernel_faults.bandwidth("redis", 200, direction="downstream"):
        slow = _timed(lambda: r.client().get("blob"))
    # 100 kB at 200 KB/s: about half a second
    assert slow >= 0.35, slow
    assert fast < 0.2, fast


def test_in_network_path_goes_through_the_proxy(aikernel_faults, aikernel_container):
    r = aikernel_faults.proxied("redis")
    image = os.environ.get("AIKERNEL_IMAGE_REDIS", "redis:7")
    box = aikernel_container(image, command=("sleep", "600"), stack_env=False)
    ping = ["redis-cli", "-h", r.internal_host, "-p", str(r.internal_port), "-a", r.password]
    assert "PONG" in box.exec([*ping, "ping"]).output
    with aikernel_faults.down("redis"):
        result = box.exec([*ping, "ping"])
        assert "PONG" not in result.output
    assert "PONG" in box.exec([*ping, "ping"]).output


def test_neo4j_both_ports_are_proxied(aikernel_faults, aikernel_neo4j):
    proxied = aikernel_faults.proxied("neo4j")
    assert proxied.bolt_port != aikernel_neo4j.bolt_port
    assert proxied.http_port != aikernel_neo4j.http_port
    with proxied.driver() as driver:
        driver.verify_connectivity()
        assert driver.execute_query("RETURN 1 AS one").records[0]["one"] == 1


def test_bad_input_names_the_call(aikernel_faults):
    with pytest.raises(FaultError, match=r"toxic\('redis', 'nope'\): unknown toxic; known"):
        aikernel_faults.toxic("redis", "nope")
    with pytest.raises(FaultError, match=r"latency\('redis'\): ms must be a whole number >= 0"):
        aikernel_faults.latency("redis", -5)
    with pytest.raises(FaultError, match="direction must be one of"):
        aikernel_faults.latency("redis", 5, direction="sideways")
    with pytest.raises(FaultError, match="unknown attribute color"):
        aikernel_faults.toxic("redis", "latency", color=1)
    with pytest.raises(FaultError, match="no such service; known services"):
        aikernel_faults.proxied("mysql")
    with pytest.raises(FaultError, match="a proxy cannot stand in front of kafka"):
        aikernel_faults.proxied("kafka")


def test_toxics_of_one_worker_do_not_reach_another(pytester, env):  # noqa: F811
    """Under xdist, two tests on two workers proxy Redis at once: one with a 2 s latency, the
    other measures its own proxied path and the direct one while that toxic is in place."""
    pytester.makepyfile(
        RECORD
        + """
import time

def _worker():
    import os
    return os.environ["PYTEST_XDIST_WORKER"]

def test_slow(aikernel_faults):
    r = aikernel_faults.proxied("redis")
    with aikernel_faults.latency("redis", 2000):
        record("slow-" + _worker(), "in place")
        wait_for("measured")
        began = time.monotonic()
        r.client().ping()
        record("slow-took", time.monotonic() - began)

def test_fast(aikernel_faults, aikernel_redis):
    r = aikernel_faults.proxied("redis")
    r.client().ping()
    import os, pathlib
    deadline = time.monotonic() + 120
    while not any(p.name.startswith("slow-gw") for p in pathlib.Path(os.environ["AIKTEST_OUT"]).iterdir()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert not pathlib.Path(os.environ["AIKTEST_OUT"], "slow-" + _worker()).exists()
    began = time.monotonic()
    r.client().ping()
    aikernel_redis.client().ping()
    record("fast-took", time.monotonic() - began)
    record("measured", "yes")
"""
    )
    result = run(pytester, "-n", "2")
    result.assert_outcomes(passed=2)
    assert float(out("fast-took")) < 0.1
    assert float(out("slow-took")) >= 2.0
