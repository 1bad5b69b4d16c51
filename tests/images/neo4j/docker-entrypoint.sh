#!/bin/bash
# Entrypoint of the neo4j stand-in. Follows the documented behaviour of the official neo4j:5
# image's entrypoint (https://hub.docker.com/_/neo4j, Neo4j operations manual "Docker"), written
# anew, not copied:
#
#   * CMD `neo4j` starts the server; any other command is executed as given
#   * started as root: /data, /logs (and /plugins, /import, /conf, $NEO4J_HOME/conf) are given to
#     user neo4j (uid/gid 7474) where needed, then the server runs as neo4j (a --tmpfs /data works)
#   * /conf/* (a mounted config directory) is copied over $NEO4J_HOME/conf first
#   * NEO4J_AUTH=none                 -> dbms.security.auth_enabled=false
#     NEO4J_AUTH=neo4j/<password>     -> initial password of user neo4j, no change required
#     NEO4J_AUTH=neo4j/<password>/true -> the same, but the password must be changed at first login
#     (unset: Neo4j's default neo4j/neo4j with a required change); NEO4J_AUTH_PATH: read it from a file
#     The password must not be `neo4j` and must have dbms.security.auth_minimum_password_length
#     (8) characters, or the container exits with an error.
#   * every other NEO4J_<setting> variable becomes a neo4j.conf line: prefix dropped, `_` -> `.`,
#     `__` -> `_` (NEO4J_server_memory_heap_max__size=256m -> server.memory.heap.max_size=256m);
#     only names starting with a lower-case letter after the prefix are settings (NEO4J_AUTH,
#     NEO4J_ACCEPT_LICENSE_AGREEMENT, NEO4J_HOME, NEO4J_PLUGINS, ... are not)
#   * server.memory.heap.initial_size / max_size become -Xms / -Xmx and server.jvm.additional lines
#     become JVM options, as the `neo4j` launch script does; JAVA_OPTS is added as well. As in the
#     official image, NEO4J_server_jvm_additional is appended to the lines of neo4j.conf (it does
#     not replace them), and each line is split into options at whitespace (quotes group), as
#     Neo4j 5's parser of that setting does: "-XX:A -XX:B" is two options
#   * NEO4J_ACCEPT_LICENSE_AGREEMENT is ignored (Community edition)
#   * not in the official image: $NEO4J_HOME/neo4j.jsa, a class-data-sharing archive made when the
#     image was built, is used to start faster (AIKERNEL_NEO4J_CDS_DUMP=FILE writes a new one),
#     unless the JVM options choose class-data sharing themselves; neo4j.conf has a C1-only line.
#     AIKERNEL_NEO4J_IMAGE_EXTRAS=off leaves both out: the JVM starts as on the official image
set -Eeo pipefail

NEO4J_HOME="${NEO4J_HOME:-/var/lib/neo4j}"
export NEO4J_HOME

fail() { printf '%s\n' "$@" >&2; exit 1; }

running_as_root() { [[ "$(id -u)" == 0 ]]; }

# last value of a setting in a conf file (empty if absent)
conf_get() {
    local key="$1" file="$2"
    awk -v k="$key" 'index($0, k "=") == 1 { v = substr($0, length(k) + 2) } END { print v }' "$file"
}

# add a line of a setting that may be given many times (server.jvm.additional) to a conf file,
# after the lines it has already (a multi-line value gives one line per line)
conf_append() {
    local key="$1" value="$2" file="$3"
    printf '%s\n' "$value" | awk -v k="$key" 'NF { print k "=" $0 }' >> "$file"
}

# set a setting in a conf file: replaces every existing line of it (commented out or not)
conf_set() {
    local key="$1" value="$2" file="$3" tmp
    tmp="$(mktemp)"
    awk -v k="$key" '{ s = $0; sub(/^#+/, "", s) } index(s, k "=") != 1 { print }' "$file" > "$tmp"
    printf '%s=%s\n' "$key" "$value" >> "$tmp"
    cat "$tmp" > "$file"
    rm -f "$tmp"
}

# Neo4j byte size (512M, 1g, 2GiB, 1024k, 1048576) -> JVM size (512m, 1g, 2g, 1024k, 1048576)
jvm_size() {
    local v="${1//[[:space:]]/}"
    if [[ "$v" =~ ^([0-9]+)([kKmMgGtT]?)([iI]?[bB])?$ ]]; then
        printf '%s%s\n' "${BASH_REMATCH[1]}" "${BASH_REMATCH[2],,}"
    else
        fail "Invalid memory size '$1' (expected e.g. 512m or 1g)"
    fi
}

# NEO4J_AUTH / NEO4J_AUTH_PATH -> auth setting or the initial password for the launcher
setup_auth() {
    local conf="$1" auth min_len user password reset
    if [[ -n "${NEO4J_AUTH_PATH:-}" ]]; then
        [[ -r "$NEO4J_AUTH_PATH" ]] || fail "NEO4J_AUTH_PATH '$NEO4J_AUTH_PATH' is not a readable file"
        NEO4J_AUTH="$(< "$NEO4J_AUTH_PATH")"
    fi
    auth="${NEO4J_AUTH:-}"
    unset AIKERNEL_NEO4J_INITIAL_PASSWORD AIKERNEL_NEO4J_PASSWORD_CHANGE_REQUIRED
    if [[ -z "$auth" ]]; then
        return
    fi
    if [[ "$auth" == none ]]; then
        conf_set dbms.security.auth_enabled false "$conf"
        return
    fi
    if [[ "$auth" =~ ^([^/]+)/([^/]+)/?([tT][rR][uU][eE])?$ ]]; then
        user="${BASH_REMATCH[1]}"
        password="${BASH_REMATCH[2]}"
        reset="${BASH_REMATCH[3]}"
    else
        fail "Invalid value for NEO4J_AUTH: '$auth'" \
             "It must be 'none' or 'neo4j/<password>' (optionally followed by '/true')."
    fi
    [[ "$user" == neo4j ]] || fail "Invalid admin username, it must be neo4j."
    [[ "$password" != neo4j ]] || fail "Invalid value for password. It cannot be 'neo4j', which is the default."
    min_len="$(conf_get dbms.security.auth_minimum_password_length "$conf")"
    min_len="${min_len:-8}"
    if (( ${#password} < min_len )); then
        fail "Invalid value for password. The minimum password length is ${min_len} characters." \
             "If Neo4j fails to start, you can:" \
             "1) Use a stronger password." \
             "2) Set a smaller value to dbms.security.auth_minimum_password_length."
    fi
    export AIKERNEL_NEO4J_INITIAL_PASSWORD="$password"
    if [[ -n "$reset" ]]; then
        export AIKERNEL_NEO4J_PASSWORD_CHANGE_REQUIRED=true
    fi
}

# NEO4J_<setting> environment variables -> neo4j.conf
apply_env_settings() {
    local conf="$1" var setting
    while IFS= read -r var; do
        [[ "$var" =~ ^NEO4J_[a-z] ]] || continue
        [[ -n "${!var}" ]] || continue
        setting="${var#NEO4J_}"
        setting="${setting//__/$'\x01'}"
        setting="${setting//_/.}"
        setting="${setting//$'\x01'/_}"
        if [[ "$setting" == apoc.* ]]; then
            printf 'Warning: %s ignored: this image has no APOC plugin\n' "$var" >&2
            continue
        fi
        if [[ "$setting" == server.jvm.additional ]]; then
            conf_append "$setting" "${!var}" "$conf"
        else
            conf_set "$setting" "${!var}" "$conf"
        fi
    done <<< "$(compgen -e | LC_ALL=C sort)"
}

prepare_dirs_as_root() {
    local d
    mkdir -p /data /logs /plugins /import
    for d in /data /logs "$NEO4J_HOME/conf"; do
        # a fresh volume or a --tmpfs mount is owned by root
        find "$d" \! -user neo4j -exec chown neo4j:neo4j '{}' + 2>/dev/null || :
    done
    for d in /plugins /import; do
        [[ "$(stat -c %u "$d")" == 0 ]] && chown neo4j:neo4j "$d" 2>/dev/null || :
    done
}

start_neo4j() {
    local conf_dir conf heap_init heap_max opt
    local -a java_args=()

    conf_dir="$NEO4J_HOME/conf"
    if [[ ! -w "$conf_dir" ]]; then
        # e.g. --user with an arbitrary uid: work on a private copy
        local tmp_conf
        tmp_conf="$(mktemp -d /tmp/neo4j-conf.XXXXXX)"
        cp -a "$conf_dir/." "$tmp_conf/"
        conf_dir="$tmp_conf"
    fi
    export NEO4J_CONF="$conf_dir"
    conf="$conf_dir/neo4j.conf"
    # each start begins from the image's neo4j.conf (or a mounted /conf/neo4j.conf)
    cp -f /startup/neo4j.conf "$conf"
    if [[ "${AIKERNEL_NEO4J_IMAGE_EXTRAS:-on}" == off ]]; then
        # the JVM as the official image starts it: without this image's C1-only line
        sed -i '/^server\.jvm\.additional=-XX:TieredStopAtLevel=1$/d' "$conf"
    fi
    if [[ -d /conf ]] && compgen -G '/conf/*' >/dev/null; then
        cp -f /conf/* "$conf_dir/" 2>/dev/null || :
    fi

    apply_env_settings "$conf"
    setup_auth "$conf"

    for d in /data /logs; do
        [[ -w "$d" ]] || fail "Folder $d is not accessible for user: $(id -u) or group $(id -g)."
    done

    heap_init="$(conf_get server.memory.heap.initial_size "$conf")"
    heap_init="${heap_init:-$(conf_get dbms.memory.heap.initial_size "$conf")}"
    heap_max="$(conf_get server.memory.heap.max_size "$conf")"
    heap_max="${heap_max:-$(conf_get dbms.memory.heap.max_size "$conf")}"
    [[ -z "$heap_init" ]] || java_args+=("-Xms$(jvm_size "$heap_init")")
    [[ -z "$heap_max" ]] || java_args+=("-Xmx$(jvm_size "$heap_max")")
    # (command substitutions, not <(...): java becomes PID 1 and would not reap a leftover child)
    local line
    while IFS= read -r line; do
        [[ -n "$line" ]] || continue
        # whitespace separates options; '...' or "..." keep one with spaces (xargs' quoting)
        while IFS= read -r opt; do
            [[ -n "$opt" ]] && java_args+=("$opt")
        done <<< "$(printf '%s\n' "$line" | xargs printf '%s\n')"
    done <<< "$(awk 'index($0, "server.jvm.additional=") == 1 { print substr($0, 23) }' "$conf")"
    if [[ -n "${JAVA_OPTS:-}" ]]; then
        # shellcheck disable=SC2206
        java_args+=($JAVA_OPTS)
    fi

    # class-data sharing: the image has an archive of the classes a start loads (made at build
    # time by cds-train.sh); the JVM ignores it (-Xshare:auto) if the options do not fit it. Not
    # used when the options already choose class-data sharing themselves (an archive of their
    # own, -Xshare:...), as they would on the official image, which has no such archive
    local own_cds=""
    [[ "${AIKERNEL_NEO4J_IMAGE_EXTRAS:-on}" == off ]] && own_cds=1
    for opt in "${java_args[@]}"; do
        case "$opt" in
            -XX:SharedArchiveFile=*|-XX:ArchiveClassesAtExit=*|-Xshare:*) own_cds=1 ;;
        esac
    done
    if [[ -n "$own_cds" ]]; then
        :
    elif [[ -n "${AIKERNEL_NEO4J_CDS_DUMP:-}" ]]; then
        # (its warnings list thousands of classes that cannot be archived, e.g. from signed jars)
        java_args+=("-XX:ArchiveClassesAtExit=$AIKERNEL_NEO4J_CDS_DUMP" -Xlog:cds=off -Xlog:cds+dynamic=off)
    elif [[ -f "$NEO4J_HOME/neo4j.jsa" ]]; then
        java_args+=("-XX:SharedArchiveFile=$NEO4J_HOME/neo4j.jsa" -Xlog:cds=off -Xlog:cds+dynamic=off)
    fi

    cd "$NEO4J_HOME"
    # the class path is a fixed, sorted list of the jars (CDS needs the same one every time)
    exec java "${java_args[@]}" -Dfile.encoding=UTF-8 -cp "$(< "$NEO4J_HOME/classpath")" Launcher
}

if [[ "${1:-}" == -* ]]; then
    set -- neo4j "$@"
fi

if [[ "${1:-}" == neo4j ]] && [[ "${2:-console}" == console ]]; then
    if running_as_root; then
        prepare_dirs_as_root
        export HOME=/var/lib/neo4j
        exec setpriv --reuid=neo4j --regid=neo4j --init-groups "$0" "$@"
    fi
    start_neo4j
fi

exec "$@"
