"""ComBat models on disk: one JSON file, or an ``.npz`` holding the arrays and the settings as a JSON string; never a
pickle. Floats keep full precision, so a saved and reloaded model harmonizes to the same bits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from shiftkit.io import atomic_write, write_json


def write_model(path: Path, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """``.npz``: ``arrays`` plus ``meta`` as a JSON string; anything else: ``meta`` with ``"arrays"`` as lists."""
    if path.suffix.lower() == ".npz":
        def write(tmp: Path) -> None:
            with tmp.open("wb") as handle:
                np.savez(handle, meta=np.array(json.dumps(meta)), **arrays)

        atomic_write(path, write)
    else:
        write_json(path, {**meta, "arrays": {k: v.tolist() for k, v in arrays.items()}})


def read_model(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(meta, arrays) as :func:`write_model` wrote them; a damaged file raises ValueError, KeyError, OSError, ...
    for the caller to turn into one line."""
    if path.suffix.lower() == ".npz":
        with np.load(path, allow_pickle=False) as stored:
            return json.loads(str(stored["meta"])), {k: stored[k] for k in stored.files if k != "meta"}
    meta = json.loads(path.read_text())
    return meta, {k: np.asarray(v, dtype=np.float64) for k, v in meta.pop("arrays").items()}
