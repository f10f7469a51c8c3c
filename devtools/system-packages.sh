#!/usr/bin/env bash
# Installs the Debian packages the tests need when they are missing, so
# `make test` works on a fresh machine. Only what is absent is installed.
set -euo pipefail

missing=()
if [ "${POLICE_TEST_POSTGRES:-0}" = "1" ] && [ ! -x /usr/lib/postgresql/15/bin/initdb ]; then
    missing+=(postgresql-15)
fi

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "missing Debian packages: ${missing[*]}; install them with: sudo apt-get install ${missing[*]}" >&2
    exit 1
fi
echo "installing Debian packages: ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
