#!/bin/sh
# Entrypoint of the vault stand-in (OpenBao). Follows the documented behaviour of the official
# hashicorp/vault image's entrypoint (written anew, not copied):
#   * `server ...` -> vault server -config=/vault/config
#                         -dev-root-token-id=$VAULT_DEV_ROOT_TOKEN_ID
#                         -dev-listen-address=${VAULT_DEV_LISTEN_ADDRESS:-0.0.0.0:8200} ...
#     (so the default CMD `server -dev` is a dev server on 0.0.0.0:8200, in memory, unsealed)
#   * first argument starting with `-`, `version`, or any vault subcommand -> run it with `vault`
#   * VAULT_LOCAL_CONFIG (HCL or JSON text) is written to /vault/config/local.json
#   * VAULT_REDIRECT_INTERFACE / VAULT_CLUSTER_INTERFACE set VAULT_REDIRECT_ADDR / VAULT_CLUSTER_ADDR
#   * started as root: chown /vault/config|logs|file (unless SKIP_CHOWN), then drop to user vault
# `vault` here is a symlink to OpenBao's `bao`.
set -e

config_dir=/vault/config

iface_ip() {
    # there is no iproute2 in this image: the container's first IPv4 address stands in for the
    # named interface (a container on one network has just one)
    hostname -I 2>/dev/null | awk '{ print $1 }'
}

if [ -n "${VAULT_REDIRECT_INTERFACE:-}" ]; then
    export VAULT_REDIRECT_ADDR="http://$(iface_ip "$VAULT_REDIRECT_INTERFACE"):8200"
fi
if [ -n "${VAULT_CLUSTER_INTERFACE:-}" ]; then
    export VAULT_CLUSTER_ADDR="https://$(iface_ip "$VAULT_CLUSTER_INTERFACE"):8201"
fi

if [ -n "${VAULT_LOCAL_CONFIG:-}" ]; then
    printf '%s\n' "$VAULT_LOCAL_CONFIG" > "$config_dir/local.json"
fi

case "${1:-}" in
    -*) set -- vault "$@" ;;
esac

if [ "${1:-}" = server ]; then
    shift
    set -- vault server \
        -config="$config_dir" \
        -dev-root-token-id="${VAULT_DEV_ROOT_TOKEN_ID:-}" \
        -dev-listen-address="${VAULT_DEV_LISTEN_ADDRESS:-0.0.0.0:8200}" \
        "$@"
elif [ "${1:-}" = version ]; then
    set -- vault "$@"
elif [ -n "${1:-}" ] && [ "$1" != vault ] && [ "$1" != bao ] && ! command -v "$1" >/dev/null 2>&1 \
        && vault "$1" -h 2>&1 | head -n 3 | grep -q "^Usage: [a-z]* $1"; then
    set -- vault "$@"
fi

if [ "${1:-}" = vault ] || [ "${1:-}" = bao ]; then
    if [ "$(id -u)" = 0 ]; then
        if [ -z "${SKIP_CHOWN:-}" ]; then
            for d in /vault/config /vault/logs /vault/file; do
                [ -d "$d" ] && [ "$(stat -c %u "$d")" != "$(id -u vault)" ] && chown -R vault:vault "$d"
            done
        fi
        # drop root; dev mode writes the root token to $HOME/.vault-token
        export HOME=/home/vault
        exec setpriv --reuid=vault --regid=vault --init-groups "$@"
    fi
fi

exec "$@"
