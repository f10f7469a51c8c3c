#!/usr/bin/env bash
# Installs the Debian packages the module and the tests need when they are
# missing, so `make run` and `make test` work on a fresh machine. Only what is
# absent is installed.
set -euo pipefail

missing=()
# libmagic: the module detects media types with it (python-magic loads it)
if ! /sbin/ldconfig -p 2>/dev/null | grep -q 'libmagic\.so\.1'; then
    missing+=(libmagic1)
fi
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
