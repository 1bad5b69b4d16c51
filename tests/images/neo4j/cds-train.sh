#!/bin/bash
# Build step of the neo4j stand-in (run once by the Dockerfile, as root): start the server once
# with -XX:ArchiveClassesAtExit, run a few Cypher statements over HTTP so that the query path's
# classes are loaded too, stop it with SIGTERM (the archive is written when the JVM exits), then
# remove what the run left in /data and /logs. Later starts map the archived classes instead of
# loading and verifying them from the jars.
set -Eeuo pipefail
archive="$NEO4J_HOME/neo4j.jsa"
log=/tmp/cds-train.log

AIKERNEL_NEO4J_CDS_DUMP="$archive" NEO4J_AUTH=neo4j/cds-training \
    NEO4J_server_memory_heap_max__size=256m NEO4J_server_memory_pagecache_size=64m \
    /startup/docker-entrypoint.sh neo4j > "$log" 2>&1 &
pid=$!

for _ in $(seq 1 600); do
    grep -q 'INFO  Started\.' "$log" && break
    kill -0 "$pid" 2>/dev/null || { cat "$log"; echo "training start failed" >&2; exit 1; }
    sleep 0.5
done
grep -q 'INFO  Started\.' "$log" || { cat "$log"; echo "training start timed out" >&2; exit 1; }

# HTTP by hand (no curl in the image): bash's /dev/tcp
http_post() {
    local body="$1" auth
    auth="$(printf 'neo4j:cds-training' | base64)"
    exec 3<>/dev/tcp/127.0.0.1/7474
    printf 'POST /db/neo4j/tx/commit HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic %s\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: %s\r\nConnection: close\r\n\r\n%s' \
        "$auth" "${#body}" "$body" >&3
    cat <&3
    exec 3<&-
    echo
}
http_post '{"statements":[{"statement":"CREATE (n:Training {name: $n, v: 1}) RETURN n","parameters":{"n":"x"}},{"statement":"MATCH (n:Training) WHERE n.name = $n SET n.v = n.v + 1 RETURN n.v","parameters":{"n":"x"}},{"statement":"CREATE CONSTRAINT training IF NOT EXISTS FOR (n:Training) REQUIRE n.name IS UNIQUE"},{"statement":"SHOW CONSTRAINTS"},{"statement":"MATCH (n) DETACH DELETE n"}]}'

kill -TERM "$pid"
wait "$pid" || true
cat "$log"
ls -l "$archive"
rm -rf /data/* /logs/* /tmp/cds-train.log /tmp/neo4j-conf.* "$NEO4J_HOME"/conf/* "$NEO4J_HOME"/.cache
