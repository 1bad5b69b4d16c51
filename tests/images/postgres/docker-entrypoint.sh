#!/bin/bash
# Entrypoint of the postgres stand-in. Written from the documented behaviour of the official
# postgres:15 image (https://hub.docker.com/_/postgres), not copied from it:
#
#   POSTGRES_PASSWORD          superuser password; required unless POSTGRES_HOST_AUTH_METHOD=trust
#   POSTGRES_USER              superuser name (default postgres)
#   POSTGRES_DB                database created on first start (default: $POSTGRES_USER)
#   POSTGRES_INITDB_ARGS       extra initdb arguments (shell words, e.g. "--no-sync -E UTF8")
#   POSTGRES_INITDB_WALDIR     separate WAL directory
#   POSTGRES_HOST_AUTH_METHOD  method of the appended `host all all all` pg_hba line
#                              (default: the server's password_encryption, scram-sha-256)
#   PGDATA                     cluster directory (default /var/lib/postgresql/data)
#   *_FILE variants of POSTGRES_PASSWORD/USER/DB/INITDB_ARGS read the value from a file.
#
# First start (no $PGDATA/PG_VERSION): initdb, pg_hba line, a temporary server on the unix socket
# only, create POSTGRES_DB, run /docker-entrypoint-initdb.d/*, stop it, then exec the real server.
# no `set -u`: sourced *.sh init scripts run in this shell and may use unset variables
set -Eeo pipefail

log() { printf '%s\n' "$*"; }
fail() { printf 'error: %s\n' "$*" >&2; exit 1; }

# VAR_FILE -> VAR (both set is an error)
read_env_file() {
    local var="$1" fvar="${1}_FILE" def="${2:-}"
    if [[ -n "${!var:-}" && -n "${!fvar:-}" ]]; then
        fail "both $var and $fvar are set (but are exclusive)"
    fi
    local val="$def"
    if [[ -n "${!var:-}" ]]; then
        val="${!var}"
    elif [[ -n "${!fvar:-}" ]]; then
        val="$(< "${!fvar}")"
    fi
    export "$var"="$val"
    unset "$fvar"
}

# `docker run IMAGE -c fsync=off` means `postgres -c fsync=off`
if [[ "${1:-}" == -* ]]; then
    set -- postgres "$@"
fi

# postgres -V / --help / --describe-config only print something: do not initialise for them
wants_help() {
    local a
    for a in "$@"; do
        case "$a" in
            -'?'|--help|--describe-config|-V|--version) return 0 ;;
        esac
    done
    return 1
}

make_dirs() {
    mkdir -p "$PGDATA"
    chmod 0700 "$PGDATA" 2>/dev/null || :
    mkdir -p /var/run/postgresql || :
    chmod 3777 /var/run/postgresql 2>/dev/null || :
    if [[ -n "${POSTGRES_INITDB_WALDIR:-}" ]]; then
        mkdir -p "$POSTGRES_INITDB_WALDIR"
        chmod 0700 "$POSTGRES_INITDB_WALDIR" 2>/dev/null || :
    fi
    if [[ "$(id -u)" == 0 ]]; then
        # a fresh volume or a --tmpfs mount is owned by root
        find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' +
        find /var/run/postgresql \! -user postgres -exec chown postgres:postgres '{}' +
        if [[ -n "${POSTGRES_INITDB_WALDIR:-}" ]]; then
            find "$POSTGRES_INITDB_WALDIR" \! -user postgres -exec chown postgres:postgres '{}' +
        fi
    fi
}

check_env() {
    if [[ -z "$POSTGRES_PASSWORD" && "${POSTGRES_HOST_AUTH_METHOD:-}" != trust ]]; then
        cat >&2 <<'EOM'
Error: Database is uninitialized and superuser password is not specified.
       You must specify POSTGRES_PASSWORD to a non-empty value for the
       superuser. For example, "-e POSTGRES_PASSWORD=password" on "docker run".

       You may also use "POSTGRES_HOST_AUTH_METHOD=trust" to allow all
       connections without a password. This is *not* recommended.
EOM
        exit 1
    fi
    if [[ "${POSTGRES_HOST_AUTH_METHOD:-}" == trust ]]; then
        log 'WARNING: POSTGRES_HOST_AUTH_METHOD=trust: every host may connect without a password.' >&2
    fi
}

run_initdb() {
    local -a args=(--username="$POSTGRES_USER")
    local pwfile=""
    if [[ -n "$POSTGRES_PASSWORD" ]]; then
        pwfile="$(mktemp)"
        printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
        args+=(--pwfile="$pwfile")
    fi
    if [[ -n "${POSTGRES_INITDB_WALDIR:-}" ]]; then
        args+=(--waldir="$POSTGRES_INITDB_WALDIR")
    fi
    # POSTGRES_INITDB_ARGS is a string of shell words (quotes allowed), hence eval
    local -a extra=()
    eval "extra=($POSTGRES_INITDB_ARGS)"
    initdb "${args[@]}" "${extra[@]}"
    [[ -z "$pwfile" ]] || rm -f "$pwfile"
}

setup_hba() {
    {
        printf '\n'
        if [[ "$POSTGRES_HOST_AUTH_METHOD" == trust ]]; then
            printf '# warning: trust is enabled for all connections\n'
        fi
        printf 'host all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD"
    } >> "$PGDATA/pg_hba.conf"
}

psql_run() {
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc "$@"
}

temp_server_start() {
    # unix socket only: nothing outside the container can connect before init is complete
    PGUSER="$POSTGRES_USER" pg_ctl -D "$PGDATA" -w \
        -o "-c listen_addresses='' -p ${PGPORT:-5432}" start
}

temp_server_stop() {
    PGUSER="$POSTGRES_USER" pg_ctl -D "$PGDATA" -m fast -w stop
}

create_db() {
    if [[ "$POSTGRES_DB" == postgres ]]; then
        return
    fi
    local exists
    exists="$(psql_run --dbname postgres --set db="$POSTGRES_DB" --tuples-only --no-align \
        <<<"SELECT 1 FROM pg_database WHERE datname = :'db';")"
    if [[ -z "$exists" ]]; then
        psql_run --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
        log
    fi
}

run_init_files() {
    local f
    shopt -s nullglob
    for f in /docker-entrypoint-initdb.d/*; do
        case "$f" in
            *.sh)
                if [[ -x "$f" ]]; then
                    log "$0: running $f"
                    "$f"
                else
                    log "$0: sourcing $f"
                    # shellcheck disable=SC1090
                    . "$f"
                fi
                ;;
            *.sql)     log "$0: running $f"; psql_run --dbname "$POSTGRES_DB" -f "$f"; log ;;
            *.sql.gz)  log "$0: running $f"; gzip -dc "$f" | psql_run --dbname "$POSTGRES_DB"; log ;;
            *.sql.xz)  log "$0: running $f"; xz -dc "$f" | psql_run --dbname "$POSTGRES_DB"; log ;;
            *.sql.zst) log "$0: running $f"; zstd -dc "$f" | psql_run --dbname "$POSTGRES_DB"; log ;;
            *)         log "$0: ignoring $f" ;;
        esac
        log
    done
    shopt -u nullglob
}

main() {
    read_env_file POSTGRES_PASSWORD
    read_env_file POSTGRES_USER postgres
    read_env_file POSTGRES_DB "$POSTGRES_USER"
    read_env_file POSTGRES_INITDB_ARGS
    export PGDATA="${PGDATA:-/var/lib/postgresql/data}"

    if [[ "${1:-}" != postgres ]] || wants_help "$@"; then
        exec "$@"
    fi

    make_dirs
    if [[ "$(id -u)" == 0 ]]; then
        # everything else runs as postgres (the server refuses to run as root)
        exec gosu postgres "${BASH_SOURCE[0]}" "$@"
    fi

    if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
        check_env
        run_initdb
        if [[ -z "${POSTGRES_HOST_AUTH_METHOD:-}" ]]; then
            # same as the server's password_encryption (scram-sha-256 unless overridden by -c)
            POSTGRES_HOST_AUTH_METHOD="$(postgres -C password_encryption "${@:2}")"
        fi
        setup_hba
        export PGPASSWORD="${PGPASSWORD:-$POSTGRES_PASSWORD}"
        temp_server_start
        create_db
        run_init_files
        temp_server_stop
        unset PGPASSWORD
        log
        log 'PostgreSQL init process complete; ready for start up.'
        log
    else
        log
        log 'PostgreSQL Database directory appears to contain a database; Skipping initialization'
        log
    fi
    exec "$@"
}

main "$@"
