"""Untrusted weight files and checkpoints cannot run code (issue 8, point 3).

A pickle whose ``__reduce__`` would create a marker file is offered everywhere shiftkit loads a file:
``--weights`` (finetune, diagnose), ``finetune --resume`` (checkpoints/last.pt) and ``diagnose --checkpoint``
(checkpoints/best.pt). Each must refuse it in one line with exit code 2, and the marker must not exist.
A static scan of ``shiftkit/`` checks that no module loads pickles any other way.
"""

from __future__ import annotations

import ast
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import shiftkit
from shiftkit.cli import app

runner = CliRunner()
PACKAGE = Path(shiftkit.__file__).parent
FAST = ["--arch", "resnet18", "--image-size", "32", "--device", "cpu"]
FINETUNE_FAST = [*FAST, "--epochs", "1", "--batch-size", "64"]
DIAGNOSE_FAST = [*FAST, "--permutations", "20", "--bootstrap", "10", "--tests", "mmd"]


class MarkerPayload:
    """Unpickling this calls ``open(marker, "w")``: the file appears iff the pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _write_payloads(folder: Path, marker: Path) -> dict[str, Path]:
    """The same payload as a torch zip checkpoint (shaped like shiftkit's) and as a raw pickle."""
    folder.mkdir(parents=True, exist_ok=True)
    zipped, raw = folder / "evil.pt", folder / "evil.pkl"
    torch.save({"model_state": {"fc.weight": MarkerPayload(marker)}, "epoch": 0}, zipped)
    raw.write_bytes(pickle.dumps({"fc.weight": MarkerPayload(marker)}))
    return {"torch zip": zipped, "raw pickle": raw}


@pytest.fixture()
def payloads(tmp_path) -> tuple[dict[str, Path], Path]:
    marker = tmp_path / "MARKER"
    files = _write_payloads(tmp_path / "payloads", marker)
    # the payloads are live: a plain unpickler runs them (so the tests below can fail)
    torch.load(files["torch zip"], weights_only=False)
    assert marker.exists()
    marker.unlink()
    pickle.loads(files["raw pickle"].read_bytes())
    assert marker.exists()
    marker.unlink()
    return files, marker


def _refused(result, marker: Path, name: str) -> str:
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert name in lines[0], lines[0]
    assert "weights_only=False" not in lines[0]  # torch's own advice (run the pickle anyway) is not passed on
    assert not marker.exists(), "the pickle ran"
    return lines[0]


@pytest.mark.parametrize("kind", ["torch zip", "raw pickle"])
@pytest.mark.parametrize("command", ["finetune", "diagnose"])
def test_weights_that_would_run_code_are_refused(phantom_dir, tmp_path, payloads, command, kind):
    files, marker = payloads
    target = files[kind]
    argv = (["finetune", str(phantom_dir), *FINETUNE_FAST] if command == "finetune"
            else ["diagnose", str(phantom_dir), str(phantom_dir), *DIAGNOSE_FAST])
    result = runner.invoke(app, [*argv, "--weights", str(target), "--out", str(tmp_path / "out")])
    line = _refused(result, marker, target.name)
    assert "refused" in line and "could run code" in line, line
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def finished_run(phantom_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    result = runner.invoke(app, ["finetune", str(phantom_dir), *FINETUNE_FAST, "--weights", "none",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_a_resume_checkpoint_that_would_run_code_is_refused(phantom_dir, finished_run, tmp_path, payloads):
    files, marker = payloads
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    shutil.copy(files["torch zip"], out / "checkpoints" / "last.pt")
    metrics_before = (out / "metrics.json").read_bytes()
    result = runner.invoke(app, ["finetune", str(phantom_dir), *FINETUNE_FAST, "--weights", "none",
                                 "--out", str(out), "--resume"])
    _refused(result, marker, "last.pt")
    assert (out / "metrics.json").read_bytes() == metrics_before


def test_a_diagnose_checkpoint_that_would_run_code_is_refused(phantom_dir, finished_run, tmp_path, payloads):
    files, marker = payloads
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(finished_run / "metrics.json", run / "metrics.json")
    assert json.loads((run / "metrics.json").read_text())["arch"] == "resnet18"
    shutil.copy(files["torch zip"], run / "checkpoints" / "best.pt")
    result = runner.invoke(app, ["diagnose", str(phantom_dir), str(phantom_dir), *DIAGNOSE_FAST,
                                 "--checkpoint", str(run), "--out", str(tmp_path / "out")])
    line = _refused(result, marker, "best.pt")
    assert "refused" in line, line
    assert not (tmp_path / "out").exists()


def test_the_real_checkpoint_of_a_run_still_loads(finished_run):
    """The refusal is about pickled code, not about shiftkit's own files."""
    from shiftkit.features import load_finetuned

    adapted, classes = load_finetuned(finished_run)
    assert classes == ["oval", "round", "spiky"] and adapted.head.out_features == 3


# -- static scan: no unsafe deserialisation anywhere in the package ------------------------------------------------

PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def _call_name(node: ast.Call) -> str:
    parts, func = [], node.func
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def _keyword(node: ast.Call, name: str):
    for keyword in node.keywords:
        if keyword.arg == name:
            return keyword.value
    return None


def unsafe_loads(source: str, filename: str = "<string>") -> list[str]:
    """Calls that deserialise arbitrary objects: pickle-family loads, ``torch.load`` without a literal
    ``weights_only=True``, ``np.load``/``numpy.load`` with ``allow_pickle`` not literally False, and
    imports of the pickle family (which have no other use here)."""
    problems = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                if name.split(".")[0] in PICKLE_MODULES:
                    problems.append(f"{filename}:{node.lineno}: imports {name}")
        if not isinstance(node, ast.Call):
            continue
        name = _call_name(node)
        line = f"{filename}:{node.lineno}: {name}"
        root, _, leaf = name.rpartition(".")
        if root.split(".")[0] in PICKLE_MODULES and leaf in {"load", "loads", "Unpickler", "open"}:
            problems.append(line)
        elif name == "torch.load":
            flag = _keyword(node, "weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                problems.append(f"{line} without weights_only=True")
        elif name in {"np.load", "numpy.load"}:
            flag = _keyword(node, "allow_pickle")
            if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                problems.append(f"{line} with allow_pickle")
        elif name in {"torch.jit.load", "torch.package.PackageImporter", "pd.read_pickle", "pandas.read_pickle"}:
            problems.append(line)
    return problems


@pytest.mark.parametrize("snippet", [
    "import pickle\npickle.load(open('f', 'rb'))",
    "from pickle import loads",
    "import torch\ntorch.load('f')",
    "import torch\ntorch.load('f', weights_only=False)",
    "import torch\nflag = True\ntorch.load('f', weights_only=flag)",
    "import numpy as np\nnp.load('f', allow_pickle=True)",
    "import joblib\njoblib.load('f')",
])
def test_the_scan_catches_unsafe_loads(snippet):
    assert unsafe_loads(snippet)


def test_the_scan_accepts_safe_loads():
    assert unsafe_loads("import torch, numpy as np\ntorch.load('f', map_location='cpu', weights_only=True)\n"
                        "np.load('f')\nnp.load('f', allow_pickle=False)") == []


def test_no_module_in_the_package_deserialises_untrusted_objects():
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        problems += unsafe_loads(path.read_text(), str(path.relative_to(PACKAGE.parent)))
    assert problems == []
