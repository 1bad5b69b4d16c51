#!/bin/bash
# Entrypoint of the Elasticsearch stand-in. Written from the documented behaviour of the official
# docker.elastic.co/elasticsearch/elasticsearch:8 image (not copied from it):
#
#   * `docker run IMAGE` / `docker run IMAGE -Efoo=bar` -> eswrapper [-Efoo=bar]: the server;
#     any other command is executed as given (`docker run IMAGE bin/elasticsearch-keystore list`)
#   * environment variables become settings (-E), in either form:
#       lower-case, dot-separated:            cluster.name=test, discovery.type=single-node
#       ES_SETTING_ + upper-case, `_` for `.`, `__` for `_`:  ES_SETTING_CLUSTER_NAME=test
#     (empty values are ignored; a setting also given as an -E argument is not added twice)
#   * ES_JAVA_OPTS (e.g. "-Xms512m -Xmx512m") is read by bin/elasticsearch itself
#   * ELASTIC_PASSWORD / ELASTIC_PASSWORD_FILE: bootstrap password of the `elastic` user
#     (keystore entry bootstrap.password), KEYSTORE_PASSWORD(_FILE) for a protected keystore
#   * ES_LOG_STYLE=console (default: JSON logs on stdout) or file (logs/ inside the container)
#   * config: cluster.name=docker-cluster, network.host=0.0.0.0 (config/elasticsearch.yml)
#
# Stand-in specifics:
#   * xpack.* settings of X-Pack features this distribution does not contain (it has x-pack-core
#     and x-pack-security only) are dropped with a log line instead of failing the start with
#     "unknown setting"; the kept ones are listed in /usr/share/elasticsearch/standin/known-xpack
#   * started as root (the official image refuses to), it makes data/ and logs/ writable and
#     drops to elasticsearch (uid 1000, gid 0) instead
set -e -o pipefail

ES_HOME=/usr/share/elasticsearch
KNOWN_XPACK="$ES_HOME/standin/known-xpack"
cd "$ES_HOME"

log() { printf '[docker-entrypoint] %s\n' "$*" >&2; }

# files created by Elasticsearch stay group writable (gid 0), as in the official image
umask 0002

if [[ $# -eq 0 || "${1:0:1}" == - ]]; then
    set -- eswrapper "$@"
fi

if [[ "$1" != eswrapper ]]; then
    exec "$@"
fi
shift

if [[ "$(id -u)" == 0 ]]; then
    log "started as root: running Elasticsearch as elasticsearch (uid 1000, gid 0)"
    for d in "$ES_HOME/data" "$ES_HOME/logs" "$ES_HOME/config"; do
        find "$d" \! -user 1000 -exec chown 1000:0 '{}' + 2>/dev/null || :
    done
    exec setpriv --reuid=1000 --regid=0 --clear-groups "$0" eswrapper "$@"
fi

# the JVM is ES_JAVA_HOME (set in the image); JAVA_HOME would only make the bin/ scripts warn
unset JAVA_HOME

# ELASTIC_PASSWORD_FILE, KEYSTORE_PASSWORD_FILE -> ELASTIC_PASSWORD, KEYSTORE_PASSWORD
# shellcheck disable=SC1091
source "$ES_HOME/bin/elasticsearch-env-from-file"

# ---- settings from the environment -------------------------------------------------------------
declare -a env_opts=()
while IFS= read -r -d '' entry; do
    key="${entry%%=*}"
    value="${entry#*=}"
    [[ -n "$value" ]] || continue
    if [[ "$key" =~ ^[a-z0-9_]+\.[a-z0-9_]+ ]]; then
        env_opts+=("-E$key=$value")
    elif [[ "$key" =~ ^ES_SETTING(_{1,2}[A-Z0-9]+)+$ ]]; then
        key="${key#ES_SETTING_}"
        key="${key//__/$'\x01'}"
        key="${key//_/.}"
        key="${key//$'\x01'/_}"
        env_opts+=("-E${key,,}=$value")
    fi
done < <(env -0)

has_arg() {
    local want="$1" a
    shift
    for a in "$@"; do [[ "$a" == "$want" ]] && return 0; done
    return 1
}

declare -a args=()
for opt in "${env_opts[@]}"; do
    has_arg "$opt" "$@" || args+=("$opt")
done
args+=("$@")

# ---- xpack.* settings this distribution does not know ------------------------------------------
xpack_known() {
    local key="$1" line
    while IFS= read -r line; do
        [[ -z "$line" || "$line" == \#* ]] && continue
        # a line ending in `*` is a prefix (namespaces with many or dynamic keys)
        if [[ "$line" == *'*' ]]; then
            [[ "$key" == "${line%\*}"* ]] && return 0
        elif [[ "$key" == "$line" ]]; then
            return 0
        fi
    done < "$KNOWN_XPACK"
    return 1
}

declare -a final=()
i=0
while (( i < ${#args[@]} )); do
    a="${args[i]}"
    key=""
    if [[ "$a" == -E?* ]]; then
        key="${a#-E}"; key="${key%%=*}"
    elif [[ "$a" == -E ]] && (( i + 1 < ${#args[@]} )); then
        key="${args[i+1]%%=*}"
    fi
    if [[ "$key" == xpack.* ]] && ! xpack_known "$key"; then
        log "dropping setting $key: this Elasticsearch distribution (integ-test-zip) has no X-Pack module for it"
        [[ "$a" == -E ]] && i=$((i + 1))
    else
        final+=("$a")
        [[ "$a" == -E ]] && final+=("${args[i+1]}") && i=$((i + 1))
    fi
    i=$((i + 1))
done

# ---- bootstrap password of the elastic user ----------------------------------------------------
if [[ -n "${ELASTIC_PASSWORD:-}" ]]; then
    [[ -f config/elasticsearch.keystore ]] || bin/elasticsearch-keystore create
    if ! bin/elasticsearch-keystore has-passwd --silent; then
        if ! bin/elasticsearch-keystore list | grep -q '^bootstrap.password$'; then
            printf '%s\n' "$ELASTIC_PASSWORD" | bin/elasticsearch-keystore add -x bootstrap.password
        fi
    elif ! printf '%s\n' "${KEYSTORE_PASSWORD:-}" | bin/elasticsearch-keystore list | grep -q '^bootstrap.password$'; then
        printf '%s\n%s\n' "${KEYSTORE_PASSWORD:-}" "$ELASTIC_PASSWORD" \
            | bin/elasticsearch-keystore add -x bootstrap.password
    fi
fi

case "${ES_LOG_STYLE:-console}" in
    console) ;;
    file) cp -f config/log4j2.file.properties config/log4j2.properties ;;
    *) log "ERROR: ES_LOG_STYLE set to [$ES_LOG_STYLE]. Expected [console] or [file]"; exit 1 ;;
esac

if [[ -n "${ENROLLMENT_TOKEN:-}" ]]; then
    final+=(--enrollment-token "$ENROLLMENT_TOKEN")
fi

exec bin/elasticsearch "${final[@]}" <<<"${KEYSTORE_PASSWORD:-}"
