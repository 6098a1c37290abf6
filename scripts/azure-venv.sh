#!/usr/bin/env bash
# Create .venv-azure at the repository root: a separate virtualenv holding the unmodified
# Azure IoT SDKs, used as real clients by the hub tests. It is separate from .venv because
# azure-iot-device pins paho-mqtt<2 while fleetpki needs paho-mqtt>=2.
#   azure-iot-device==2.14.0   (paho-mqtt>=1.6.1,<2)
#   azure-iot-hub==2.7.0       (imports six without declaring it; needs uamqp<2, which must come
#                               from a prebuilt cp311 wheel: building it from source is refused)
#   azure-eventhub 5.15.x      (its own pure-Python AMQP client; the Event Hubs-compatible
#                               endpoint's tests, issue 15)
#
# Idempotent: skipped when .venv-azure/.fleetpki-stamp holds this script's sha256, so editing
# this file rebuilds the venv. An interrupted run leaves no stamp and is redone from scratch.
# Ends with a check that `import azure.iot.device, azure.iot.hub` works in the venv.
#
# Usage: scripts/azure-venv.sh [--force]
#   PYTHON=/path/to/python3.11 picks the interpreter (default: python3.11, else python3).
# Afterwards: .venv-azure/bin/python
set -euo pipefail

script_dir=$(cd "$(dirname "$0")" && pwd)
repo_root=$(cd "$script_dir/.." && pwd)
venv="$repo_root/.venv-azure"
stamp="$venv/.fleetpki-stamp"

log() { printf 'azure-venv: %s\n' "$*" >&2; }

force=0
case "${1:-}" in
    "") ;;
    --force) force=1 ;;
    *)
        log "unknown argument: $1 (usage: $0 [--force])"
        exit 2
        ;;
esac

want_hash=$(sha256sum "$script_dir/$(basename "$0")" | cut -d' ' -f1)
if ((!force)) && [[ -x "$venv/bin/python" && -f "$stamp" ]] \
    && [[ "$(cat "$stamp")" == "$want_hash" ]]; then
    log "up to date: $venv"
    exit 0
fi

# One builder at a time (parallel make jobs, two terminals): lock this script file itself,
# which leaves no lock file behind in the work tree.
exec 9<"$script_dir/$(basename "$0")"
if ! flock -w 900 9; then
    log "timed out waiting for another run of $0 to finish"
    exit 1
fi
# Another run may have finished it while we waited.
if ((!force)) && [[ -x "$venv/bin/python" && -f "$stamp" ]] \
    && [[ "$(cat "$stamp")" == "$want_hash" ]]; then
    log "up to date: $venv"
    exit 0
fi

python=${PYTHON:-}
if [[ -z "$python" ]]; then
    if command -v python3.11 >/dev/null 2>&1; then
        python=python3.11
    else
        python=python3
    fi
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
    log "error: $python is not Python 3.11 (uamqp<2 has cp311 wheels; set PYTHON=...)"
    exit 1
fi

start=$SECONDS
log "creating $venv with $("$python" --version 2>&1)"
rm -rf "$venv"
"$python" -m venv "$venv"
# Keep git (and a careless `git add -A`) out of it, as Python 3.13's venv does by itself.
printf '*\n' >"$venv/.gitignore"

export PIP_DISABLE_PIP_VERSION_CHECK=1
# --only-binary uamqp: its sdist needs cmake and OpenSSL headers and takes minutes to build;
# fail fast and clearly instead if no cp311 wheel is available.
"$venv/bin/python" -m pip install --quiet --only-binary=uamqp \
    "azure-iot-device==2.14.0" \
    "azure-iot-hub==2.7.0" \
    "azure-eventhub>=5.15,<5.16" \
    "six"

"$venv/bin/python" -m pip freeze --all >"$venv/requirements.lock.txt"
"$venv/bin/python" - <<'PY'
import importlib.metadata as md

import azure.eventhub  # noqa: F401
import azure.iot.device  # noqa: F401
import azure.iot.hub  # noqa: F401

names = ["azure-iot-device", "azure-iot-hub", "azure-eventhub", "paho-mqtt", "uamqp", "six",
         "msrest"]
print("azure-venv: import azure.iot.device, azure.iot.hub, azure.eventhub: ok;",
      ", ".join(f"{n}=={md.version(n)}" for n in names))
PY

printf '%s\n' "$want_hash" >"$stamp"
log "done in $((SECONDS - start)) s: $venv (pip freeze in $venv/requirements.lock.txt)"
