"""Interruptions lose nothing (issue 8, point 2).

- Every module of the package writes its files through ``shiftkit.io`` (temporary file + rename): a static scan
  finds any other writer. Inside an ``atomic_write`` callback the temporary file is called ``tmp`` (the
  convention all modules follow), so writes to ``tmp`` (or to a handle opened on it, or to an in-memory buffer)
  are the allowed ones.
- Killing a process in the middle of a write leaves the previous file intact.
- ``finetune --resume`` after ``kill -9`` reaching the uninterrupted run's numbers is in ``tests/test_resume.py``.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import shiftkit

PACKAGE = Path(shiftkit.__file__).parent
WRITE_MODES = set("wax+")
BUFFERS = {"BytesIO", "StringIO"}
# Deliberate exceptions: (module, call) -> why it is safe without temp file + rename.
ALLOWED = {
    ("shiftkit/compare/grid.py", "path.open"): "runs.jsonl is append-only: one O_APPEND write per record; a torn "
                                               "last line is cut off (this call) before the next append",
    ("shiftkit/compare/grid.py", "os.open"): "runs.jsonl is append-only: one O_APPEND write + fsync per record",
}


def _name(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    elif isinstance(node, ast.Call):
        parts.append(_name(node.func) + "()")
    return ".".join(reversed(parts))


def _mode(call: ast.Call, position: int) -> str:
    value = call.args[position] if len(call.args) > position else next(
        (k.value for k in call.keywords if k.arg == "mode"), None)
    return value.value if isinstance(value, ast.Constant) and isinstance(value.value, str) else "r"


def _safe_names(tree: ast.AST) -> set[str]:
    """``tmp``, handles opened on it (``with tmp.open("wb") as handle``) and in-memory buffers."""
    safe = {"tmp"}
    changed = True
    while changed:
        changed = False
        for node in ast.walk(tree):
            if isinstance(node, ast.withitem) and isinstance(node.optional_vars, ast.Name):
                call = node.context_expr
                if isinstance(call, ast.Call) and (
                    (isinstance(call.func, ast.Attribute) and _name(call.func.value) in safe)
                    or (_name(call.func) == "open" and call.args and _name(call.args[0]) in safe)
                ) and node.optional_vars.id not in safe:
                    safe.add(node.optional_vars.id)
                    changed = True
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
                func = node.value.func  # a buffer, or a sibling of tmp (``tmp.with_name(...)``) renamed onto it
                if _name(func).rpartition(".")[2] in BUFFERS or (
                        isinstance(func, ast.Attribute) and _name(func.value) in safe):
                    for target in node.targets:
                        if isinstance(target, ast.Name) and target.id not in safe:
                            safe.add(target.id)
                            changed = True
    return safe


def non_atomic_writes(source: str, filename: str = "<string>") -> list[str]:
    """Calls that write a file other than an ``atomic_write`` temporary file or an in-memory buffer."""
    tree = ast.parse(source, filename)
    safe = _safe_names(tree)
    def is_safe(node: ast.AST) -> bool:
        if isinstance(node, ast.Call) and _name(node.func) in ("str", "Path", "os.fspath") and node.args:
            node = node.args[0]
        return _name(node) in safe or (isinstance(node, ast.Call) and _name(node.func).rpartition(".")[2] in BUFFERS)

    problems = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        receiver, _, method = name.rpartition(".")
        target = None
        if name == "open" and set(_mode(node, 1)) & WRITE_MODES:
            target = node.args[0] if node.args else None
        elif name == "os.open":
            target = node.args[0] if node.args else None
        elif method == "open" and receiver and set(_mode(node, 0)) & WRITE_MODES:
            target = node.func.value
        elif method in ("write_text", "write_bytes") and receiver:
            target = node.func.value
        elif name == "torch.save":
            target = node.args[1] if len(node.args) > 1 else None
        elif name in ("np.save", "np.savez", "np.savez_compressed", "np.savetxt", "numpy.save", "numpy.savez"):
            target = node.args[0] if node.args else None
        elif method in ("savefig", "to_csv", "to_json", "to_parquet", "imwrite", "WriteImage", "dump") and receiver:
            target = node.args[0] if method != "dump" else (node.args[1] if len(node.args) > 1 else None)
            if method in ("WriteImage", "imwrite"):
                target = node.args[1] if method == "WriteImage" and len(node.args) > 1 else target
        elif method == "save" and (isinstance(node.func.value, ast.Call) or receiver.split(".")[-1] in
                                   ("image", "img", "pil", "Image")):
            target = node.args[0] if node.args else None  # PIL's Image.save(fp); shiftkit objects' .save are
            # checked where they are defined
        else:
            continue
        if target is None or is_safe(target) or (filename, name) in ALLOWED:
            continue
        problems.append(f"{filename}:{node.lineno}: {name}({_name(target) or '...'}) writes outside atomic_write")
    return problems


@pytest.mark.parametrize("snippet", [
    "path.write_text('x')",
    "out.write_bytes(b'x')",
    "with open(path, 'w') as f: f.write('x')",
    "with path.open('a') as f: f.write('x')",
    "torch.save(state, path)",
    "np.save(path, array)",
    "np.savez(out / 'a.npz', x=array)",
    "Image.fromarray(a).save(target)",
    "fig.savefig(out / 'plot.png')",
    "json.dump(data, handle)",
    "sitk.WriteImage(image, str(path))",
])
def test_the_scan_catches_direct_writes(snippet):
    assert non_atomic_writes(snippet)


def test_the_scan_accepts_writes_inside_atomic_write():
    source = textwrap.dedent("""
        atomic_write(path, lambda tmp: tmp.write_text(text))
        def save(tmp):
            with tmp.open("wb") as handle:
                np.save(handle, array)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        Image.fromarray(a).save(buffer, format="PNG")
        atomic_write(target, lambda tmp: Image.fromarray(a).save(tmp, format="PNG"))
        def save_sitk(tmp):
            named = tmp.with_name(tmp.name + ".nii.gz")
            sitk.WriteImage(image, str(named))
            os.replace(named, tmp)
        with path.open("rb") as handle: handle.read()
        Image.open(path)
    """)
    assert non_atomic_writes(source) == []


MODULES = sorted(str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py") if p.name != "io.py"
                 or p.parent != PACKAGE)


@pytest.mark.parametrize("module", MODULES)
def test_every_module_writes_through_atomic_write(module):
    path = PACKAGE.parent / module
    assert non_atomic_writes(path.read_text(), module) == []


# -- a kill during a write ---------------------------------------------------------------------------------------

SLOW_WRITER = """
import sys, time
from pathlib import Path
from shiftkit.io import atomic_write

def write(tmp: Path) -> None:
    with tmp.open("w") as handle:
        handle.write('{"half": ')
        handle.flush()
        Path(sys.argv[2]).touch()  # tell the parent we are mid-write
        time.sleep(60)
        handle.write('"written"}')

atomic_write(Path(sys.argv[1]), write)
"""


def test_sigkill_during_a_write_leaves_the_old_file_intact(tmp_path):
    target, started = tmp_path / "report.json", tmp_path / "started"
    target.write_text(json.dumps({"old": True}))
    process = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(target), str(started)])
    deadline = time.time() + 60
    while not started.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    assert started.exists(), "the writer never started"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert json.loads(target.read_text()) == {"old": True}
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("report.json", "started")]
    assert all(name.startswith(".report.json.") and name.endswith(".tmp") for name in leftovers), leftovers


def test_an_exception_during_a_write_leaves_the_old_file_and_no_temporary(tmp_path):
    from shiftkit.io import atomic_write

    target = tmp_path / "metrics.json"
    target.write_text("old")

    def write(tmp: Path) -> None:
        tmp.write_text("half")
        raise KeyboardInterrupt  # Ctrl-C mid-write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, write)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


# -- one run per --out (issue 13, item 3) -------------------------------------------------------------------------

HOLDER = """
import sys, time
from pathlib import Path
from shiftkit.io import output_lock

with output_lock(Path(sys.argv[1]), file=sys.argv[3] == "file"):
    Path(sys.argv[2]).touch()  # tell the parent the lock is held
    time.sleep(120)
"""

TINY_FINETUNE = ["--arch", "resnet18", "--weights", "none", "--image-size", "32", "--epochs", "1", "--batch-size",
                 "64", "--device", "cpu"]


def _hold(target: Path, started: Path, kind: str = "folder") -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(target), str(started), kind])
    deadline = time.time() + 60
    while not started.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    assert started.exists(), "the lock holder never started"
    return process


def _one_error_line(result) -> str:
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert result.exit_code == 2 and "Traceback" not in result.output and len(lines) == 1, result.output
    return lines[0]


def test_a_second_run_into_a_held_out_is_refused_and_a_killed_holder_leaves_no_stuck_lock(phantom_dir,
                                                                                            phantom_test_dir, tmp_path):
    from typer.testing import CliRunner

    from shiftkit.cli import app
    from shiftkit.io import output_lock

    out = tmp_path / "out"
    holder = _hold(out, tmp_path / "started")
    try:
        runner = CliRunner()
        for argv in (["finetune", phantom_dir, "--out", out, *TINY_FINETUNE],
                     ["diagnose", phantom_dir, phantom_test_dir, "--out", out, "--arch", "resnet18", "--weights",
                      "none", "--image-size", "32", "--device", "cpu", "--tests", "mmd", "--permutations", "20",
                      "--bootstrap", "10"],
                     ["harmonize", phantom_test_dir, "--method", "zscore", "--reference", phantom_dir,
                      "--no-measure", "--out", out]):
            line = _one_error_line(runner.invoke(app, [str(a) for a in argv]))
            assert f"--out {out} is in use by another shiftkit run (pid {holder.pid} on " in line, line
            assert "wait for it to finish, or use another --out" in line
        assert sorted(p.name for p in out.iterdir()) == [".shiftkit.lock"], "the refused runs wrote into OUT"
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # the lock file stays behind; the lock on it dies with the process
        holder.wait()
    assert (out / ".shiftkit.lock").exists()
    with output_lock(out):
        pass
    assert list(out.iterdir()) == []


def test_combat_output_files_are_locked_too(tmp_path):
    from typer.testing import CliRunner

    from shiftkit.cli import app

    features = tmp_path / "f.csv"
    features.write_text("site,f1\n" + "".join(f"s{i % 2},{i * 0.37 % 1:.3f}\n" for i in range(12)))
    out = tmp_path / "h.csv"
    holder = _hold(out, tmp_path / "started", "file")
    try:
        line = _one_error_line(CliRunner().invoke(app, ["combat", str(features), "--out", str(out)]))
        assert f"--out {out} is in use by another shiftkit run" in line, line
        assert not out.exists()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()


def test_finetune_keeps_a_finished_run_unless_told_to_resume_or_overwrite(phantom_dir, tmp_path):
    from typer.testing import CliRunner

    from shiftkit.cli import app

    runner = CliRunner()
    out = tmp_path / "run"
    argv = ["finetune", str(phantom_dir), "--out", str(out), *TINY_FINETUNE]
    first = runner.invoke(app, argv)
    assert first.exit_code == 0, first.output
    kept = {p: p.read_bytes() for p in (out / "metrics.json", out / "checkpoints" / "best.pt")}
    line = _one_error_line(runner.invoke(app, [*argv, "--arch", "efficientnet_lite0"]))
    assert f"--out {out} holds a finished run (metrics.json); add --resume to continue it, --overwrite to " \
           "replace it, or use another --out" in line, line
    assert {p: p.read_bytes() for p in kept} == kept, "the refused run changed the finished one"
    for mistake in (["--lp-solver", "sgd"], ["--test", str(tmp_path / "missing.csv")]):  # caught before replacing
        _one_error_line(runner.invoke(app, [*argv, "--overwrite", *mistake]))
        assert {p: p.read_bytes() for p in kept} == kept, f"--overwrite {mistake} lost the finished run"
    again = runner.invoke(app, [*argv, "--overwrite", "--seed", "1"])
    assert again.exit_code == 0, again.output
    assert json.loads((out / "metrics.json").read_text())["seed"] == 1


# -- a damaged cache entry is recomputed, never fatal (issue 13, item 11) -------------------------------------------

def _damage(path: Path, how: str) -> None:
    """A cache entry as a full disk, a torn copy or a stray file leaves it."""
    import numpy as np

    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(b"not a cache entry " * 10)
    elif how == "another array":
        with path.open("wb") as handle:
            np.save(handle, np.zeros((2, 2), np.float64))
    elif how == "an archive of other arrays":
        with path.open("wb") as handle:
            np.savez(handle, something=np.zeros(3))


DAMAGES = ["truncated", "empty", "garbage", "another array", "an archive of other arrays"]


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_embedding_cache_entry_is_recomputed(tmp_path, how):
    import numpy as np
    import torch
    from torch import nn

    from shiftkit.data.preprocess import Preprocessing
    from shiftkit.data.synthetic import write_dataset
    from shiftkit.data.table import load_table
    from shiftkit.features import extract
    from shiftkit.models.registry import AdaptedModel

    table = load_table(write_dataset(tmp_path / "data", per_class=2, size=16, seed=0))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4), nn.Linear(4, 2))
    adapted = AdaptedModel("tiny", model, "2", [("all", ["0", "1", "2"])], Preprocessing(8, 8), "none")
    first = extract(table, adapted, torch.device("cpu"), cache_dir=tmp_path / "cache")
    (entry,) = (tmp_path / "cache").glob("*.npz")
    _damage(entry, how)
    again = extract(table, adapted, torch.device("cpu"), cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(again.embeddings, first.embeddings)
    with np.load(entry) as stored:  # written over with a good entry
        np.testing.assert_array_equal(stored["embeddings"], first.embeddings)


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_image_cache_entry_is_recomputed(tmp_path, how):
    import torch

    from shiftkit.data.cache import ImageCache
    from shiftkit.data.preprocess import Preprocessing
    from shiftkit.data.synthetic import write_dataset
    from shiftkit.data.table import load_table

    path = load_table(write_dataset(tmp_path / "data", per_class=1, size=16, seed=0)).records[0].path
    first = ImageCache(Preprocessing(8, 8), disk_dir=tmp_path / "images").get(path)
    (entry,) = (tmp_path / "images").rglob("*.npy")
    _damage(entry, how)
    cache = ImageCache(Preprocessing(8, 8), disk_dir=tmp_path / "images")
    assert torch.equal(cache.get(path), first) and cache.decodes == 1
    fresh = ImageCache(Preprocessing(8, 8), disk_dir=tmp_path / "images")
    assert torch.equal(fresh.get(path), first) and fresh.decodes == 0  # the entry was rewritten
