#!/usr/bin/env bash
# Install the OpenID provider the portal's browser tests sign in against: the certified
# `oidc-provider` package from the npm registry, on the machine's Node.js, into a
# directory outside the repository (default ~/.cache/fleetpki/oidc-provider, or
# $FLEETPKI_OIDC_PROVIDER_DIR). tests/support/oidc_provider.mjs runs it.
#
# Idempotent and quick when the pinned version is there (no network then).
# Usage: scripts/ensure-oidc-provider.sh [--print-dir]
set -euo pipefail

VERSION=9.13.3
DIR=${FLEETPKI_OIDC_PROVIDER_DIR:-$HOME/.cache/fleetpki/oidc-provider}

log() { printf 'ensure-oidc-provider: %s\n' "$*" >&2; }

if [[ "${1:-}" == "--print-dir" ]]; then
    printf '%s\n' "$DIR"
    exit 0
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    log "node and npm are needed (scripts/ensure-system-deps.sh installs them)"
    exit 1
fi
# The package loads and signs on this Node.js (it is ESM, and jose under it uses the Web
# Crypto API, global from Node.js 19 and set by tests/support/oidc_provider.mjs on 18):
# say so now, with the version, rather than as a provider that fails in a test.
check_loads() {
    local modules="$DIR/node_modules"
    local probe="
        import { webcrypto } from 'node:crypto';
        if (!globalThis.crypto) globalThis.crypto = webcrypto;
        const jose = await import('file://$modules/jose/dist/webapi/index.js');
        const { privateKey } = await jose.generateKeyPair('ES256');
        await new jose.SignJWT({}).setProtectedHeader({ alg: 'ES256' }).sign(privateKey);
        await import('file://$modules/oidc-provider/lib/index.js');
    "
    if ! node --input-type=module -e "$probe" >/dev/null 2>&1; then
        log "oidc-provider $VERSION does not work on Node.js $(node --version):"
        node --input-type=module -e "$probe" 2>&1 | head -n 5 >&2 || true
        exit 1
    fi
}

installed=$(node -p "require('$DIR/node_modules/oidc-provider/package.json').version" 2>/dev/null || true)
if [[ "$installed" == "$VERSION" ]]; then
    check_loads
    log "oidc-provider $VERSION present in $DIR"
    exit 0
fi
mkdir -p "$DIR"
if [[ ! -f "$DIR/package.json" ]]; then
    printf '{"name": "fleetpki-test-oidc-provider", "private": true}\n' >"$DIR/package.json"
fi
log "installing oidc-provider $VERSION into $DIR"
npm install --prefix "$DIR" --no-audit --no-fund --loglevel=error "oidc-provider@$VERSION" >&2
check_loads
log "done"
