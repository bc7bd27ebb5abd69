"""`make demo` keeps working: the same script, reduced in size, on the session's broker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_runs_end_to_end_and_checks_itself(kafka_bootstrap: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "DEMO_EVENTS": "3000",
        "DEMO_QUIET": "1",
        "DEMO_DIR": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts/demo.py")], env=env, capture_output=True, text=True, timeout=240
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "DEMO OK: all 3,000 events accounted for" in out
    assert "missing              0" in out
    assert "CloudTrail Lake: Events per operation" in out
    assert "PutAuditEvents calls" in out
    # It stopped what it started: no emulator or pipeline process of this run is left.
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.strip()
    assert leftovers == ""
