"""Run every benchmark in ``bench/`` one after another and print their tables.

Run: ``make bench`` (installs cfssl and hyperfine first), or ``.venv/bin/python bench/run_all.py``.
Each benchmark is a separate process, so one does not warm or load the next.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
TIMEOUT = 180  # seconds; each benchmark is meant to take well under a minute
# Run on their own, not by make bench: the soak (make soak) takes about 10 minutes.
LONG_RUNS = frozenset({"soak.py"})


def main() -> int:
    failures = 0
    # Shared helpers (*_common.py), this runner and the profile (it needs py-spy, which
    # is not a project dependency) are not benchmarks.
    scripts = sorted(
        p
        for p in HERE.glob("*.py")
        if p.name not in {"run_all.py", "issuance_profile.py"}
        and not p.stem.endswith("_common")
        and p.name not in LONG_RUNS
    )
    for script in scripts:
        print(f"\n## {script.name}", flush=True)
        started = time.perf_counter()
        # Its own process group, so that on a timeout the servers it started go too.
        bench = subprocess.Popen([sys.executable, str(script)], start_new_session=True)
        try:
            returncode = bench.wait(TIMEOUT)
            status, failed = f"exit {returncode}", returncode != 0
        except subprocess.TimeoutExpired:
            os.killpg(bench.pid, signal.SIGTERM)
            try:
                bench.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(bench.pid, signal.SIGKILL)
                bench.wait()
            status, failed = f"stopped after {TIMEOUT} s", True
        print(f"({script.name}: {time.perf_counter() - started:.1f} s, {status})", flush=True)
        failures += failed
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
