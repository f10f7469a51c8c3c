#!/bin/sh
# Entrypoint of the Synapse containers (docker/synapse/Dockerfile).
#
#   main                  the main process (synapse.app.homeserver)
#   worker NAME           a worker, with /config/workers/NAME.yaml
#   anything else         run as given (police-policy ..., register_new_matrix_user ...)
#
# Secrets come from the environment (docker-compose takes them from .env) and
# are written, readable by the synapse user only, to the tmpfs at
# /run/police-secrets, where config/homeserver.yaml and
# config/workers/shared.yaml read them (*_path settings, libpq's passfile).
# They are then removed from the environment of the Synapse process.
# SYNAPSE_WORKERS=true adds config/workers/shared.yaml (the workers profile).
set -eu

SECRETS=/run/police-secrets
SYNAPSE_UID=${UID:-991}
SYNAPSE_GID=${GID:-991}

need() {
    eval "value=\${$1:-}"
    case "$value" in
        "" | change-me*)
            echo "police-synapse-entrypoint: $1 is not set (copy .env.example to .env and fill it in)" >&2
            exit 2
            ;;
    esac
}

write_secret() {
    # write_secret FILE VARIABLE
    need "$2"
    eval "printf '%s' \"\${$2}\"" > "$SECRETS/$1"
}

umask 077
mkdir -p "$SECRETS"
write_secret registration_shared_secret SYNAPSE_REGISTRATION_SHARED_SECRET
write_secret macaroon_secret_key SYNAPSE_MACAROON_SECRET_KEY
write_secret form_secret SYNAPSE_FORM_SECRET
need POSTGRES_PASSWORD
# libpq password file: host:port:database:user:password
printf '*:*:*:synapse:%s\n' "$POSTGRES_PASSWORD" > "$SECRETS/pgpass"

configs="-c /config/homeserver.yaml"
if [ "${SYNAPSE_WORKERS:-false}" = "true" ]; then
    write_secret worker_replication_secret SYNAPSE_WORKER_REPLICATION_SECRET
    write_secret redis_password REDIS_PASSWORD
    configs="$configs -c /config/workers/shared.yaml"
fi
unset SYNAPSE_REGISTRATION_SHARED_SECRET SYNAPSE_MACAROON_SECRET_KEY SYNAPSE_FORM_SECRET \
    POSTGRES_PASSWORD SYNAPSE_WORKER_REPLICATION_SECRET REDIS_PASSWORD

as_synapse=""
if [ "$(id -u)" = "0" ]; then
    chown -R "$SYNAPSE_UID:$SYNAPSE_GID" "$SECRETS"
    chown "$SYNAPSE_UID:$SYNAPSE_GID" /data /media_store
    as_synapse="gosu $SYNAPSE_UID:$SYNAPSE_GID"
fi

case "${1:-main}" in
    main)
        if [ ! -f /data/signing.key ]; then
            # First start: Synapse writes the server's signing key (signing_key_path).
            # shellcheck disable=SC2086
            $as_synapse python -m synapse.app.homeserver $configs --generate-keys
        fi
        # shellcheck disable=SC2086
        exec $as_synapse python -m synapse.app.homeserver $configs
        ;;
    worker)
        name=${2:?usage: worker NAME}
        # shellcheck disable=SC2086
        exec $as_synapse python -m synapse.app.generic_worker $configs -c "/config/workers/$name.yaml"
        ;;
    *)
        exec "$@"
        ;;
esac
