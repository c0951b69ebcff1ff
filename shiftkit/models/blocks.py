"""Per-block probes: what each block of the partition sees, collected in the embedding's own forward pass.

Two kinds of forward hooks, attached for the duration of one pass (:class:`BlockProbe`, a context manager):

- on the **output module of every block** except the head block (the blocks of :mod:`shiftkit.models.partitions`,
  the same ones gradual unfreezing uses), a pooled descriptor per image: per-channel mean and standard deviation
  over the spatial dims of the block's output, ``2 x C`` float32 values, copied to the CPU once per batch. Feature
  maps are never kept. Where shift lands in the network (input-, feature- or output-level) is read off these.
- on **every BatchNorm2d layer** of those blocks, a forward *pre*-hook that accumulates the per-channel moments of
  the layer's input over all images (float64, on the model's device). A pre-trained network's BN
  ``running_mean``/``running_var`` are its pre-training data's statistics of that same input, so comparing the
  two says how far the user's data is from pre-training at each depth, without the pre-training images.

A block's output module is the last of its prefixes, in the model's module order, that names a module (for
ResNet's ``stem`` that is ``bn1``, before the ReLU; for VGG's stages the max-pool; for DenseNet's last block
``norm5``; for EfficientNet-Lite0's stem block ``_blocks.0`` and for its last block ``_bn1``, before the
activation). The test suite checks, for every architecture, that this module is the last of the block's modules
that a forward pass calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from shiftkit.errors import ModelError
from shiftkit.models.registry import AdaptedModel


def head_block_index(adapted: AdaptedModel) -> int:
    """Index of the block holding the task head (the last block in every partition)."""
    return adapted.block_of(adapted.head_param_names()[0])


def probed_blocks(adapted: AdaptedModel) -> list[str]:
    """Names of the blocks that get a descriptor: every block of the partition but the head's, in order."""
    head = head_block_index(adapted)
    return [name for index, (name, _) in enumerate(adapted.blocks) if index != head]


def block_output_modules(adapted: AdaptedModel) -> list[tuple[str, str]]:
    """(block name, module path) of each probed block's output module, first block to last.

    The output module is the block prefix that names a module and comes last in ``named_modules`` order (which
    is the forward order for every registered architecture; the tests check it with a traced forward pass)."""
    order = {name: index for index, (name, _) in enumerate(adapted.model.named_modules())}
    head = head_block_index(adapted)
    result = []
    for index, (block, prefixes) in enumerate(adapted.blocks):
        if index == head:
            continue
        named = [p for p in prefixes if p in order]
        if not named:
            raise ModelError(f"{adapted.arch}: no prefix of block '{block}' names a module ({prefixes})")
        result.append((block, max(named, key=order.__getitem__)))
    return result


def batchnorm_layers(adapted: AdaptedModel) -> list[tuple[str, str]]:
    """(layer path, block name) of every BatchNorm2d in the probed blocks, in module order."""
    probed = set(probed_blocks(adapted))
    layers = []
    for path, module in adapted.model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            block = adapted.blocks[adapted.block_of(f"{path}.weight")][0]
            if block in probed:
                layers.append((path, block))
    return layers


def spatial_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per image and channel (sum, sum of squares) over the spatial dims, (n, C) float32 each, and the number of
    spatial positions.

    Reduced with ``dtype=torch.float32``, so a bfloat16 map (CUDA autocast) is summed in float32 without a float32
    copy of it, and the squares come from one ``vector_norm`` pass: two reads of the map, over its contiguous
    spatial dims. On a CPU that is several times faster than ``torch.var_mean`` (a Welford reduction) or than
    reducing over the image dim too, which keeps the probe a small part of the pass's cost."""
    if x.ndim < 2:
        raise ModelError(f"a block output of shape {tuple(x.shape)} has no channel dimension")
    if x.ndim == 2:
        values = x.to(torch.float32)
        return values, values * values, 1
    dims = tuple(range(2, x.ndim))
    total = x.sum(dim=dims, dtype=torch.float32)
    norm = torch.linalg.vector_norm(x, dim=dims, dtype=torch.float32)
    return total, norm * norm, int(np.prod(x.shape[2:]))


def _mean_std(total: np.ndarray, squares: np.ndarray, count: int) -> np.ndarray:
    """(n, 2C) float32 [mean, population std] from per-image float32 sums, formed in float64 as
    sqrt(E[x²] - E[x]²): relative error of the variance ~1e-7·(1 + mean²/variance)."""
    mean = total.astype(np.float64) / count
    var = np.maximum(squares.astype(np.float64) / count - mean * mean, 0.0)
    return np.concatenate([mean, np.sqrt(var)], axis=1).astype(np.float32)


def pooled_descriptor(output: torch.Tensor) -> np.ndarray:
    """(n, 2C) float32: per-channel spatial mean, then per-channel spatial standard deviation (population), of a
    block output (bfloat16 under CUDA autocast: summed in float32). A 2-D output gives its values and zero spreads."""
    total, squares, count = spatial_moments(output)
    return _mean_std(total.cpu().numpy(), squares.cpu().numpy(), count)


@dataclass
class _Moments:
    """Per-channel count, sum and sum of squares of a layer's input over every image and position.

    Each image is summed in float32 (:func:`spatial_moments`), the images in float64 on the device;
    the variance E[x²] - E[x]² is formed in float64 at the end."""

    count: int = 0
    total: torch.Tensor | None = None
    squares: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        if x.numel() == 0:
            return
        total, squares, count = spatial_moments(x)
        total, squares = total.sum(dim=0, dtype=torch.float64), squares.sum(dim=0, dtype=torch.float64)
        if self.total is None:
            self.total, self.squares = total, squares
        else:
            self.total += total
            self.squares += squares
        self.count += count * x.shape[0]

    def mean_var(self) -> tuple[np.ndarray, np.ndarray]:
        mean = self.total / self.count
        var = (self.squares / self.count - mean * mean).clamp_(min=0.0)
        return mean.cpu().numpy(), var.cpu().numpy()


class BlockProbe:
    """Forward hooks for per-block descriptors (``descriptors=True``) and BN input moments (``bn=True``).

    Use as ``with BlockProbe(adapted) as probe: <forward passes>``; then :meth:`descriptors` gives
    {block: n x 2C float32} and :meth:`bn_moments` {layer: {"block", "count", "mean", "var"}}. Hooks are removed on
    exit even when the pass fails. Per batch, each block hook makes two reductions of its output, and the last
    one of the batch a single copy of every block's (n, 2C) sums to the CPU; each BN hook makes the same two
    reductions of its input and adds their image sums to float64 accumulators on the device."""

    def __init__(self, adapted: AdaptedModel, *, descriptors: bool = True, bn: bool = True) -> None:
        self.adapted = adapted
        self.outputs = block_output_modules(adapted) if descriptors else []
        self.layers = batchnorm_layers(adapted) if bn else []
        self._pending: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._shape: dict[str, tuple[int, int]] = {}  # block -> (channels, values per channel and image)
        self._rows: list[torch.Tensor] = []  # per batch, (n, sum of 2C) float32 sums on the CPU
        self._moments = {path: _Moments() for path, _ in self.layers}
        self._handles: list = []

    def __enter__(self) -> "BlockProbe":
        model = self.adapted.model
        for block, path in self.outputs:
            self._handles.append(model.get_submodule(path).register_forward_hook(self._output_hook(block)))
        for path, _ in self.layers:
            self._handles.append(model.get_submodule(path).register_forward_pre_hook(self._bn_hook(path)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _output_hook(self, block: str):
        def hook(module, args, output):
            total, squares, count = spatial_moments(output)
            self._shape[block] = (total.shape[1], count)
            self._pending[block] = (total, squares)
            if len(self._pending) == len(self.outputs):  # the batch's last block: one copy to the CPU
                row = torch.cat([t for b, _ in self.outputs for t in self._pending[b]], dim=1)
                self._rows.append(row.to("cpu"))
                self._pending.clear()
        return hook

    def _bn_hook(self, path: str):
        moments = self._moments[path]

        def hook(module, args):
            moments.add(args[0].detach())
        return hook

    def descriptors(self) -> dict[str, np.ndarray]:
        """{block name: (n, 2C) float32 [C means, C stds]}, in partition order; rows are the images in the order
        they were run."""
        if not self.outputs:
            return {}
        if self._pending:
            raise ModelError("a forward pass stopped before every block's output was seen")
        if not self._rows:
            return {block: np.zeros((0, 0), np.float32) for block, _ in self.outputs}
        stacked = torch.cat(self._rows).numpy()
        result, start = {}, 0
        for block, _ in self.outputs:
            channels, count = self._shape[block]
            total, squares = stacked[:, start:start + channels], stacked[:, start + channels:start + 2 * channels]
            result[block] = _mean_std(total, squares, count)
            start += 2 * channels
        return result

    def bn_moments(self) -> dict[str, dict]:
        """{layer path: {"block": name, "count": values seen per channel, "mean": (C,), "var": (C,)}}, float64
        numpy arrays (population variance of the layer's input over every image and position)."""
        result = {}
        for path, block in self.layers:
            moments = self._moments[path]
            if moments.total is None:
                continue
            mean, var = moments.mean_var()
            result[path] = {"block": block, "count": int(moments.count), "mean": mean, "var": var}
        return result


__all__ = ["BlockProbe", "batchnorm_layers", "block_output_modules", "head_block_index", "pooled_descriptor", "spatial_moments",
           "probed_blocks"]
