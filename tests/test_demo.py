"""``fleetpki demo`` runs every step and exits 0; a broken step makes it exit non-zero."""

from __future__ import annotations

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
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for step in demo.STEPS:
        assert f"✓ {step.title}" in done.stdout
    assert "✗" not in done.stdout


def test_a_failing_step_fails_the_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(state: demo.DemoState) -> str:
        raise ValidationError("demo.broken", "this step is broken on purpose")

    steps = list(demo.STEPS)
    steps[3] = demo.Step(steps[3].title, broken)
    monkeypatch.setattr(demo, "STEPS", steps)
    console = Console(record=True, width=200)
    assert demo.run_demo(console) == 1
    text = console.export_text()
    assert "broken on purpose" in text
    assert steps[4].title not in text.split("fleetpki demo,")[0]
