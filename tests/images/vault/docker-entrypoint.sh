#!/usr/bin/dumb-init /bin/sh
# Entrypoint of the vault stand-in (HashiCorp Vault built from source). Follows the documented
# behaviour of the official hashicorp/vault image's entrypoint (written anew, not copied), run by
# dumb-init as PID 1 (it reaps zombies and forwards signals) under Debian's /bin/sh (dash):
#   * core dumps off (ulimit -c 0)
#   * VAULT_REDIRECT_INTERFACE / VAULT_CLUSTER_INTERFACE: VAULT_REDIRECT_ADDR / VAULT_CLUSTER_ADDR
#     get the named interface's IPv4 address, keeping the scheme and port of the variable if it
#     is set (defaults http://0.0.0.0:8200 and https://0.0.0.0:8201)
#   * VAULT_LOCAL_CONFIG (HCL or JSON text) is written to /vault/config/local.json
#   * first argument starting with `-` -> vault ARGS
#   * `server ...` -> vault server -config=/vault/config
#                         -dev-root-token-id=$VAULT_DEV_ROOT_TOKEN_ID
#                         -dev-listen-address=${VAULT_DEV_LISTEN_ADDRESS:-0.0.0.0:8200} ...
#     (so the default CMD `server -dev` is a dev server on 0.0.0.0:8200, in memory, unsealed)
#   * `version`, or any other vault subcommand (`status`, `kv`, ...) -> vault ARGS
#   * when running vault: chown /vault/config|logs|file to vault unless SKIP_CHOWN; unless
#     SKIP_SETCAP, give /bin/vault the cap_ipc_lock file capability (mlock) and take it back if
#     vault cannot start with it (no --cap-add IPC_LOCK); started as root, drop to user vault
#   * anything else is executed as given
set -e

ulimit -c 0

config_dir=/vault/config

# the IPv4 address of interface $1 put into the URI $2 (scheme://host:port -> scheme://IP:port)
iface_uri() {
    ip=$(ip -4 -o addr show dev "$1" 2>/dev/null | awk '{ split($4, a, "/"); print a[1]; exit }')
    printf '%s\n' "$2" | sed -e "s#^\([a-z]*://\)[^/]*\(:[0-9]*\)\$#\1$ip\2#"
}

if [ -n "${VAULT_REDIRECT_INTERFACE:-}" ]; then
    VAULT_REDIRECT_ADDR=$(iface_uri "$VAULT_REDIRECT_INTERFACE" "${VAULT_REDIRECT_ADDR:-http://0.0.0.0:8200}")
    export VAULT_REDIRECT_ADDR
    echo "Using $VAULT_REDIRECT_INTERFACE for VAULT_REDIRECT_ADDR: $VAULT_REDIRECT_ADDR"
fi
if [ -n "${VAULT_CLUSTER_INTERFACE:-}" ]; then
    VAULT_CLUSTER_ADDR=$(iface_uri "$VAULT_CLUSTER_INTERFACE" "${VAULT_CLUSTER_ADDR:-https://0.0.0.0:8201}")
    export VAULT_CLUSTER_ADDR
    echo "Using $VAULT_CLUSTER_INTERFACE for VAULT_CLUSTER_ADDR: $VAULT_CLUSTER_ADDR"
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
elif [ -n "${1:-}" ] && [ "$1" != vault ] && ! command -v "$1" >/dev/null 2>&1 \
        && vault "$1" -h 2>&1 | head -n 3 | grep -q "^Usage: vault $1\\b"; then
    # a vault subcommand: its help starts with "Usage: vault <subcommand> ..."
    set -- vault "$@"
fi

if [ "${1:-}" = vault ]; then
    if [ -z "${SKIP_CHOWN:-}" ]; then
        for d in /vault/config /vault/logs /vault/file; do
            if [ -d "$d" ] && [ "$(stat -c %u "$d")" != "$(id -u vault)" ]; then
                chown -R vault:vault "$d" || echo "Could not chown $d (may not have appropriate permissions)"
            fi
        done
    fi

    if [ -z "${SKIP_SETCAP:-}" ]; then
        # let vault mlock its memory; a container without IPC_LOCK cannot even exec a binary
        # that has the capability, so take it back then
        bin=$(readlink -f "$(command -v vault)")
        setcap cap_ipc_lock=+ep "$bin"
        if ! vault -version >/dev/null 2>&1; then
            echo "Couldn't start vault with IPC_LOCK. Disabling IPC_LOCK, please use --cap-add IPC_LOCK" >&2
            setcap cap_ipc_lock=-ep "$bin"
        fi
    fi

    if [ "$(id -u)" = 0 ]; then
        # drop root like su-exec: user and group vault, HOME /home/vault (dev mode writes the root
        # token to $HOME/.vault-token)
        export HOME=/home/vault
        set -- setpriv --reuid=vault --regid=vault --init-groups "$@"
    fi
fi

exec "$@"
