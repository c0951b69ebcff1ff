"""``compare`` killed with SIGKILL mid-grid: the rerun skips finished runs and gives the uninterrupted table."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from shiftkit.compare.grid import read_records


def _compare(data, out):
    return [sys.executable, "-m", "shiftkit", "compare", str(data), "--strategies", "lp,ft", "--lrs", "1e-2",
            "--seeds", "2", "--epochs", "1", "--archs", "resnet18", "--weights", "none", "--image-size", "32",
            "--batch-size", "8", "--device", "cpu", "--out", str(out)]


@pytest.mark.slow
def test_sigkill_mid_grid_then_rerun_skips_finished_runs(phantom_dir, tmp_path):
    full = subprocess.run(_compare(phantom_dir, tmp_path / "full"), capture_output=True, text=True)
    assert full.returncode == 0, full.stderr
    expected = json.loads((tmp_path / "full" / "compare.json").read_text())["table"]

    out = tmp_path / "killed"
    process = subprocess.Popen(_compare(phantom_dir, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and process.poll() is None:
        if (out / "runs.jsonl").is_file() and len(read_records(out)) >= 1:
            break
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done_before = read_records(out)
    assert 1 <= len(done_before) < 4, "the grid finished before it could be killed"
    assert not (out / "compare.json").exists()

    rerun = subprocess.run(_compare(phantom_dir, out), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"ran {4 - len(done_before)} runs, {len(done_before)} already recorded" in rerun.stdout + rerun.stderr
    records = read_records(out)
    assert sorted((r["strategy"], r["seed"]) for r in records) == [("ft", 0), ("ft", 1), ("lp", 0), ("lp", 1)]
    assert records[: len(done_before)] == done_before  # finished runs were kept, not redone
    assert json.loads((out / "compare.json").read_text())["table"] == expected
