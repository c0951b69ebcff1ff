"""One training loop for every strategy.

The trainer knows nothing about particular strategies: each epoch it asks the strategy what trains (and
rebuilds Adam when that changes), adds the strategy's penalty to the loss, and lets it intercept early
stopping (early_stopping.py). It keeps the best checkpoint by the validation metric and writes a resumable
one after every epoch (checkpoint.py); a callback may stop training after any epoch (``shiftkit.hooks``), which
leaves the run resumable. While the backbone is entirely frozen (``lp``, the first phase of ``lp_ft``), it
trains the head on backbone features computed once instead of running the frozen backbone every epoch: by default it
solves that convex problem outright when the strategy says its plan is a linear probe (``lp_solver="lbfgs"``, see
linear_probe.py) in one epoch, which then counts as a plateau (``lp`` stops, ``lp_ft`` moves on to fine-tuning);
``lp_solver="adam"`` trains it by Adam steps as the paper does.
The training loss is class-weighted by inverse training priors (``class_weight="balanced"``) unless asked not to.

On CUDA it trains in bf16 autocast (fp16 with loss scaling where bf16 is unsupported), channels-last, from
pinned memory with non-blocking copies and persistent loader workers. Under ``torchrun`` (a
:class:`~shiftkit.finetune.distributed.DistContext` with several ranks) each rank trains on its slice of every
global batch through DistributedDataParallel and the numbers equal a one-process run's (see distributed.py).
"""

from __future__ import annotations

import functools
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from shiftkit.data.dataset import ImageDataset, collate
from shiftkit.device import resolve_device  # also imported from here (its old home)
from shiftkit.errors import ConfigError, ShiftkitError
from shiftkit.features import head_inputs_and_outputs
from shiftkit.finetune import distributed as dist_utils
from shiftkit.finetune.checkpoint import Checkpoints, run_identity
from shiftkit.finetune.config import TrainConfig  # also imported from here (its old home)
from shiftkit.finetune.distributed import SINGLE, DistContext, GlobalBatchSampler, rank_slice
from shiftkit.finetune.early_stopping import EarlyStopping, choose_score
from shiftkit.finetune.linear_probe import balanced_class_weights, fit_linear_probe
from shiftkit.finetune.metrics import compute_metrics
from shiftkit.finetune.strategies import Strategy
from shiftkit.hooks import SilentCallback, TrainerCallback  # TrainerCallback: also imported from here
from shiftkit.models.registry import AdaptedModel


PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def _epoch_seed(seed: int, epoch: int, salt: int = 0) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + salt) % (2**31)


def default_workers(device: torch.device, ctx: DistContext = SINGLE) -> int:
    """Loader workers: none on CPU (images are decoded and cached up front; workers would only compete with
    the compute threads), up to 8 per GPU on CUDA so that batching and pinning overlap the GPU's work."""
    if device.type != "cuda":
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cpus // max(1, ctx.world_size) - 1))


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None: fp32). bf16 needs no loss scaling; fp16 (older GPUs) gets a GradScaler."""
    if name not in PRECISIONS:
        raise ConfigError(f"unknown precision '{name}' (choose {', '.join(PRECISIONS)})")
    if device.type != "cuda" or name == "fp32":
        return None
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if name == "bf16" else torch.float16


class _Collate:
    """``collate``, plus an empty batch of the right shape for a rank whose slice of a short last batch is
    empty (it still joins the step's collectives). A class, so that spawned loader workers can pickle it."""

    def __init__(self, dataset: ImageDataset) -> None:
        image, target = dataset[0]
        self.empty = (torch.zeros((0, *image.shape), dtype=image.dtype), torch.zeros((0, *target.shape),
                                                                                    dtype=target.dtype))

    def __call__(self, items):
        return collate(items) if items else self.empty


class WeightedLoss:
    """The summed training loss, optionally weighted per class (single-label: ``w[y]`` per image; multi-label:
    each label's positive or negative weight per element). The mean weight over the training set is 1."""

    def __init__(self, task: str, weights: np.ndarray | None, device: torch.device) -> None:
        self.task = task
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float32, device=device)

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.task == "multilabel":
            loss = nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
            if self.weights is not None:
                loss = loss * torch.where(targets > 0.5, self.weights[1], self.weights[0])
            return loss.sum()
        return nn.functional.cross_entropy(logits, targets, weight=self.weights, reduction="sum")


class Trainer:
    def __init__(
        self,
        adapted: AdaptedModel,
        strategy: Strategy,
        task: str,
        train: ImageDataset,
        val: ImageDataset,
        config: TrainConfig,
        checkpoint_dir: Path | None = None,
        callback: TrainerCallback | None = None,
        identity_extra: dict | None = None,
        dist: DistContext | None = None,
    ) -> None:
        self.adapted = adapted
        self.model = adapted.model
        self.strategy = strategy
        self.task = task
        self.train_set, self.val_set = train, val
        self.config = config
        self.dist = dist or SINGLE
        self.device = dist_utils.device_for(self.dist, resolve_device(config.device))
        self.checkpoint_dir = checkpoint_dir
        self.checkpoints = Checkpoints(checkpoint_dir, writer=self.dist.is_main)
        self.callback = (callback if self.dist.is_main else None) or SilentCallback()
        self.identity_extra = identity_extra or {}
        self.monitor = config.monitor if config.monitor != "auto" else ("map" if task == "multilabel" else "auroc")
        config.validate()
        # Summed per-sample losses; the trainer divides by the global batch (see _batch_loss). Training is
        # class-weighted when asked; evaluation losses never are (they describe the evaluation set as it is).
        self.class_weights = balanced_class_weights(
            train.targets.numpy(), task, adapted.head.out_features) if config.class_weight == "balanced" else None
        self.loss_fn = WeightedLoss(task, self.class_weights, self.device)
        self.eval_loss_fn = WeightedLoss(task, None, self.device)
        self.amp_dtype = resolve_precision(config.precision, self.device)
        self.use_amp = self.amp_dtype is not None
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.num_workers = config.num_workers if config.num_workers is not None else \
            default_workers(self.device, self.dist)
        if self.dist.enabled:
            dist_utils.sync_batchnorm(self.model, self.device)  # batch statistics of the global batch
        self.model.to(self.device)
        if self.device.type == "cuda":
            self.model.to(memory_format=torch.channels_last)
            torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick its fastest kernels
        strategy.to(self.device)
        self.ddp: nn.Module | None = None  # the DDP wrapper of the current trainable set (rebuilt with the plan)
        self.params = dict(self.model.named_parameters())
        self.head_names = set(adapted.head_param_names())
        self.block_names = adapted.block_param_names()
        self.optimizer: torch.optim.Optimizer | None = None
        self.history: list[dict] = []
        self.early_stopping = EarlyStopping(config.patience)
        self.start_epoch = 0
        self.halted = False  # a callback stopped training before it finished (resumable from last.pt)
        self._feature_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._loaders: dict[tuple[int, bool, int], DataLoader] = {}
        self._probe_fit: dict | None = None  # what the L-BFGS head solver chose this epoch

    # -- what trains -----------------------------------------------------------------------------------
    def _apply_plan(self) -> None:
        groups = self.strategy.param_groups()
        trainable = {name for group in groups for name in group.names}
        unknown = trainable - set(self.params)
        if unknown:
            raise RuntimeError(f"strategy {self.strategy.name} names unknown parameters: {sorted(unknown)[:3]}")
        for name, param in self.params.items():
            param.requires_grad_(name in trainable)
        self.optimizer = torch.optim.Adam(
            [{"params": [self.params[n] for n in g.names], "lr": g.lr, "weight_decay": g.weight_decay}
             for g in groups if g.names],
            lr=self.config.lr,
        )
        self.ddp = None
        if self.dist.enabled and trainable:
            # DDP registers its all-reduce hooks on the parameters that train now: rebuild it with the plan.
            self.ddp = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False,  # BatchNorm statistics are global already: identical on every rank
            )

    def backbone_frozen(self) -> bool:
        return all(not p.requires_grad for n, p in self.params.items() if n not in self.head_names)

    def _set_modes(self) -> None:
        """Frozen blocks run in eval mode (BatchNorm uses its running statistics and leaves them alone);
        an entirely frozen backbone runs in eval mode as a whole (dropout off), as linear probing does."""
        if self.backbone_frozen():
            self.model.eval()
            return
        self.model.train()
        for (_, prefixes), names in zip(self.adapted.blocks, self.block_names):
            if names and not any(self.params[n].requires_grad for n in names):
                for prefix in prefixes:
                    self.model.get_submodule(prefix).eval()

    # -- data ------------------------------------------------------------------------------------------
    def _loader(self, dataset: ImageDataset, shuffle: bool, seed: int, batch_size: int | None = None) -> DataLoader:
        """This rank's part of each global batch, in a seeded order shared with the cached-feature path.

        One loader per dataset and batch size lives as long as the trainer, so its workers persist across
        epochs; ``set_epoch`` re-seeds its sampler. Workers are forked after ``ImageDataset.warm`` filled the
        main process's decoded-image cache, so they inherit it and never decode a file again.
        """
        batch_size = batch_size or self.config.batch_size
        key = (id(dataset), shuffle, batch_size)
        loader = self._loaders.get(key)
        if loader is None:
            sampler = GlobalBatchSampler(len(dataset), batch_size, self.dist, shuffle)
            workers = self.num_workers
            loader = DataLoader(
                dataset, batch_sampler=sampler, collate_fn=_Collate(dataset), num_workers=workers,
                pin_memory=self.device.type == "cuda", persistent_workers=workers > 0,
                prefetch_factor=4 if workers > 0 else None,
            )
            self._loaders[key] = loader
        loader.batch_sampler.set_epoch(seed)
        return loader

    def close(self) -> None:
        """Stop the loaders' worker processes."""
        self._loaders.clear()

    def _targets(self, targets: torch.Tensor) -> torch.Tensor:
        targets = targets.to(self.device, non_blocking=True)
        return targets.float() if self.task == "multilabel" else targets.long()

    def _autocast(self):
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype or torch.bfloat16, enabled=self.use_amp)

    def _local_indices(self, loader: DataLoader) -> torch.Tensor:
        """The dataset indices this rank sees, in the order an unshuffled loader yields them."""
        parts = [rank_slice(chunk, self.dist) for chunk in loader.batch_sampler.global_batches()]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)

    def _backbone_features(self, dataset: ImageDataset) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs of the head for every image, from one pass of the frozen backbone (kept on the device).
        Under DDP each rank embeds its share and all ranks gather the whole set."""
        loader = self._loader(dataset, False, 0, self.config.eval_batch_size)
        features, _, targets = head_inputs_and_outputs(self.adapted, loader, self.device)
        targets = torch.cat(targets).to(self.device)
        if self.dist.enabled:
            indices = self._local_indices(loader)
            features = dist_utils.gather_rows(features, indices, len(dataset), self.dist)
            targets = dist_utils.gather_rows(targets, indices, len(dataset), self.dist)
        return features, targets

    def cached_features(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The head's inputs and the targets of split ``train`` or ``val``, from one pass of the backbone
        (valid while it is frozen: the cache is cleared when a training epoch changes the backbone)."""
        if split not in self._feature_cache:
            dataset = self.train_set if split == "train" else self.val_set
            self._feature_cache[split] = self._backbone_features(dataset)
        return self._feature_cache[split]

    def _feature_batches(self, split: str, seed: int) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
        """Shuffled mini-batches of cached features, sliced on the device (no loader, no copies to the host):
        this rank's part of each global batch, and the global batch's size."""
        features, targets = self.cached_features(split)
        sampler = GlobalBatchSampler(len(features), self.config.batch_size, self.dist, True)
        sampler.set_epoch(seed)
        batches = []
        for chunk in sampler.global_batches():
            part = rank_slice(chunk, self.dist).to(self.device)
            batches.append((features[part], targets[part], len(chunk)))
        return batches

    # -- one epoch -------------------------------------------------------------------------------------
    def _forward(self, inputs: torch.Tensor, from_features: bool, train: bool = False) -> torch.Tensor:
        """Logits; a training step on images goes through the DDP wrapper (gradient all-reduce)."""
        with self._autocast():
            if from_features:
                return self.adapted.head(inputs)
            model = self.ddp if (train and self.ddp is not None) else self.model
            return model(self.adapted.inputs(inputs, self.device))

    def _batch_loss(self, logits: torch.Tensor, targets: torch.Tensor, global_size: int) -> torch.Tensor:
        """Mean loss of the global batch as this rank contributes it: the rank's summed loss over the global
        batch size, times the world size because gradient averaging divides by it again. One process: the
        mean. A short last batch, split unevenly over ranks, keeps the one-process weighting."""
        per_sample = targets.shape[1] if self.task == "multilabel" else 1
        return self.loss_fn(logits, targets) * (self.dist.world_size / (global_size * per_sample))

    def _global_sizes(self, loader: DataLoader) -> list[int]:
        return [len(chunk) for chunk in loader.batch_sampler.global_batches()]

    def gradient_probe(self, batches: int, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        """Gradients of the training loss for a few batches (for strategies such as Auto-RGN); under DDP each
        batch's gradient is averaged over ranks, so every rank sees the global batch's gradient. The model's
        modes are those training will use (frozen blocks in eval mode), as in :meth:`fit`."""
        self._set_modes()
        loader = self._loader(self.train_set, True, _epoch_seed(self.config.seed, epoch, 1))
        sizes = self._global_sizes(loader)
        names = [n for n, p in self.params.items() if p.requires_grad]
        for index, (images, targets) in enumerate(loader):
            if index >= batches:
                break
            loss = self._batch_loss(self._forward(images, False).float(), self._targets(targets), sizes[index])
            grads = torch.autograd.grad(loss, [self.params[n] for n in names], allow_unused=True)
            found = {n: g.detach() for n, g in zip(names, grads) if g is not None}
            if self.dist.enabled:
                flat = torch.cat([g.reshape(-1) for g in found.values()])
                dist_utils.all_reduce_sum(flat, self.dist)
                flat /= self.dist.world_size
                offset = 0
                for n, g in found.items():
                    found[n] = flat[offset: offset + g.numel()].view_as(g)
                    offset += g.numel()
            yield found

    def _uses_cached_features(self) -> bool:
        return self.config.cache_features and self.backbone_frozen()

    def _solves_head(self) -> bool:
        return self.config.lp_solver == "lbfgs" and self.strategy.is_linear_probe() and self.backbone_frozen()

    def _solve_head(self, epoch: int) -> float:
        """Fit the head outright on the cached features (C chosen on validation); the mean training loss.
        Under DDP every rank holds all features and solves the same problem, so the heads agree."""
        self.callback.on_epoch_start(epoch, 1, "head solved by L-BFGS on cached features")
        self._set_modes()
        train_x, train_y = self.cached_features("train")
        val_x, val_y = self.cached_features("val")
        val_targets = val_y.cpu().numpy()
        per_sample = val_targets.shape[1] if self.task == "multilabel" else 1

        def scorer(probabilities: np.ndarray) -> tuple[float, float]:
            tensor = torch.as_tensor(probabilities, dtype=torch.float32, device=self.device)
            logits = tensor.logit(eps=1e-7) if self.task == "multilabel" else tensor.clamp_min(1e-12).log()
            loss = self.eval_loss_fn(logits, self._targets(val_y)).item() / max(len(val_targets) * per_sample, 1)
            return self._score(compute_metrics(val_targets, probabilities, self.task), loss)[0], loss

        fit = fit_linear_probe(
            train_x.cpu().numpy(), train_y.cpu().numpy(), val_x.cpu().numpy(), self.task,
            self.adapted.head.out_features, scorer, self.class_weights, seed=self.config.seed,
        )
        head = self.adapted.head
        with torch.no_grad():
            head.weight.copy_(torch.as_tensor(fit.weight, dtype=head.weight.dtype))
            head.bias.copy_(torch.as_tensor(fit.bias, dtype=head.bias.dtype))
        self._probe_fit = fit.record()
        self.callback.on_batch()
        with torch.no_grad(), self._autocast():
            logits = self.adapted.head(train_x).float()
        loss = self.loss_fn(logits, self._targets(train_y)).item() / max(len(train_x), 1)
        if self.task == "multilabel":
            loss /= train_y.shape[1]
        return loss

    def _train_epoch(self, epoch: int) -> float:
        if self._solves_head():
            return self._solve_head(epoch)
        from_features = self._uses_cached_features()
        seed = _epoch_seed(self.config.seed, epoch)
        if from_features:
            batches = self._feature_batches("train", seed)
        else:
            self._feature_cache.clear()  # the backbone is about to change
            loader = self._loader(self.train_set, True, seed)
            batches = zip(loader, self._global_sizes(loader))
        count = len(self.train_set)
        steps = -(-count // self.config.batch_size)
        self.callback.on_epoch_start(epoch, steps, "head on cached features" if from_features else "")
        self._set_modes()
        trainable = [p for p in self.params.values() if p.requires_grad]
        total = torch.zeros((), dtype=torch.float64, device=self.device)  # summed on the device: no sync per batch
        for item in batches:
            (inputs, targets), global_size = (item[:2], item[2]) if from_features else item
            inputs = inputs.to(self.device, non_blocking=True)
            targets = self._targets(targets)
            loss = self._batch_loss(self._forward(inputs, from_features, train=True).float(), targets, global_size)
            objective = loss
            penalty = self.strategy.penalty()
            if penalty is not None:
                objective = loss + penalty
            if self.device.type == "cpu" and not self.dist.enabled and not torch.isfinite(objective):
                # (on CUDA, and under DDP, checked once per epoch below: a per-batch check stalls the GPU queue)
                raise ShiftkitError(
                    f"training diverged at epoch {epoch + 1} (loss is {objective.item()}); try a smaller --lr"
                )
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(objective).backward()
            else:
                objective.backward()
            if from_features or self.ddp is None:
                dist_utils.average_gradients(trainable, self.dist)  # DDP did not see this step
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.strategy.after_step()
            total += loss.detach().double() * (global_size / self.dist.world_size)
            self.callback.on_batch()
        dist_utils.all_reduce_sum(total, self.dist)
        mean = total.item() / max(count, 1)
        if not math.isfinite(mean):  # every rank sees the same sum, so all of them stop together
            raise ShiftkitError(f"training diverged at epoch {epoch + 1} (loss is {mean}); try a smaller --lr")
        return mean

    def _probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) if self.task == "multilabel" else logits.softmax(1)

    @torch.no_grad()
    def predict(self, dataset: ImageDataset, from_features: str | None = None) -> tuple[np.ndarray, np.ndarray, float]:
        """Probabilities, targets and mean loss over ``dataset`` with the current weights (or over the cached
        features of split ``from_features`` while the backbone is frozen). Under DDP each rank predicts its
        share and every rank gets the whole set back, so metrics (and early stopping) agree on all ranks."""
        self.model.eval()
        n = len(dataset) if not from_features else len(self.cached_features(from_features)[0])
        if from_features:
            features, all_targets = self.cached_features(from_features)
            indices = torch.arange(n)
            if self.dist.enabled:
                indices = torch.cat([rank_slice(c, self.dist) for c in indices.split(self.config.eval_batch_size)])
            index_on_device = indices.to(self.device)
            features, all_targets = features[index_on_device], all_targets[index_on_device]
            batches = zip(features.split(self.config.eval_batch_size), all_targets.split(self.config.eval_batch_size))
        else:
            loader = self._loader(dataset, False, 0, self.config.eval_batch_size)
            indices = self._local_indices(loader)
            batches = loader
        probabilities, targets = [], []
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for inputs, target in batches:
            logits = self._forward(inputs, bool(from_features)).float()
            target = self._targets(target)
            loss = self.eval_loss_fn(logits, target)
            total += loss.double() / (target.shape[1] if self.task == "multilabel" else 1)
            probabilities.append(self._probabilities(logits))
            targets.append(target)
        probs = torch.cat(probabilities) if probabilities else torch.zeros(0, device=self.device)
        targets = torch.cat(targets) if targets else torch.zeros(0, device=self.device)
        if self.dist.enabled:
            probs = dist_utils.gather_rows(probs, indices, n, self.dist)
            targets = dist_utils.gather_rows(targets, indices, n, self.dist)
            dist_utils.all_reduce_sum(total, self.dist)
        return probs.cpu().numpy(), targets.cpu().numpy(), total.item() / max(n, 1)

    def _validate(self) -> tuple[dict, float]:
        probs, targets, loss = self.predict(self.val_set, "val" if self._uses_cached_features() else None)
        return compute_metrics(targets, probs, self.task), loss

    # -- checkpoints -----------------------------------------------------------------------------------
    def _run_identity(self) -> dict:
        return run_identity(config_dict(self.config), self.strategy.config_dict(), self.adapted,
                            len(self.train_set), len(self.val_set), self.identity_extra)

    def resume(self) -> bool:
        """Continue from ``last.pt`` when it exists; returns whether it did."""
        state = self.checkpoints.load_last(self._run_identity())
        if state is None:
            return False
        self.model.load_state_dict(state["model_state"])
        self.strategy.load_state_dict(state["strategy_state"])
        self._apply_plan()
        self.optimizer.load_state_dict(state["optimizer_state"])
        self.history = list(state["history"])
        self.early_stopping.load_state_dict(state)
        self.start_epoch = int(state["epoch"]) + 1
        return True

    def _save_checkpoint(self, epoch: int, improved: bool) -> None:
        self.checkpoints.save(epoch, self.model, improved, self._run_identity(), {
            "optimizer_state": self.optimizer.state_dict(),
            "strategy_state": self.strategy.state_dict(),
            "history": self.history,
            **self.early_stopping.state_dict(),
        })

    # -- the loop --------------------------------------------------------------------------------------
    def _score(self, metrics: dict, loss: float) -> tuple[float, str]:
        return choose_score(self.monitor, metrics, loss)

    def stopped_early(self) -> bool:
        return bool(self.history) and self.history[-1].get("stop", False)

    def fit(self) -> dict:
        """Train until the last epoch, early stopping, or a callback's :data:`~shiftkit.hooks.STOP`; returns the
        best epoch (1-based), the epochs in the history, and ``halted`` (stopped by a callback: unfinished)."""
        self.halted = False
        for epoch in range(self.start_epoch, self.config.epochs):
            if self.stopped_early():
                break
            # dropout / stochastic depth: each rank draws its own masks (rank 0's are a one-process run's)
            torch.manual_seed(_epoch_seed(self.config.seed, epoch, 2) + self.dist.rank)
            started = time.perf_counter()
            self._set_modes()  # a probe (Auto-RGN) sees the model as training will
            probe = functools.partial(self.gradient_probe, epoch=epoch)
            if self.strategy.begin_epoch(epoch, probe) or self.optimizer is None:
                self._apply_plan()
            self._probe_fit = None
            train_loss = self._train_epoch(epoch)
            metrics, val_loss = self._validate()
            score, monitored = self._score(metrics, val_loss)
            improved, stop = self.early_stopping.step(epoch, score, self.strategy.on_plateau,
                                                      solved=self._probe_fit is not None)
            entry = {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "val": metrics,
                "monitor": monitored,
                "trainable_params": sum(p.numel() for p in self.params.values() if p.requires_grad),
                "seconds": time.perf_counter() - started,
                "stop": stop,
                **self.strategy.describe(),
            }
            if self._probe_fit is not None:
                entry["linear_probe"] = self._probe_fit
            self.history.append(entry)
            self._save_checkpoint(epoch, improved)
            if self._callback_stops(entry) and not stop and epoch + 1 < self.config.epochs:
                self.halted = True  # unfinished: last.pt lets a later run (resume) train on from here
                break
        dist_utils.barrier(self.dist)  # rank 0's files are complete before any rank reads them
        return {"best_epoch": self.early_stopping.best_epoch + 1, "epochs_run": len(self.history),
                "halted": self.halted}

    def _callback_stops(self, entry: dict) -> bool:
        """Whether the callback asked to stop (rank 0's answer, shared so that every rank stops together)."""
        asked = bool(self.callback.on_epoch_end(entry))
        if self.dist.enabled:
            flag = torch.tensor(float(asked), device=self.device)
            asked = dist_utils.all_reduce_sum(flag, self.dist).item() > 0
        return asked

    def load_best(self) -> None:
        """The best epoch's weights: from memory, or from ``best.pt`` when it was reached before a resume."""
        self.checkpoints.load_best(self.model)

    def evaluate(self, dataset: ImageDataset) -> dict:
        probs, targets, loss = self.predict(dataset)
        return {**compute_metrics(targets, probs, self.task), "loss": loss}


def config_dict(config: TrainConfig) -> dict:
    return asdict(config)
