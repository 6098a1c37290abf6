#!/usr/bin/env bash
# Optional: the extra programs the benchmarks use, on top of scripts/ensure-system-deps.sh
# (which provides openssl, PostgreSQL and mosquitto, and keeps the mosquitto daemon from
# staying up). Not needed by `make test`.
#   cfssl, cfssljson   - Debian package golang-cfssl (bookworm: 1.2.0+git20160825, an old
#                        2016 snapshot of CloudFlare's toolkit), a peer CA to compare with
#   hyperfine          - times whole commands over repeated runs
#   wrk                - Debian package wrk: the HTTP load generator of the CA benchmarks
#
# Idempotent; fast when everything is present. Same root/sudo rules as ensure-system-deps.sh.
# Usage: scripts/ensure-bench-deps.sh [--check]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
"$here/ensure-system-deps.sh" "$@"

log() { printf 'ensure-bench-deps: %s\n' "$*" >&2; }

missing_pkgs=()
if ! command -v cfssl >/dev/null 2>&1 || ! command -v cfssljson >/dev/null 2>&1; then
    missing_pkgs+=(golang-cfssl)
fi
if ! command -v hyperfine >/dev/null 2>&1; then
    missing_pkgs+=(hyperfine)
fi
if ! command -v wrk >/dev/null 2>&1; then
    missing_pkgs+=(wrk)
fi

if ((${#missing_pkgs[@]} == 0)); then
    log "all present: cfssl, cfssljson, hyperfine, wrk"
    exit 0
fi
if [[ "${1:-}" == "--check" ]]; then
    log "missing packages: ${missing_pkgs[*]}"
    exit 1
fi

SUDO=()
if ((EUID != 0)); then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        log "missing packages: ${missing_pkgs[*]}"
        log "not running as root and sudo is not available: run this script as root, or install them with"
        log "  apt-get update && apt-get install -y --no-install-recommends ${missing_pkgs[*]}"
        exit 1
    fi
fi

log "installing: ${missing_pkgs[*]}"
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${missing_pkgs[@]}"

if ! command -v cfssl >/dev/null 2>&1 || ! command -v hyperfine >/dev/null 2>&1 \
    || ! command -v wrk >/dev/null 2>&1; then
    log "error: programs still missing after installing ${missing_pkgs[*]}"
    exit 1
fi
log "done: installed ${missing_pkgs[*]}"
