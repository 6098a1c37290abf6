"""Run every benchmark in ``bench/`` one after another and print their tables.

Run: ``make bench`` (installs cfssl and hyperfine first), or ``.venv/bin/python bench/run_all.py``.
Each benchmark is a separate process, so one does not warm or load the next.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
SKIP = {"run_all.py", "hub_common.py"}


def main() -> int:
    failures = 0
    scripts = sorted(p for p in HERE.glob("*.py") if p.name not in SKIP)
    for script in scripts:
        print(f"\n## {script.name}", flush=True)
        started = time.perf_counter()
        done = subprocess.run([sys.executable, str(script)], check=False)
        print(
            f"({script.name}: {time.perf_counter() - started:.1f} s, exit {done.returncode})",
            flush=True,
        )
        failures += done.returncode != 0
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
