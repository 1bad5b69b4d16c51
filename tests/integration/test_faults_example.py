"""The worked example of docs/faults.md: a retry policy tested against a Postgres outage."""

from __future__ import annotations

import threading
import time

import psycopg


def read_with_retry(dsn: str, attempts: int = 30, delay: float = 0.1) -> tuple[int, int]:
    """The code under test: retry a failed read up to ``attempts`` times."""
    tried = 0
    while True:
        tried += 1
        try:
            with psycopg.connect(dsn, connect_timeout=1) as conn:
                row = conn.execute("SELECT 42").fetchone()
                assert row is not None
                return int(row[0]), tried
        except psycopg.OperationalError:
            if tried >= attempts:
                raise
            time.sleep(delay)


def test_reads_survive_a_database_outage(aikernel_postgres):
    aikernel_postgres.stop()
    back = threading.Timer(1.0, aikernel_postgres.start)
    back.start()
    began = time.monotonic()
    value, tried = read_with_retry(aikernel_postgres.dsn())
    back.join()
    assert value == 42
    assert tried > 1  # the first attempts failed
    assert time.monotonic() - began >= 1.0  # and it waited for the database
