#!/bin/sh
# Entrypoint of the redis stand-in. Behaves like the official redis:7 image's entrypoint
# (written from its documented behaviour):
#   * `docker run IMAGE --foo` / `docker run IMAGE my.conf`  ->  redis-server --foo / my.conf
#   * started as root: chown files in the working directory (/data) to redis, drop to user redis
#   * protected mode is switched off unless a given config file sets `protected-mode` itself,
#     so a container without a password is reachable from other containers and published ports
#   * never reads Debian's /etc/redis/redis.conf (it binds 127.0.0.1): without a config file
#     redis-server uses its built-in defaults, which listen on all interfaces
set -e

case "$1" in
    -*|*.conf) set -- redis-server "$@" ;;
esac

if [ "$1" = redis-server ] && [ "$(id -u)" = 0 ]; then
    find . \! -user redis -exec chown redis '{}' + 2>/dev/null || true
    exec gosu redis "$0" "$@"
fi

# files created by redis (dump.rdb, appendonly files) are private unless the user set a umask
if [ "$(umask)" = 0022 ]; then
    umask 0077
fi

# (not for the informational options, which redis-server only accepts as its first argument)
case "${2:-}" in
    -v|--version|-h|--help|--test-memory|--check-system) exec "$@" ;;
esac

if [ "$1" = redis-server ]; then
    shift
    conf=""
    if [ -n "${1:-}" ] && [ -f "$1" ]; then
        conf="$1"
        shift
    fi
    if [ -n "$conf" ] && grep -q '^[[:space:]]*protected-mode' "$conf"; then
        set -- "$conf" "$@"
    elif [ -n "$conf" ]; then
        set -- "$conf" --protected-mode no "$@"
    else
        set -- --protected-mode no "$@"
    fi
    set -- redis-server "$@"
fi

exec "$@"
