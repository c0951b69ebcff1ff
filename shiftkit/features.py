"""Representations for shift measurement: penultimate-layer embeddings (and a classifier's softmax outputs).

Embeddings are the inputs of the network's final layer, captured with a forward pre-hook, so every
architecture in :mod:`shiftkit.models` works unchanged. They are computed in batches (on the GPU when there is
one) and cached on disk under a key made of the images' content, the model and the preprocessing, so that a
second ``diagnose`` or ``audit`` on the same images never runs the network again.

With ``blocks=True`` the same pass also collects, through :class:`shiftkit.models.blocks.BlockProbe`, a pooled
descriptor per image for every block of the architecture's partition but the head's (per-channel mean and std of
the block's output) and the BatchNorm layers' input moments over the whole domain; both go into the same cache
entry as extra arrays.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from shiftkit.data.cache import ImageCache, content_key, file_digest
from shiftkit.data.dataset import ImageDataset, collate
from shiftkit.data.validate import SkippedImage, iter_batches
from shiftkit.data.readers import ReadOptions
from shiftkit.data.table import ImageTable
from shiftkit.errors import ImageReadError, ModelError
from shiftkit.io import atomic_write
from shiftkit.models.blocks import BlockProbe, probed_blocks
from shiftkit.models.registry import AdaptedModel, build_model
from shiftkit.shift.image_properties import PropertyTap, arrays_to_properties, properties_to_arrays


@dataclass(frozen=True)
class Representation:
    """Per image (rows in the table's order): ``embeddings`` (n x d) and, when the model has a trained head,
    ``probabilities`` (n x C).

    When extracted with ``blocks=True``: ``blocks`` maps each non-head block of the partition, in order, to its
    per-image descriptors (n x 2C float32: C channel means, then C channel standard deviations of the block's
    output), and ``bn_moments`` maps each BatchNorm2d layer of those blocks to the moments of its input over the
    whole domain: ``{"block": name, "count": int, "mean": (C,) float64, "var": (C,) float64}``."""

    embeddings: np.ndarray
    probabilities: np.ndarray | None = None
    skipped: tuple[SkippedImage, ...] = ()  # unreadable images left out (--on-bad-image skip); rows exclude them
    blocks: dict[str, np.ndarray] | None = None
    bn_moments: dict[str, dict] | None = None
    properties: list[dict[str, float]] | None = None  # with blocks: image properties per row, from the same decode


@torch.no_grad()
def head_inputs_and_outputs(
    adapted: AdaptedModel,
    batches,
    device: torch.device,
    on_batch: Callable[[], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Run the model in eval mode over ``batches`` of (uint8 images, targets); return the head's inputs
    (the embeddings), its outputs (logits) and the targets. Embeddings and logits stay on ``device``."""
    captured: list[torch.Tensor] = []
    hook = adapted.head.register_forward_pre_hook(lambda module, args: captured.append(args[0].float()))
    logits, targets = [], []
    amp = device.type == "cuda"
    try:
        adapted.model.eval()
        for images, target in batches:
            inputs = adapted.inputs(images, device)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp):
                logits.append(adapted.model(inputs).float())
            targets.append(target)
            if on_batch:
                on_batch()
    finally:
        hook.remove()
    return torch.cat(captured), torch.cat(logits), targets


def _model_key(adapted: AdaptedModel) -> str:
    weights = adapted.weights
    if weights not in ("imagenet", "none") and Path(weights).is_file():
        weights = file_digest(Path(weights))
    return f"{adapted.arch}|{weights}|{adapted.preprocessing}"


def _cache_key(table: ImageTable, adapted: AdaptedModel, read_options: ReadOptions, head: bool) -> str:
    digest = hashlib.sha1()
    for record in table.records:
        digest.update(content_key(record.path).encode())
    precision = "bf16" if torch.cuda.is_available() else "fp32"  # GPU embeddings (autocast) are not CPU ones
    digest.update(f"{_model_key(adapted)}|{read_options.key()}|head={head}|{precision}".encode())
    return digest.hexdigest()


def _block_arrays(result: Representation) -> dict[str, np.ndarray]:
    """The cache entry's extra arrays for ``result.blocks`` and ``result.bn_moments`` (npz names are indices,
    with the block and layer names in arrays of their own)."""
    blocks, moments = result.blocks or {}, result.bn_moments or {}
    arrays = {"block_names": np.array(list(blocks), dtype=np.str_),
              "bn_names": np.array(list(moments), dtype=np.str_),
              "bn_blocks": np.array([m["block"] for m in moments.values()], dtype=np.str_),
              "bn_count": np.array([m["count"] for m in moments.values()], dtype=np.int64)}
    for index, values in enumerate(blocks.values()):
        arrays[f"block_{index}"] = values
    for index, m in enumerate(moments.values()):
        arrays[f"bn_mean_{index}"], arrays[f"bn_var_{index}"] = m["mean"], m["var"]
    return arrays


def _read_blocks(stored, rows: int, expected: list[str]):
    """(blocks, bn_moments) from an open cache entry, or None when it has none or not the expected blocks."""
    if "block_names" not in stored.files:
        return None
    names = [str(n) for n in stored["block_names"]]
    if names != expected:
        return None
    blocks = {name: stored[f"block_{i}"] for i, name in enumerate(names)}
    if any(b.ndim != 2 or len(b) != rows or b.dtype != np.float32 for b in blocks.values()):
        return None
    layer_blocks, counts = stored["bn_blocks"], stored["bn_count"]
    moments = {str(layer): {"block": str(layer_blocks[i]), "count": int(counts[i]),
                            "mean": stored[f"bn_mean_{i}"], "var": stored[f"bn_var_{i}"]}
               for i, layer in enumerate(stored["bn_names"])}
    return blocks, moments


def _read_cached(cache_file: Path, table: ImageTable, trained_head: bool,
                 blocks: list[str] | None = None) -> Representation | None:
    """The cached representation of ``table``, or None when the entry is damaged (truncated, not an archive of
    the expected arrays, rows that do not add up to the table): a cache entry is recomputed, never fatal.
    ``blocks``: the block names asked for; an entry without them (one written before, or by a pass without
    ``blocks=True``) is then a miss too."""
    damaged = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)
    try:
        stored = np.load(cache_file, allow_pickle=False)
    except damaged:
        return None
    if not isinstance(stored, np.lib.npyio.NpzFile):  # a plain array: not an entry this code wrote
        return None
    try:
        with stored:
            embeddings = stored["embeddings"]
            probabilities = stored["probabilities"] if "probabilities" in stored.files else None
            indices = stored["skipped_index"] if "skipped_index" in stored.files else np.zeros(0, np.int64)
            reasons = stored["skipped_reason"] if "skipped_reason" in stored.files else np.zeros(0, np.str_)
            extra = _read_blocks(stored, len(embeddings), blocks) if blocks is not None else None
            properties = arrays_to_properties(stored) if blocks is not None else None
    except damaged:
        return None
    if blocks is not None and (extra is None or properties is None or len(properties) != len(embeddings)):
        return None
    rows = len(table) - len(indices)
    if (embeddings.ndim != 2 or len(embeddings) != rows or len(reasons) != len(indices)
            or not all(0 <= int(i) < len(table) for i in indices) or (probabilities is None) == trained_head
            or (probabilities is not None and len(probabilities) != rows)):
        return None
    skipped = tuple(SkippedImage(str(table.records[int(i)].path), str(reason), int(i), table.records[int(i)].origin)
                    for i, reason in zip(indices, reasons))
    if extra is not None:
        return Representation(embeddings, probabilities, skipped, *extra, properties)
    return Representation(embeddings, probabilities, skipped)


def extract(
    table: ImageTable,
    adapted: AdaptedModel,
    device: torch.device,
    *,
    trained_head: bool = False,
    batch_size: int = 128,
    read_options: ReadOptions = ReadOptions(),
    cache_dir: Path | None = None,
    on_batch: Callable[[], None] | None = None,
    on_bad_image: str = "fail",
    blocks: bool = False,
) -> Representation:
    """Embeddings of every image in ``table`` (and softmax outputs when ``trained_head``), cached on disk.

    Images are decoded once, one batch at a time (none is kept after its batch, so 100,000 images fit);
    under ``on_bad_image="skip"`` unreadable ones are left out and listed in ``Representation.skipped``.
    ``blocks=True`` also fills ``Representation.blocks`` and ``bn_moments`` from the same forward pass (hooks;
    the embeddings are unchanged) and ``properties`` from the same decode (:class:`PropertyTap`); a cache entry
    written without them is then recomputed and written over."""
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"{_cache_key(table, adapted, read_options, trained_head)}.npz"
        wanted = probed_blocks(adapted) if blocks else None
        cached = _read_cached(cache_file, table, trained_head, wanted) if cache_file.is_file() else None
        if cached is not None:  # a missing or damaged entry is recomputed below, and written over
            if cached.skipped and on_bad_image != "skip":
                first = cached.skipped[0]
                raise ImageReadError(f"{first.path}: {first.reason}")
            return cached
    adapted.model.to(device)
    if device.type == "cuda":
        adapted.model.to(memory_format=torch.channels_last)
    tap = PropertyTap() if blocks else None  # image properties from the one decode the pass does anyway
    dataset = ImageDataset(table, ImageCache(adapted.preprocessing, read_options, max_memory_bytes=0), on_raw=tap)
    skipped: list[SkippedImage] = []

    def loader():
        yield from iter_batches(dataset, batch_size, on_bad_image, skipped, collate, pin_memory=device.type == "cuda")
        if len(skipped) == len(table):
            raise ImageReadError(f"{table.source}: none of its {len(table)} images could be read "
                                 f"(first: {skipped[0].path}: {skipped[0].reason})")

    probe = BlockProbe(adapted, descriptors=blocks, bn=blocks)
    try:
        with probe:
            embeddings, logits, _ = head_inputs_and_outputs(adapted, loader(), device, on_batch)
    finally:
        if tap is not None:
            tap.close()
    kept = sorted(set(range(len(table))) - {s.index for s in skipped})
    result = Representation(
        embeddings.cpu().numpy().astype(np.float32),
        logits.softmax(1).cpu().numpy().astype(np.float32) if trained_head else None,
        tuple(skipped),
        probe.descriptors() if blocks else None,
        probe.bn_moments() if blocks else None,
        tap.rows(kept) if tap is not None else None,
    )
    if cache_file is not None:
        arrays = {"embeddings": result.embeddings,
                  "skipped_index": np.array([s.index for s in skipped], dtype=np.int64),
                  "skipped_reason": np.array([s.reason for s in skipped], dtype=np.str_)}
        if result.probabilities is not None:
            arrays["probabilities"] = result.probabilities
        if blocks:
            arrays.update(_block_arrays(result))
            arrays.update(properties_to_arrays(result.properties))

        def save(tmp: Path) -> None:
            with tmp.open("wb") as handle:
                np.savez(handle, **arrays)

        atomic_write(cache_file, save)
    return result


def _finetuned_files(path: Path) -> tuple[Path, Path | None]:
    """(checkpoint, metrics.json or None) for a finetune output folder or a ``.pt`` checkpoint file."""
    path = Path(path)
    if path.is_file():
        beside = path.parent.parent / "metrics.json"  # RUN/checkpoints/best.pt
        return path, beside if beside.is_file() else None
    metrics_path, checkpoint = path / "metrics.json", path / "checkpoints" / "best.pt"
    if not metrics_path.is_file() or not checkpoint.is_file():
        raise ModelError(f"{path}: not a finetune output folder (needs metrics.json and checkpoints/best.pt)")
    return checkpoint, metrics_path


def finetuned_info(path: Path) -> dict:
    """How to rebuild a fine-tuned model: ``arch``, ``classes``, ``image_size``, ``task`` (may be None),
    ``epoch``, ``metrics`` (the run's metrics.json, or None) and ``state`` (the weights). A checkpoint file
    written by ``adapt-bn`` carries these itself; one inside a run folder takes them from RUN/metrics.json."""
    checkpoint, metrics_path = _finetuned_files(path)
    try:
        stored = torch.load(checkpoint, map_location="cpu", weights_only=True)
        state = stored["model_state"]
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{checkpoint}: cannot load the fine-tuned weights ({reason[:200]})") from None
    metrics = None
    try:
        if metrics_path is not None:
            metrics = json.loads(metrics_path.read_text())
        source = stored if "arch" in stored else metrics
        if source is None:
            raise KeyError("arch")
        info = {
            "arch": source["arch"],
            "classes": list(source["classes"]),
            "image_size": source["image_size"] if source is stored else source["config"]["image_size"],
            "task": source.get("task"),
        }
    except (ValueError, KeyError, TypeError) as exc:
        where = metrics_path if metrics_path is not None and "arch" not in stored else checkpoint
        raise ModelError(f"{where}: not a finetune checkpoint or metrics file ({type(exc).__name__}: {exc})") from None
    return {**info, "epoch": stored.get("epoch"), "metrics": metrics, "state": state, "checkpoint": checkpoint}


def load_finetuned(run_dir: Path) -> tuple[AdaptedModel, list[str]]:
    """A model fine-tuned by ``shiftkit finetune``: ``RUN/metrics.json`` says how to build it, and
    ``RUN/checkpoints/best.pt`` holds its weights (loaded with ``weights_only=True``). ``run_dir`` may also be
    a ``.pt`` checkpoint: one written by ``shiftkit adapt-bn`` (which records arch, classes and image size), or
    ``RUN/checkpoints/best.pt`` itself."""
    info = finetuned_info(run_dir)
    adapted = build_model(info["arch"], len(info["classes"]), "none", info["image_size"])
    try:
        adapted.model.load_state_dict(info["state"])
    except Exception as exc:
        raise ModelError(f"{info['checkpoint']}: cannot load the fine-tuned weights ({type(exc).__name__})") from None
    adapted.weights = str(info["checkpoint"])
    return adapted, info["classes"]


def pca_model(data: np.ndarray, components: int, seed: int = 0):
    """An unfitted scikit-learn PCA of at most ``components`` components, no more than ``data`` has columns or rows
    (the one place that cap is decided)."""
    from sklearn.decomposition import PCA

    return PCA(n_components=min(components, data.shape[1], len(data)), random_state=seed)


def fit_pca(pooled: np.ndarray, components: int, seed: int = 0):
    """PCA of ``pooled`` (the embeddings of every domain compared, stacked), at most ``components`` of them.
    Callers fit it on all domains pooled, without domain labels, so that the domains stay exchangeable under
    "no shift" and the permutation tests stay exact (a source-only fit does not)."""
    return pca_model(pooled, components, seed).fit(pooled)


