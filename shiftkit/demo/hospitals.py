"""Two synthetic hospitals with a documented, planted shift between them.

Both hospitals image the same three lesion kinds (the class sets the shape: ``oval``, ``round``, ``spiky``; see
:mod:`shiftkit.data.synthetic`). Hospital A (the source) is balanced and acquired at 64 px. Hospital B (the
target) differs in what its scanner does and in whom it sees:

- **contrast**: intensities compressed toward mid-grey, ``0.5 + 0.55 (x - 0.5) + 0.08`` (lower contrast, brighter);
- **blur**: Gaussian point-spread function, sigma 1.2 px at 64 px;
- **noise**: additive Gaussian, sigma 0.06 (on a 0-1 scale);
- **resolution**: acquired at 40 px instead of 64 px (area-averaged downsampling);
- **class priors**: oval 0.60, round 0.30, spiky 0.10 instead of a third each.

P(Y|X) is left unchanged: a lesion's kind is still set by its shape alone, so no concept shift is planted.
Everything is drawn from a seeded generator: the same seed writes the same bytes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from shiftkit.data.synthetic import CLASSES, make_image
from shiftkit.io import atomic_write, write_text

SOURCE_SIZE = 64


@dataclass(frozen=True)
class PlantedShift:
    """What makes hospital B differ from hospital A (all of it documented in the module docstring)."""

    contrast: float = 0.55
    brightness: float = 0.08
    blur_sigma: float = 1.2
    noise_sigma: float = 0.06
    target_size: int = 40
    source_prior: dict = field(default_factory=lambda: {c: 1 / 3 for c in CLASSES})
    target_prior: dict = field(default_factory=lambda: {"oval": 0.60, "round": 0.30, "spiky": 0.10})

    def to_dict(self) -> dict:
        return asdict(self)


def planted_property_changes(shift: PlantedShift, source_size: int = 64) -> dict[str, str]:
    """The image properties :func:`acquire_at_hospital_b` moves: "lower" or "higher" in B where the direction is a
    known answer, "confounded" where another planted step pushes the same property the other way. Brightness rises
    because the phantoms are darker than mid-grey, which the contrast compression moves them toward. Sharpness is
    confounded by a resize (the blur's sigma shrinks with the pixel grid, and area-averaging packs more detail into
    each pixel); noise by a contrast compression (noise is in intensity units, and the phantoms' own texture noise
    shrinks with it) and by the area-averaging, which averages added noise down."""
    resized = shift.target_size != source_size
    changes = {}
    if shift.contrast != 1:
        changes["contrast"] = "lower" if shift.contrast < 1 else "higher"
    if shift.brightness > 0:
        changes["brightness"] = "higher"
    if shift.blur_sigma > 0:
        changes["sharpness"] = "confounded" if resized else "lower"
    if shift.noise_sigma > 0:
        changes["noise"] = "confounded" if resized or shift.contrast < 1 else "higher"
    if resized:
        size = "lower" if shift.target_size < source_size else "higher"
        changes.update(width=size, height=size)
    return changes


def _counts(prior: dict, total: int) -> dict[str, int]:
    """Integer counts that follow ``prior`` exactly where it can (largest remainders)."""
    raw = {c: prior[c] * total for c in CLASSES}
    counts = {c: int(np.floor(v)) for c, v in raw.items()}
    for c in sorted(CLASSES, key=lambda c: raw[c] - counts[c], reverse=True)[: total - sum(counts.values())]:
        counts[c] += 1
    return counts


def acquire_at_hospital_b(image: np.ndarray, shift: PlantedShift, rng: np.random.Generator) -> np.ndarray:
    """Hospital B's scanner: contrast, blur, noise, then a coarser pixel grid (uint8 in, uint8 out)."""
    x = image.astype(np.float32) / 255.0
    x = 0.5 + shift.contrast * (x - 0.5) + shift.brightness
    x = gaussian_filter(x, shift.blur_sigma)
    x = x + rng.normal(0.0, shift.noise_sigma, x.shape)
    resized = Image.fromarray((np.clip(x, 0, 1) * 255).astype(np.uint8)).resize(
        (shift.target_size, shift.target_size), Image.Resampling.BOX)
    return np.asarray(resized)


def _write_png(path: Path, image: np.ndarray) -> None:
    atomic_write(path, lambda tmp: Image.fromarray(image).save(tmp, format="PNG"))


def write_hospitals(out: str | Path, n_source: int = 180, n_target: int = 150, seed: int = 0,
                    shift: PlantedShift | None = None, n_calibration: int = 90) -> dict[str, Path]:
    """Write hospital A (class folders) and hospital B (images + a labelled manifest kept apart for evaluation).

    Returns the paths: ``source`` (A's class folders), ``target`` (B's unlabeled image folder),
    ``target_labels`` (B's ``path,label`` manifest, which diagnose is not given: it must infer B's priors) and
    ``source_calibration`` (``n_calibration`` more labelled images from A that no model trains on: what
    ``shiftkit estimate`` calibrates on). The calibration images are drawn last, so A and B are the same bytes
    with or without them.
    """
    shift = shift or PlantedShift()
    out = Path(out)
    rng = np.random.default_rng(seed)
    source_dir, target_dir = out / "hospital_a", out / "hospital_b"
    for kind, count in _counts(shift.source_prior, n_source).items():
        for i in range(count):
            _write_png(source_dir / kind / f"a_{kind}_{i:04d}.png", make_image(kind, SOURCE_SIZE, rng))
    rows = []
    target_kinds = [k for k, count in _counts(shift.target_prior, n_target).items() for _ in range(count)]
    for i, kind in enumerate(rng.permutation(target_kinds)):  # names do not give the class away
        name = f"b_{i:04d}.png"
        _write_png(target_dir / name, acquire_at_hospital_b(make_image(str(kind), SOURCE_SIZE, rng), shift, rng))
        rows.append(f"hospital_b/{name},{kind}")
    labels = out / "hospital_b_labels.csv"
    write_text(labels, "path,label\n" + "\n".join(rows) + "\n")
    calibration_dir = out / "hospital_a_calibration"
    for kind, count in _counts(shift.source_prior, n_calibration).items():
        for i in range(count):
            _write_png(calibration_dir / kind / f"a_cal_{kind}_{i:04d}.png", make_image(kind, SOURCE_SIZE, rng))
    return {"source": source_dir, "target": target_dir, "target_labels": labels,
            "source_calibration": calibration_dir}
