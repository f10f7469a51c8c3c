#!/usr/bin/env bash
# Installs the Debian packages the module and the tests need when they are
# missing, so `make run` and `make test` work on a fresh machine. Only what is
# absent is installed. `system-packages.sh run` installs only what `make run`
# needs; without an argument, also what the tests need.
set -euo pipefail
purpose="${1:-test}"

missing=()
# libmagic: the module detects media types with it (python-magic loads it)
if ! /sbin/ldconfig -p 2>/dev/null | grep -q 'libmagic\.so\.1'; then
    missing+=(libmagic1)
fi
if [ "$purpose" = "test" ]; then
    # PostgreSQL 15: the worker test (tests/integration/test_workers.py) always
    # runs on it, as Synapse workers need it; the rest of the suite with
    # POLICE_TEST_POSTGRES=1
    if [ ! -x /usr/lib/postgresql/15/bin/initdb ]; then
        missing+=(postgresql-15)
    fi
    # redis-server: replication between Synapse's main process and its workers
    # (tests/integration/test_workers.py)
    if ! command -v redis-server >/dev/null 2>&1; then
        missing+=(redis-server)
    fi
    # nginx: the worker test routes its requests through config/nginx/workers.conf
    if [ ! -x /usr/sbin/nginx ] && ! command -v nginx >/dev/null 2>&1; then
        missing+=(nginx-light)
    fi
    # node and npm: the strict E2EE client of the tests (matrix-js-sdk in Node,
    # tests/strict_client/; `make test` installs its npm packages)
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        missing+=(nodejs npm)
    fi
    # chromium: the browser tests drive Element Web in it through Playwright
    # (tests/browser/; Playwright's own browser download is never used)
    if [ ! -x /usr/bin/chromium ]; then
        missing+=(chromium)
    fi
    # docker-compose: validates docker-compose.yml without a Docker engine
    # (tests/unit/test_deployment_files.py runs `docker-compose config`)
    if ! command -v docker-compose >/dev/null 2>&1; then
        missing+=(docker-compose)
    fi
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
