"""``fleetpki demo`` runs the whole story with real servers and exits 0; a broken step fails it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from fleetpki import demo
from fleetpki.errors import ValidationError


def test_the_demo_runs_end_to_end() -> None:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "fleetpki"), "demo"],
        capture_output=True,
        text=True,
        timeout=300,
        # PYTHONPATH passes through, so a worktree's demo runs its own code.
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"}
        | {k: v for k, v in os.environ.items() if k == "PYTHONPATH"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for number, step in enumerate(demo.STEPS, 1):
        assert f"{number}. {step.title}" in done.stdout
    assert done.stdout.count("✓") == len(demo.STEPS)
    assert "✗" not in done.stdout
    assert "5 messages stored durably" in done.stdout
    assert "never registered beforehand, provisioned through DPS" in done.stdout
    assert f"group {demo.DEMO_GROUP})" in done.stdout
    assert "closed the live session" in done.stdout
    assert "CONNACK 5" in done.stdout
    assert "through Azure's APIs" in done.stdout and "verified" in done.stdout
    assert f"link {demo.DEMO_LINK} disabled" in done.stdout
    assert "generation 2 with a new key, active once the hub link held it" in done.stdout
    assert "(2 CA certificates in the hub)" in done.stdout
    assert "was retired: 2 -> 1 CA certificates in the hub" in done.stdout


def test_a_failing_step_fails_the_demo_and_stops_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(state: demo.DemoState, console: Console) -> str:
        raise ValidationError("demo.broken", "this step is broken on purpose")

    steps = [demo.STEPS[0], demo.Step("a broken step", broken), demo.STEPS[3]]
    monkeypatch.setattr(demo, "STEPS", steps)
    console = Console(record=True, width=200)
    assert demo.run_demo(console) == 1
    text = console.export_text()
    assert "broken on purpose" in text
    assert demo.STEPS[2].title not in text
