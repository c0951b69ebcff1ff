"""Model-level harmonization: adapt a network's BatchNorm layers to unlabeled target images.

- **AdaBN** (Li et al. 2016/2018): BatchNorm's running mean and variance are the source domain's feature
  statistics; re-estimating them on the target re-centres and re-scales every layer's features for it. Every
  BatchNorm's running statistics are reset and replaced by the cumulative average over the target batches
  (``momentum=None``), with only the BatchNorm layers in train mode (dropout and the rest stay in eval mode) and
  no gradients. Nothing else changes.
- **TENT** (Wang et al., ICLR 2021): BatchNorm layers normalise with the current batch's statistics and their
  affine parameters (weight, bias) are trained by Adam to minimise the entropy of the predictions on the target;
  every other parameter is frozen. ``epochs`` passes over the target, one step per batch. Because a saved
  checkpoint is evaluated in eval mode, the running statistics are then re-estimated on the target with the
  adapted affine parameters (an AdaBN pass), so the saved model normalises as TENT did. Unlike the reference
  code, dropout stays off during adaptation (deterministic updates).

:func:`adapt_bn` works on any ``torch.nn.Module``; :func:`run_adapt_bn` applies it to a ``shiftkit finetune``
checkpoint and writes a new checkpoint that ``diagnose --checkpoint`` and :func:`shiftkit.features.load_finetuned`
read, plus the accuracy before and after when the target is labelled.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from shiftkit.data.readers import ReadOptions
from shiftkit.errors import ConfigError, DataError, ModelError
from shiftkit.hooks import StageHook, start_stage

METHODS = ("adabn", "tent")
_BN = nn.modules.batchnorm._BatchNorm


def bn_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every BatchNorm layer (1-, 2- and 3-d, synchronised too), frozen or not."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, _BN)]


def _require_bn(model: nn.Module, what: str = "the model") -> list[tuple[str, nn.Module]]:
    layers = bn_layers(model)
    if not layers:
        raise ModelError(f"{what} has no BatchNorm layers: AdaBN and TENT adapt BatchNorm and cannot apply "
                         "(harmonize the images instead, or fine-tune)")
    missing = [name for name, m in layers if not m.track_running_stats or m.running_mean is None]
    if missing:
        raise ModelError(f"BatchNorm layer '{missing[0]}' keeps no running statistics; nothing to adapt")
    return layers


def _split_batch(batch) -> torch.Tensor:
    """A loader yields tensors, or (images, targets[, ...]) tuples: the images come first."""
    if isinstance(batch, (tuple, list)):
        batch = batch[0]
    if not isinstance(batch, torch.Tensor):
        raise DataError(f"target batches must be tensors or (images, targets) tuples, got {type(batch).__name__}")
    return batch


def _prepare(batch, inputs: Callable[[torch.Tensor], torch.Tensor] | None, device: torch.device | None):
    x = _split_batch(batch)
    if inputs is not None:
        return inputs(x)
    return x.to(device) if device is not None else x


def _bn_only_train(model: nn.Module, layers) -> None:
    model.eval()
    for _, module in layers:
        module.train()


def entropy(logits: torch.Tensor, multilabel: bool = False) -> torch.Tensor:
    """Per-row prediction entropy (nats): softmax, or the sum of per-label Bernoulli entropies."""
    logits = logits.float()
    if multilabel:
        p = torch.sigmoid(logits)
        return -(p * nn.functional.logsigmoid(logits) + (1 - p) * nn.functional.logsigmoid(-logits)).sum(1)
    log_p = logits.log_softmax(1)
    return -(log_p.exp() * log_p).sum(1)


@torch.no_grad()
def _reestimate(model: nn.Module, layers, batches, inputs, device, on_batch) -> int:
    """AdaBN: reset the running statistics and average them over the target batches (equal weight per batch,
    PyTorch's ``momentum=None``). Batches of one image are skipped (no variance). Returns the images used."""
    momenta = [module.momentum for _, module in layers]
    saved = [{k: v.clone() for k, v in module.state_dict().items() if k.startswith(("running_", "num_batches"))}
             for _, module in layers]  # put back if adaptation fails: never leave reset statistics behind
    training = model.training
    used = 0
    try:
        for _, module in layers:
            module.reset_running_stats()
            module.momentum = None
        _bn_only_train(model, layers)
        for batch in batches:
            x = _prepare(batch, inputs, device)
            if len(x) >= 2:
                model(x)
                used += len(x)
            if on_batch:
                on_batch()
        if used == 0:
            raise DataError("no target batch had two or more images; AdaBN needs batches of at least 2")
    except BaseException:
        for (_, module), state in zip(layers, saved):
            module.load_state_dict(state, strict=False)
        raise
    finally:
        for (_, module), momentum in zip(layers, momenta):
            module.momentum = momentum
        model.train(training)
    return used


def _tent(model, layers, batches, inputs, device, *, lr, epochs, multilabel, on_batch) -> list[float]:
    """Entropy minimisation of the BN affine parameters; returns the mean entropy of each epoch's batches
    (measured before each step)."""
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    affine = [p for _, m in layers for p in (m.weight, m.bias) if p is not None]
    if not affine:
        raise ModelError("the BatchNorm layers have no affine parameters (affine=False); TENT has nothing to train")
    training = model.training
    history = []
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in affine:
            p.requires_grad_(True)
        optimizer = torch.optim.Adam(affine, lr=lr, betas=(0.9, 0.999))
        _bn_only_train(model, layers)
        for _ in range(epochs):
            total, count = 0.0, 0
            for batch in batches:
                x = _prepare(batch, inputs, device)
                if len(x) < 2:
                    continue
                loss = entropy(model(x), multilabel).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total, count = total + loss.item() * len(x), count + len(x)
                if on_batch:
                    on_batch()
            if count == 0:
                raise DataError("no target batch had two or more images; TENT needs batches of at least 2")
            history.append(total / count)
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])
            p.grad = None
        model.train(training)
    return history


def adapt_bn(
    model: nn.Module,
    target_loader_or_batches: Iterable,
    method: str = "adabn",
    *,
    inputs: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: torch.device | str | None = None,
    lr: float = 1e-3,
    epochs: int = 1,
    multilabel: bool = False,
    on_batch: Callable[[], None] | None = None,
) -> nn.Module:
    """Adapt ``model``'s BatchNorm layers to the target, in place, and return it (in eval mode).

    ``target_loader_or_batches``: a DataLoader or a list of batches (tensors or (images, targets) tuples; targets
    are ignored); it is iterated once for AdaBN and ``epochs + 1`` times for TENT. ``inputs`` turns a batch's
    images into the model's input (e.g. :meth:`AdaptedModel.inputs` for uint8 images); without it batches are
    moved to ``device`` as they are. ``lr``/``epochs``: TENT's Adam learning rate and passes over the target.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown BN adaptation method '{method}' (choose {', '.join(METHODS)})")
    if epochs < 1 or lr <= 0:
        raise ConfigError("TENT needs epochs >= 1 and a positive learning rate")
    layers = _require_bn(model)
    if iter(target_loader_or_batches) is target_loader_or_batches:  # a one-shot iterator: keep it for re-passes
        target_loader_or_batches = list(target_loader_or_batches)
    device = torch.device(device) if isinstance(device, str) else device
    if device is not None:
        model.to(device)
    if method == "tent":
        _tent(model, layers, target_loader_or_batches, inputs, device, lr=lr, epochs=epochs, multilabel=multilabel,
              on_batch=on_batch)
    _reestimate(model, layers, target_loader_or_batches, inputs, device, on_batch)
    model.eval()
    return model


# -- applying it to a `shiftkit finetune` checkpoint ------------------------------------------------------------
@dataclass
class AdaptBNRequest:
    checkpoint: Path  # a finetune output folder, or a .pt checkpoint (see load_finetuned)
    target: Path  # folder or manifest of target images; labels optional
    out: Path  # a folder (written like a finetune run) or a .pt file
    method: str = "adabn"
    lr: float = 1e-3
    epochs: int = 1
    batch_size: int = 64
    device: str = "auto"
    seed: int = 0
    cache_dir: Path | None = None
    read_options: ReadOptions = field(default_factory=ReadOptions)


@dataclass(frozen=True)
class AdaptBNResult:
    method: str
    checkpoint: str
    target: str
    out: str
    checkpoint_file: str
    images: int
    bn_layers: int
    classes: list[str]
    labeled: bool
    before: dict = field(default_factory=dict)  # metrics, accuracy, entropy
    after: dict = field(default_factory=dict)
    seconds: float = 0.0
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _predict(adapted, loader, device, multilabel: bool) -> tuple[np.ndarray, np.ndarray, float]:
    from shiftkit.features import head_inputs_and_outputs

    _, logits, targets = head_inputs_and_outputs(adapted, loader, device)
    logits = logits.float().cpu()
    probs = torch.sigmoid(logits) if multilabel else logits.softmax(1)
    return probs.numpy(), torch.cat(targets).numpy(), float(entropy(logits, multilabel).mean())


def _evaluate(probs: np.ndarray, targets: np.ndarray, mean_entropy: float, task: str | None) -> dict:
    import warnings

    from shiftkit.finetune.metrics import compute_metrics

    out: dict = {"mean_entropy": mean_entropy}
    if task is None:
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a class absent from the target makes AUROC/mAP null, said in the JSON
        out["metrics"] = compute_metrics(targets, probs, task)
    if task != "multilabel":
        out["top1_accuracy"] = float((probs.argmax(1) == targets).mean())
    return out


def _output_paths(out: Path) -> tuple[Path, Path, Path | None]:
    """(checkpoint file, adaptation JSON, metrics.json or None): ``X.pt`` -> ``X.pt`` + ``X.json``; a folder
    -> ``DIR/checkpoints/best.pt`` + ``DIR/adaptation.json`` + ``DIR/metrics.json``."""
    if out.suffix == ".pt":
        return out, out.with_suffix(".json"), None
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder or a .pt file name")
    return out / "checkpoints" / "best.pt", out / "adaptation.json", out / "metrics.json"


def run_adapt_bn(request: AdaptBNRequest, on_stage: StageHook | None = None) -> AdaptBNResult:
    """Load the fine-tuned model, adapt its BatchNorm to the target, evaluate before/after when the target is
    labelled, and write the adapted checkpoint (same format) and ``adaptation.json``."""
    from torch.utils.data import DataLoader

    from shiftkit.data.cache import ImageCache
    from shiftkit.data.dataset import ImageDataset, collate
    from shiftkit.data.table import load_table
    from shiftkit.features import _finetuned_files, finetuned_info, load_finetuned
    from shiftkit.overwrite import refuse_overwriting_inputs
    from shiftkit.device import resolve_device
    from shiftkit.io import save_torch, write_json

    if request.method not in METHODS:
        raise ConfigError(f"--method '{request.method}': choose {' or '.join(METHODS)}")
    if request.batch_size < 2:
        raise ConfigError("--batch-size must be at least 2 (BatchNorm statistics need two or more images)")
    if request.epochs < 1 or request.lr <= 0:
        raise ConfigError("--epochs must be at least 1 and --lr positive")
    device = resolve_device(request.device)
    checkpoint_file, report_file, metrics_file = _output_paths(request.out)
    source_checkpoint, source_metrics = _finetuned_files(request.checkpoint)
    refuse_overwriting_inputs(request.out, [f for f in (checkpoint_file, report_file, metrics_file) if f], {
        "source model's run folder": request.checkpoint if Path(request.checkpoint).is_dir() else None,
        "source checkpoint": source_checkpoint, "source model's metrics.json": source_metrics,
        "target": request.target}, scanned=("target",))
    adapted, classes = load_finetuned(request.checkpoint)
    info = finetuned_info(request.checkpoint)
    layers = _require_bn(adapted.model, f"{request.checkpoint} ({adapted.arch})")
    task = info.get("task") or ("binary" if len(classes) == 2 else "multiclass")
    multilabel = task == "multilabel"

    table = load_table(request.target)
    labeled = table.labeled
    if labeled:
        table = table.with_classes(classes, multilabel)
    dataset = ImageDataset(table, ImageCache(adapted.preprocessing, request.read_options, disk_dir=request.cache_dir))
    dataset.warm(on_image=start_stage(on_stage, "decoding target images", len(dataset)))
    generator = torch.Generator().manual_seed(request.seed)
    train_loader = DataLoader(dataset, batch_size=request.batch_size, shuffle=True, collate_fn=collate,
                              generator=generator, drop_last=len(dataset) % request.batch_size == 1)
    eval_loader = DataLoader(dataset, batch_size=max(request.batch_size, 128), collate_fn=collate)
    adapted.model.to(device)
    start = time.perf_counter()
    before = _evaluate(*_predict(adapted, eval_loader, device, multilabel), task if labeled else None)
    torch.manual_seed(request.seed)
    passes = 1 + (request.epochs if request.method == "tent" else 0)
    tick = start_stage(on_stage, f"{request.method} on the target", passes * len(train_loader))
    adapt_bn(adapted.model, train_loader, request.method, inputs=lambda x: adapted.inputs(x, device),
             device=device, lr=request.lr, epochs=request.epochs, multilabel=multilabel, on_batch=tick)
    after = _evaluate(*_predict(adapted, eval_loader, device, multilabel), task if labeled else None)
    seconds = time.perf_counter() - start

    settings = {"lr": request.lr, "epochs": request.epochs} if request.method == "tent" else {}
    settings |= {"batch_size": request.batch_size, "seed": request.seed, "device": str(device)}
    adaptation = {"method": request.method, "source_checkpoint": str(request.checkpoint),
                  "target": str(request.target), "images": len(dataset), **settings}
    state = {k: v.detach().cpu() for k, v in adapted.model.state_dict().items()}
    save_torch(checkpoint_file, {
        "model_state": state,
        "epoch": info.get("epoch"),
        "arch": adapted.arch,
        "classes": list(classes),
        "image_size": adapted.preprocessing.crop,
        "task": task,
        "adaptation": adaptation,
    })
    if metrics_file is not None:
        metrics = dict(info.get("metrics") or {})
        metrics.update({"arch": adapted.arch, "classes": list(classes), "task": task})
        metrics.setdefault("config", {})["image_size"] = adapted.preprocessing.crop
        metrics["adaptation"] = adaptation
        write_json(metrics_file, metrics)
    result = AdaptBNResult(
        method=request.method, checkpoint=str(request.checkpoint), target=str(request.target), out=str(request.out),
        checkpoint_file=str(checkpoint_file), images=len(dataset), bn_layers=len(layers), classes=list(classes),
        labeled=labeled, before=before, after=after, seconds=seconds, settings=settings,
    )
    write_json(report_file, result.to_dict())
    return result


def bn_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the BatchNorm buffers (running statistics), keyed like the state dict: handy for checks."""
    names = {name for name, _ in bn_layers(model)}
    return {k: v.detach().clone() for k, v in model.state_dict().items()
            if k.rpartition(".")[0] in names and "running" in k}


__all__ = ["adapt_bn", "bn_layers", "entropy", "AdaptBNRequest", "AdaptBNResult", "run_adapt_bn", "METHODS"]
