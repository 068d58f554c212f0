#!/usr/bin/env bash
# Entry point of `make bench`: the gateway (asyncio and epoll reactors) against nginx.
# Installs nginx, wrk and h2load (nghttp2-client) if missing, then runs bench/bench.py with
# the project venv (the grpc case's peer and client use its grpcio). Extra arguments go to
# bench.py (e.g. `bench/run.sh --no-gateway`, `--cases ws`, `--duration 5`, `--help`).
set -euo pipefail

cd "$(dirname "$0")/.."

missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)   # the h2, h2c and grpc cases
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "bench: ${missing[*]} missing; install as root: apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
    echo "bench: installing ${missing[*]}"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"; then
        # nginx-light is not in every release; plain nginx has everything we need too
        DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]/nginx-light/nginx}"
    fi
fi
export PATH="$PATH:/usr/sbin"

# the project venv with the compiled hot path (created on first use; rebuilds only what
# changed): the numbers are those of `make run`
make -s compiled
if [ ! -x .venv/bin/twistd ]; then
    echo "bench: .venv has no twistd; install the project first (make compiled)" >&2
    exit 1
fi

exec .venv/bin/python bench/bench.py "$@"
