"""The catalog service's HTTP API (standard library server; psycopg and redis clients).

POST /items?name=N   store an item (PostgreSQL) and count it (Redis)
GET  /items          the stored item names, sorted
GET  /count          the cached count
GET  /health         200 once the service answers
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg
import redis

from .config import Config, load


class Catalog:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.cache = redis.Redis.from_url(config.redis_url)
        self._lock = threading.Lock()

    def add(self, name: str) -> None:
        with psycopg.connect(self.config.postgres_dsn) as conn:
            conn.execute("INSERT INTO catalog.items (name) VALUES (%s)", (name,))
        self.cache.incr("items:count")

    def names(self) -> list[str]:
        with psycopg.connect(self.config.postgres_dsn) as conn:
            rows = conn.execute("SELECT name FROM catalog.items ORDER BY name").fetchall()
        return [row[0] for row in rows]

    def count(self) -> int:
        return int(self.cache.get("items:count") or 0)


def make_server(catalog: Catalog, host: str = "0.0.0.0", port: int = 8000) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path == "/health":
                self._send(200, {"status": "ok"})
            elif path == "/items":
                self._send(200, catalog.names())
            elif path == "/count":
                self._send(200, catalog.count())
            else:
                self._send(404, {"error": path})

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            name = parse_qs(url.query).get("name", [""])[0]
            if url.path != "/items" or not name:
                self._send(400, {"error": "POST /items?name=NAME"})
                return
            catalog.add(name)
            self._send(201, {"name": name})

        def log_message(self, format: str, *args: Any) -> None:
            sys.stderr.write(f"catalog: {format % args}\n")

    return ThreadingHTTPServer((host, port), Handler)


def main() -> None:
    server = make_server(Catalog(load()))
    host, port = server.server_address[:2]
    print(f"catalog: listening on {host}:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
