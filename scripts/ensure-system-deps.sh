#!/usr/bin/env bash
# Ensure the system programs the test suite drives are installed (Debian/Ubuntu):
#   openssl                          - peer for certificate checks
#   curl                             - HTTP peer (EST and API tests, as RFC 7030's examples use it)
#   initdb, pg_ctl, postgres         - throwaway PostgreSQL clusters (tests/support/postgres.py)
#   mosquitto, mosquitto_pub/_sub    - MQTT broker and clients
#   softhsm2-util, libsofthsm2.so    - SoftHSM2, the PKCS#11 token of the keystore tests
#   /usr/bin/chromium, a font        - Debian's Chromium, the portal's browser tests (Playwright
#                                      drives it; Playwright's own browser download is not used)
#   node, npm                        - Node.js for the OpenID provider of the portal's tests
#                                      (scripts/ensure-oidc-provider.sh installs the npm package)
#
# Idempotent and fast when everything is present (no apt calls at all). When something is
# missing it runs `apt-get update` once and `apt-get install -y --no-install-recommends` for the
# missing packages only, printing what it installs. Package installs never leave a system
# mosquitto (port 1883) or PostgreSQL (port 5432) daemon running: service starts are blocked
# with a temporary policy-rc.d during the install, and the services are stopped and disabled
# afterwards in case something started them anyway.
#
# Usage: scripts/ensure-system-deps.sh [--check]
#   --check   only report what is missing; exit 1 if anything is, install nothing.
set -euo pipefail

CHECK_ONLY=0
case "${1:-}" in
    "") ;;
    --check) CHECK_ONLY=1 ;;
    -h | --help)
        sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "ensure-system-deps: unknown argument: $1 (try --help)" >&2
        exit 2
        ;;
esac

log() { printf 'ensure-system-deps: %s\n' "$*" >&2; }

# A program is present if it is on PATH or in one of the extra directories given
# (Debian keeps the PostgreSQL server binaries in /usr/lib/postgresql/<ver>/bin and
# mosquitto in /usr/sbin, which a non-root PATH may lack).
have() {
    local prog=$1 dir
    shift
    if command -v "$prog" >/dev/null 2>&1; then
        return 0
    fi
    for dir in "$@"; do
        if [[ -x "$dir/$prog" ]]; then
            return 0
        fi
    done
    return 1
}

# The newest /usr/lib/postgresql/<ver>/bin that holds all three server programs, if any.
pg_bin_dir() {
    local dir
    # Version-sorted, newest last; the glob stays literal when nothing matches.
    while IFS= read -r dir; do
        if [[ -x "$dir/initdb" && -x "$dir/pg_ctl" && -x "$dir/postgres" ]]; then
            printf '%s\n' "$dir"
        fi
    done < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V) | tail -n 1
}

# Debian's softhsm2 puts the PKCS#11 module here (settings.DEFAULT_PKCS11_MODULE).
SOFTHSM_MODULE=/usr/lib/softhsm/libsofthsm2.so
have_softhsm() {
    have softhsm2-util && [[ -f "$SOFTHSM_MODULE" ]]
}

# The portal's browser tests launch this executable (tests/support/browser.py).
CHROMIUM=/usr/bin/chromium
have_font() {
    compgen -G "/usr/share/fonts/truetype/*/*.ttf" >/dev/null
}

have_postgres_server() {
    if have initdb && have pg_ctl && have postgres; then
        return 0
    fi
    [[ -n "$(pg_bin_dir)" ]]
}

missing_pkgs=()
if ! have openssl; then
    missing_pkgs+=(openssl)
fi
if ! have curl; then
    missing_pkgs+=(curl)
fi
if ! have_postgres_server; then
    # The Debian metapackage pulls the distribution's supported server version (15 on bookworm).
    missing_pkgs+=(postgresql)
fi
if ! have mosquitto /usr/sbin /usr/local/sbin; then
    missing_pkgs+=(mosquitto)
fi
if ! have mosquitto_pub || ! have mosquitto_sub; then
    missing_pkgs+=(mosquitto-clients)
fi
if ! have_softhsm; then
    missing_pkgs+=(softhsm2)
fi
if [[ ! -x "$CHROMIUM" ]]; then
    missing_pkgs+=(chromium)
fi
if ! have_font; then
    # Without any font the browser tests' screenshots have no text.
    missing_pkgs+=(fonts-dejavu-core)
fi
if ! have node; then
    missing_pkgs+=(nodejs)
fi
if ! have npm; then
    # Debian's nodejs comes without npm (NodeSource's includes it, so this is skipped there).
    missing_pkgs+=(npm)
fi

if ((${#missing_pkgs[@]} == 0)); then
    if pg_initdb=$(command -v initdb 2>/dev/null); then
        pg_where=$(dirname "$pg_initdb")
    else
        pg_where=$(pg_bin_dir)
    fi
    log "all present: openssl, curl, PostgreSQL server (${pg_where}), mosquitto, mosquitto_pub/_sub, softhsm2, chromium, node, npm"
    exit 0
fi

if ((CHECK_ONLY)); then
    log "missing packages: ${missing_pkgs[*]}"
    exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
    log "missing packages: ${missing_pkgs[*]}, and apt-get is not available: install them by hand"
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

# Keep the packages' maintainer scripts from starting their daemons: for the duration of the
# install, a policy-rc.d that denies every start (honoured by invoke-rc.d and
# deb-systemd-invoke). It replaces any existing one, which is restored afterwards: a permissive
# one is not enough, since without systemd Debian's mosquitto init script fails to start
# (no /run/mosquitto), which fails the package's postinst and the whole apt-get install.
POLICY_RC=/usr/sbin/policy-rc.d
POLICY_RC_SAVED="$POLICY_RC.ensure-system-deps-saved"
policy_rc_state=none # none | created | replaced
restore_policy_rc() {
    case "$policy_rc_state" in
        created) "${SUDO[@]}" rm -f "$POLICY_RC" ;;
        replaced) "${SUDO[@]}" mv -f "$POLICY_RC_SAVED" "$POLICY_RC" ;;
    esac
    policy_rc_state=none
}
trap restore_policy_rc EXIT
if [[ -e "$POLICY_RC_SAVED" ]]; then
    # Left by an interrupted earlier run: that is the original one.
    "${SUDO[@]}" mv -f "$POLICY_RC_SAVED" "$POLICY_RC"
fi
if [[ -e "$POLICY_RC" ]]; then
    "${SUDO[@]}" cp -p "$POLICY_RC" "$POLICY_RC_SAVED"
    policy_rc_state=replaced
else
    policy_rc_state=created
fi
printf '#!/bin/sh\n# temporary, from fleetpki scripts/ensure-system-deps.sh\nexit 101\n' \
    | "${SUDO[@]}" tee "$POLICY_RC.tmp" >/dev/null
"${SUDO[@]}" chmod 0755 "$POLICY_RC.tmp"
"${SUDO[@]}" mv -f "$POLICY_RC.tmp" "$POLICY_RC"

log "installing: ${missing_pkgs[*]}"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${missing_pkgs[@]}"
restore_policy_rc

# Belt and braces: stop and disable the system services these packages ship, in case an
# existing policy-rc.d allowed the start or the package started them some other way.
stop_service() {
    local svc=$1
    if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
        "${SUDO[@]}" systemctl stop "$svc" >/dev/null 2>&1 || true
        "${SUDO[@]}" systemctl disable "$svc" >/dev/null 2>&1 || true
    else
        if command -v service >/dev/null 2>&1 && [[ -x "/etc/init.d/$svc" ]]; then
            "${SUDO[@]}" service "$svc" stop >/dev/null 2>&1 || true
        fi
        if command -v update-rc.d >/dev/null 2>&1 && [[ -x "/etc/init.d/$svc" ]]; then
            "${SUDO[@]}" update-rc.d "$svc" disable >/dev/null 2>&1 || true
        fi
    fi
}
for pkg in "${missing_pkgs[@]}"; do
    case "$pkg" in
        mosquitto) stop_service mosquitto ;;
        postgresql) stop_service postgresql ;;
    esac
done

# Verify that a system mosquitto is not left listening on the default MQTT port.
if [[ " ${missing_pkgs[*]} " == *" mosquitto "* ]] && (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; then
    log "warning: something still listens on 127.0.0.1:1883 after installing mosquitto"
fi

# Re-check: fail loudly if the install did not provide what is needed.
if ! have openssl || ! have_postgres_server || ! have mosquitto /usr/sbin /usr/local/sbin \
    || ! have mosquitto_pub || ! have mosquitto_sub || ! have_softhsm \
    || [[ ! -x "$CHROMIUM" ]] || ! have_font || ! have node || ! have npm; then
    log "error: programs still missing after installing ${missing_pkgs[*]}"
    exit 1
fi
log "done: installed ${missing_pkgs[*]}"
