"""Training runs: SubTuning, the linear probe, full finetuning, Head2Toe and LoRA, sharing one
frozen backbone, the data and its cached activations.

Defaults follow the paper's Appendix A: AdamW, lr 1e-3, weight decay 0.01, batch 256, a cosine
schedule (per step, to zero), 10 epochs; 50 epochs in the low-data regime (at most 1,000
training images, as in the paper's §4). A run is reproducible from its seed: the head's
initialisation, the batch order and any augmentation draw from generators seeded by it, and
the cached and full-forward paths consume them identically.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from subtune.errors import SubtuneError
from subtune.models import BaseModel
from subtune.models.blocks import block_span
from subtune.training.augment import augment, check_augment
from subtune.training.cache import ActivationStore
from subtune.training.data import ImageDataset, batch_order
from subtune.training.network import FullNet, SubTuneNet, fast_layout, features_point, freeze, run_frozen

DEFAULT_EPOCHS = 10
LOW_DATA_EPOCHS = 50
LOW_DATA_IMAGES = 1000


def default_epochs(train_images: int) -> int:
    return LOW_DATA_EPOCHS if train_images <= LOW_DATA_IMAGES else DEFAULT_EPOCHS


@dataclass
class TrainConfig:
    epochs: int = DEFAULT_EPOCHS
    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 256
    seed: int = 0
    augment: str = "none"
    freeze_bn: bool = False  # tuned blocks' BatchNorm: False = update statistics (as the paper trains)
    cache: bool = True  # cached activations; off (or augmentation on) = full forward path
    eval_batch_size: int = 256

    def __post_init__(self):
        check_augment(self.augment)
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise SubtuneError(f"`{name}` must be at least 1, found {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise SubtuneError("`lr` must be positive and `weight_decay` non-negative")

    @property
    def cached_training(self) -> bool:
        return self.cache and self.augment == "none"

    def to_meta(self) -> dict:
        return {**asdict(self), "optimizer": "AdamW", "schedule": "cosine annealing per step to 0",
                "tuned_bn_statistics": "frozen" if self.freeze_bn else "updated", "cached_activations": self.cached_training}


@dataclass
class TrainResult:
    mode: str  # "subtune" | "linear" | "full" | "head2toe" | "lora"
    blocks: list[int]
    net: nn.Module
    seed: int
    val_accuracy: float | None
    test_accuracy: float | None
    params: int  # trainable parameters: tuned blocks (or the whole model) and head
    seconds: float  # the training loop
    eval_seconds: float
    cached: bool
    history: list[dict] = field(default_factory=list)
    method: dict = field(default_factory=dict)  # the method's own hyper-parameters and choices (task meta)

    def summary(self) -> dict:
        out = {"mode": self.mode, "blocks": [self.blocks[0], self.blocks[-1]] if self.blocks else [],
               "seed": self.seed, "accuracy": self.val_accuracy, "val_accuracy": self.val_accuracy,
               "params": self.params, "seconds": round(self.seconds, 3), "eval_seconds": round(self.eval_seconds, 3),
               "cached": self.cached}
        if self.test_accuracy is not None:
            out["test_accuracy"] = self.test_accuracy
        if self.method:
            out["method"] = {k: v for k, v in self.method.items() if k not in ("importance", "targets")}
        return out


Inputs = Callable[[np.ndarray, torch.Generator | None], tuple[torch.Tensor, torch.Tensor | None]]


class Trainer:
    """Runs on one base and one dataset. The test split, when given, is only evaluated after a
    run for reporting; nothing here chooses anything by it."""

    def __init__(self, base: BaseModel, train: ImageDataset, val: ImageDataset, test: ImageDataset | None = None,
                 *, config: TrainConfig | None = None, cache_dir: str | None = None,
                 memory_budget: int | None = None, log: Callable[[str], None] | None = None):
        self.base, self.config = base, config or TrainConfig()
        self.log = log or logging.getLogger("subtune").warning
        self.data = {"train": train, "val": val, **({"test": test} if test is not None else {})}
        for split, ds in self.data.items():
            if len(ds) == 0 or not ds.labelled:
                raise SubtuneError(f"{ds.name}: the {split} split needs labelled images")
            if ds.classes != train.classes:
                raise SubtuneError(f"{ds.name}: classes {ds.classes[:5]} do not match the training classes "
                                   f"{train.classes[:5]}; use the same data (and `label_map`) for every split")
        self.classes = list(train.classes)
        if len(self.classes) < 2:
            raise SubtuneError(f"{train.name}: need at least 2 classes, found {len(self.classes)}")
        _, backbone = base.build()
        self.backbone = freeze(backbone)
        self.backbone.model.to(memory_format=torch.channels_last)  # 1.4-1.8x faster convolutions on CPU
        self.tap_seconds = 0.0  # Head2Toe's feature extraction, like caching: once per split
        self._tap_features: dict[tuple, torch.Tensor] = {}
        self.stores = {split: ActivationStore(self.backbone, ds, batch_size=self.config.eval_batch_size,
                                              memory_budget=memory_budget, cache_dir=cache_dir)
                       for split, ds in self.data.items()}
        if self.config.augment != "none" and self.config.cache:
            self.log(f"augmentation {self.config.augment!r} changes the images every epoch, which cached activations "
                     "cannot reproduce: training takes the full forward path (slower); evaluation still uses the cache")

    @property
    def cache_seconds(self) -> float:
        return sum(s.seconds for s in self.stores.values()) + self.tap_seconds

    # ------------------------------------------------------------------ runs

    def subtune(self, blocks: list[int], *, siamese: bool = False, seed: int | None = None,
                test: bool = True) -> TrainResult:
        """test=False leaves the test split alone (selection runs); `evaluate_test` adds it later."""
        seed = self.config.seed if seed is None else seed
        net = SubTuneNet(self.backbone, blocks, len(self.classes), siamese=siamese,
                         freeze_bn=self.config.freeze_bn, seed=seed)
        return self._run(net, "subtune", list(blocks), seed, test)

    def linear(self, *, seed: int | None = None, test: bool = True) -> TrainResult:
        seed = self.config.seed if seed is None else seed
        return self._run(SubTuneNet(self.backbone, [], len(self.classes), seed=seed), "linear", [], seed, test)

    def full(self, *, seed: int | None = None) -> TrainResult:
        seed = self.config.seed if seed is None else seed
        net = FullNet(self.base, len(self.classes), seed=seed)
        net.model.to(memory_format=torch.channels_last)
        return self._run(net, "full", list(range(1, self.backbone.num_blocks + 1)), seed)

    def lora(self, blocks: list[int] | None = None, *, rank: int = 8, alpha: float | None = None,
             seed: int | None = None, test: bool = True) -> TrainResult:
        """LoRA adapters on blocks (default all) of frozen copies; see lora.py."""
        from subtune.training.lora import LoRANet

        seed = self.config.seed if seed is None else seed
        blocks = list(blocks or range(1, self.backbone.num_blocks + 1))
        net = LoRANet(self.backbone, blocks, len(self.classes), rank=rank, alpha=float(alpha or rank), seed=seed)
        result = self._run(net, "lora", blocks, seed, test)
        result.method = {"method": "lora", **net.lora_meta()}
        return result

    def head2toe(self, *, points: list[int] | None = None, grid: int | None = None, budgets: list[int] | None = None,
                 group_lasso: float | None = None, seed: int | None = None, test: bool = True) -> TrainResult:
        """Head2Toe (see head2toe.py): taps at `points` (default: the stem, every block, the
        features), group-lasso selection, the budget chosen on validation."""
        from subtune.training import head2toe as h2t

        seed = self.config.seed if seed is None else seed
        grid = h2t.DEFAULT_GRID if grid is None else grid
        strength = h2t.DEFAULT_GROUP_LASSO if group_lasso is None else group_lasso
        points = points or h2t.default_points(self.backbone)
        specs = h2t.tap_specs(self.backbone, points, grid, tuple(self.data["train"].image_size))
        feats = {split: self._pooled(split, specs) for split in self.data}
        y = self.data["train"].labels
        c = self.config
        began = time.perf_counter()
        std = h2t.Standardizer.fit(feats["train"])
        z = {split: std(f) for split, f in feats.items()}
        importance = h2t.group_lasso_importance(z["train"], y, len(self.classes), strength=strength)
        total = int(importance.numel())
        tried, best = [], None
        for budget in sorted({min(b, total) for b in (budgets or list(h2t.DEFAULT_BUDGETS))}):
            select = h2t.select_top(importance, budget)
            head = h2t._train_linear(z["train"][:, select], y, len(self.classes), epochs=c.epochs, lr=c.lr,
                                     weight_decay=c.weight_decay, batch_size=c.batch_size, seed=seed)
            with torch.no_grad():
                val = accuracy(head(z["val"][:, select]), self.data["val"].labels)
            tried.append({"budget": budget, "val_accuracy": val})
            if best is None or val > best[0]:
                best = (val, budget, select, head)
        seconds = time.perf_counter() - began
        val_acc, budget, select, head = best
        folded = h2t.fold_head(head, std, select)
        kept, renumbered = h2t.drop_unused_taps(specs, select)
        net = h2t.TapNet(self.backbone, kept, renumbered, folded)
        test_acc = None
        if test and "test" in self.data:
            with torch.no_grad():
                test_acc = accuracy(folded(feats["test"][:, select]), self.data["test"].labels)
        method = {"method": "head2toe", "grid": grid, "group_lasso": strength, "points": points, "features": total,
                  "budgets": tried, "budget": budget, "selected": len(select),
                  "taps_kept": [s["point"] for s in kept], "standardisation": "folded into the head",
                  "importance": importance.tolist()}
        params = folded.weight.numel() + folded.bias.numel()
        return TrainResult("head2toe", [], net, seed, val_acc, test_acc, params, seconds, 0.0, True, [], method)

    def _pooled(self, split: str, specs: list[dict]) -> torch.Tensor:
        from subtune.training.head2toe import extract_features

        key = (split, tuple((s["point"], tuple(s["grid"] or ())) for s in specs))
        if key not in self._tap_features:
            began = time.perf_counter()
            self._tap_features[key] = extract_features(self.backbone, self.data[split], specs,
                                                       self.config.eval_batch_size)
            self.tap_seconds += time.perf_counter() - began
        return self._tap_features[key]

    def evaluate_test(self, result: TrainResult) -> TrainResult:
        if "test" in self.data and result.test_accuracy is None:
            result.test_accuracy = self._accuracy("test", result.net)
        return result

    def _accuracy(self, split: str, net: nn.Module) -> float:
        ds = self.data[split]
        return accuracy(predict(net, self._inputs(split, net), len(ds), self.config.eval_batch_size), ds.labels)

    def _run(self, net: nn.Module, mode: str, blocks: list[int], seed: int, test: bool = True) -> TrainResult:
        label = {"linear": "linear probe", "full": "full finetune"}.get(mode) or \
            f"{'LoRA ' if mode == 'lora' else ''}blocks {block_span(blocks)}"
        cached = self.config.cached_training and net.cut > 0
        train_inputs = self._inputs("train", net, training=True)
        began = time.perf_counter()
        history = fit(net, train_inputs, self.data["train"].labels, self.config, seed, f"{label} (seed {seed})")
        seconds = time.perf_counter() - began
        began = time.perf_counter()
        val_acc = self._accuracy("val", net)
        test_acc = self._accuracy("test", net) if test and "test" in self.data else None
        params = sum(p.numel() for p in net.parameters() if p.requires_grad)
        return TrainResult(mode, blocks, net, seed, val_acc, test_acc, params, seconds,
                           time.perf_counter() - began, cached, history)

    def _inputs(self, split: str, net: nn.Module, *, training: bool = False) -> Inputs:
        """What the trainable part sees for a batch of `split`: cached activations at the net's
        cut, or the images carried there through the frozen layers (with augmentation)."""
        ds, bb, cut = self.data[split], self.backbone, net.cut
        feats_point = features_point(bb)
        use_cache = self.config.cache and cut > 0 and not (training and self.config.augment != "none")
        if use_cache:
            acts = self.stores[split].get(cut)
            feats = self.stores[split].get(feats_point) if net.siamese else None
            return lambda idx, g: (fast_layout(acts[idx]), feats[idx] if feats is not None else None)
        aug = self.config.augment if training else "none"

        def inputs(idx: np.ndarray, g: torch.Generator | None):
            x = augment(ds.batch(idx), aug, g) if aug != "none" else ds.batch(idx)
            h = fast_layout(run_frozen(bb, fast_layout(x), 0, cut))
            return h, run_frozen(bb, h, cut, feats_point) if net.siamese else None

        return inputs


# ---------------------------------------------------------------------- the loop


def fit(net: nn.Module, inputs: Inputs, labels: torch.Tensor, config: TrainConfig, seed: int,
        desc: str = "training") -> list[dict]:
    from tqdm import tqdm

    torch.manual_seed(seed)  # dropout / drop-path inside tuned blocks, if any
    order_g = torch.Generator().manual_seed(seed)
    aug_g = torch.Generator().manual_seed(seed + 1)
    n = len(labels)
    steps_per_epoch = len(batch_order(n, config.batch_size, torch.Generator().manual_seed(0)))
    total = max(1, steps_per_epoch * config.epochs)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))
    history = []
    bar = tqdm(total=total, desc=desc, unit="step", file=sys.stderr, leave=False, disable=not sys.stderr.isatty())
    net.train()
    for epoch in range(config.epochs):
        loss_sum, correct, seen, began = 0.0, 0, 0, time.perf_counter()
        for idx in batch_order(n, config.batch_size, order_g):
            h, base = inputs(idx, aug_g)
            y = labels[torch.from_numpy(idx)]
            logits = net.forward_from(h, base)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(idx)
            bar.update(1)
            bar.set_postfix_str(f"loss {float(loss.detach()):.3f}")
        history.append({"epoch": epoch + 1, "loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1),
                        "seconds": round(time.perf_counter() - began, 3)})
    bar.close()
    net.eval()
    return history


@torch.no_grad()
def predict(net: nn.Module, inputs: Inputs, n: int, batch_size: int) -> torch.Tensor:
    """Logits for all n items, in order, with the net in eval mode."""
    net.eval()
    out = []
    for lo in range(0, n, batch_size):
        h, base = inputs(np.arange(lo, min(lo + batch_size, n)), None)
        out.append(net.forward_from(h, base))
    return torch.cat(out)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean())
