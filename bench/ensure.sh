#!/usr/bin/env bash
# What `make bench` needs beyond `make install`: redis-server (Debian) and the bench extra
# (Huey, RQ, Celery, redis, matplotlib, py-spy). Quick and silent when both are already there.
# With --profile (`make profile`), only the bench extra: the profile needs no redis-server.
set -euo pipefail
PY=${1:-.venv/bin/python}
PROFILE_ONLY=${2:-}

if [ "$PROFILE_ONLY" != --profile ] && ! command -v redis-server >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
        echo "bench: redis-server is missing; install it (apt-get install -y redis-server)" >&2
        exit 1
    fi
    echo "bench: installing redis-server (apt-get)" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        redis-server >/dev/null
    # Debian starts a system redis on 6379; the bench runs its own on a free port instead.
    $SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true
fi

if ! "$PY" -c "import huey, rq, celery, redis, matplotlib" >/dev/null 2>&1 \
    || ! [ -x "$(dirname "$PY")/py-spy" ]; then
    echo "bench: installing the bench extra (pip install -e '.[dev,bench]')" >&2
    "$PY" -m pip install -q -e '.[dev,bench]'
fi
