"""A small, deterministic synthetic dataset for the README's first run and for tests.

Class sets the shape of a textured lesion-like blob on a noisy background: ``round`` (a disc), ``oval``
(an elongated ellipse) or ``spiky`` (a star). Position, size, rotation, texture and noise vary with the
seed. Images are written as 8-bit grayscale PNGs in one sub-folder per class.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from shiftkit.io import atomic_write

CLASSES = ("oval", "round", "spiky")


def _shape_mask(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = rng.uniform(0.35, 0.65, 2) * size
    radius = rng.uniform(0.18, 0.28) * size
    angle = rng.uniform(0, np.pi)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    if kind == "round":
        r = np.hypot(u, v) / radius
    elif kind == "oval":
        r = np.hypot(u / 1.6, v / 0.55) / radius
    else:
        theta = np.arctan2(v, u)
        r = np.hypot(u, v) / (radius * (1.0 + 0.45 * np.cos(6 * theta)))
    return np.clip(1.5 - r * 1.5, 0, 1) ** 0.5


def make_image(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    mask = _shape_mask(kind, size, rng)
    texture = rng.normal(0, 1, (size // 4 + 1, size // 4 + 1))
    texture = np.kron(texture, np.ones((4, 4)))[:size, :size]
    background = 0.25 + 0.05 * rng.normal(0, 1, (size, size))
    image = background + mask * (0.45 + 0.08 * texture)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def write_dataset(out: str | Path, per_class: int = 40, size: int = 64, seed: int = 0) -> Path:
    """Write ``per_class`` images of each class under ``out/<class>/`` (idempotent) and return ``out``."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    for kind in CLASSES:
        folder = out / kind
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            image = make_image(kind, size, rng)
            target = folder / f"{kind}_{index:04d}.png"
            if not target.exists():  # written atomically: a killed run leaves no truncated image to reuse
                atomic_write(target, lambda tmp, image=image: Image.fromarray(image).save(tmp, format="PNG"))
    return out
