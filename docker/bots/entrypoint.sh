#!/bin/sh
# Entrypoint of the bot containers (docker/bots/Dockerfile).
#
# POLICE_SECRET_FILES lists VARIABLE=PATH pairs: each variable's value (from
# .env, through docker-compose) is written to PATH, readable by the bot user
# only, and removed from the environment; the bot's config names those files
# (password_file, archive_key_file, state_key_file). PATH lies on a tmpfs
# (docker-compose.yml), so no secret is stored in a volume or the image.
# POLICE_STATE_DIRS lists the directories (volumes) the bot writes; they are
# handed to the bot user. Then the command runs as that user.
set -eu

umask 077
for pair in ${POLICE_SECRET_FILES:-}; do
    variable=${pair%%=*}
    path=${pair#*=}
    eval "value=\${$variable:-}"
    case "$value" in
        "" | change-me*)
            echo "police-bot-entrypoint: $variable is not set (copy .env.example to .env and fill it in)" >&2
            exit 2
            ;;
    esac
    mkdir -p "$(dirname "$path")"
    printf '%s' "$value" > "$path"
    unset "$variable" value
    if [ "$(id -u)" = "0" ]; then
        chown bot:bot "$(dirname "$path")" "$path"
    fi
done

if [ "$(id -u)" = "0" ]; then
    for directory in ${POLICE_STATE_DIRS:-}; do
        mkdir -p "$directory"
        chown -R bot:bot "$directory"
    done
    exec setpriv --reuid=bot --regid=bot --init-groups "$@"
fi
exec "$@"
