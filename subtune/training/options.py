"""Typed options for `subtune.train` and `subtune.profile`.

    method     what trains: SubTuning (chosen or greedily selected blocks), Head2Toe, LoRA,
               Linear (a probe) or Full (finetuning); each takes only its own settings
    DataOptions      how a dataset spec becomes train / val / test splits
    TrainingOptions  the schedule (the paper's Appendix A defaults) and cached activations
    RayOptions       where Ray runs go (greedy selection, profiles, pruning sweeps)

Each is a small frozen dataclass; `check()` refuses values that cannot work, or settings that
do not apply, with one line that names the parameter in backticks (`max_blocks`); the command
line builds these objects from its flags and shows those names as its flags (--max-blocks).
Building an option object imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, ClassVar, Sequence, Union

from subtune.errors import SubtuneError

if TYPE_CHECKING:
    from subtune.models import BaseModel
    from subtune.training.data import ImageDataset
    from subtune.training.trainer import TrainConfig

GREEDY_EPSILON = 0.005  # blocks="auto": stop when a block adds less validation accuracy than this
GREEDY_MAX_BLOCKS = 3  # blocks="auto": at most this many blocks


def blocks_text(blocks) -> str | None:
    """"13-14", "13,14", "layer3", "auto", 13 or [13, 14] -> the text form parse_blocks reads."""
    if blocks is None:
        return None
    if isinstance(blocks, str):
        return blocks.strip() or None
    if isinstance(blocks, int) and not isinstance(blocks, bool):
        return str(blocks)
    try:
        return ",".join(str(int(b)) for b in blocks) or None
    except (TypeError, ValueError):
        raise SubtuneError(f"`blocks`: expected FIRST-LAST, a list of block numbers, a stage name or 'auto'; "
                           f"found {blocks!r}") from None


def _blocks_not_auto(method: str, blocks) -> None:
    if blocks_text(blocks) == "auto":
        raise SubtuneError(f"`blocks` auto (greedy selection) is SubTuning's; for {method} give blocks (e.g. the "
                           "ones SubTuning's auto chose) or leave `blocks` out for all")


# --------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class SubTuning:
    """SubTuning (paper §3): the chosen blocks and a new head train, the rest stays the base's.

    blocks: FIRST-LAST ("13-14"), a list ("13,14" or [13, 14]), a stage name ("layer3"), or
        "auto": greedy selection on the validation split (§5), which `epsilon` and `max_blocks`
        steer (they apply to "auto" only).
    siamese: the head sees [base features, tuned features] (§5.1).
    """

    blocks: str | int | Sequence[int]
    siamese: bool = False
    epsilon: float | None = None  # blocks="auto" only; default GREEDY_EPSILON
    max_blocks: int | None = None  # blocks="auto" only; default GREEDY_MAX_BLOCKS
    mode: ClassVar[str] = "subtune"

    @property
    def auto(self) -> bool:
        return blocks_text(self.blocks) == "auto"

    @property
    def greedy_epsilon(self) -> float:
        return GREEDY_EPSILON if self.epsilon is None else self.epsilon

    @property
    def greedy_max_blocks(self) -> int:
        return GREEDY_MAX_BLOCKS if self.max_blocks is None else self.max_blocks

    def check(self) -> "SubTuning":
        if not blocks_text(self.blocks):
            raise SubtuneError("`blocks` is required for SubTuning: e.g. 13-14, a stage name such as layer3, or auto")
        if not self.auto and (self.epsilon is not None or self.max_blocks is not None):
            raise SubtuneError("`epsilon` and `max_blocks` steer greedy selection: they apply to `blocks` auto only")
        if self.greedy_max_blocks < 1:
            raise SubtuneError(f"`max_blocks` must be at least 1, found {self.max_blocks}")
        if self.greedy_epsilon < 0:
            raise SubtuneError(f"`epsilon` must be 0 or more, found {self.epsilon}")
        return self


@dataclass(frozen=True)
class Head2Toe:
    """Head2Toe (Evci et al., 2022): a head on features pooled from many blocks, chosen by group
    lasso (training/head2toe.py).

    blocks: the blocks whose outputs are tapped (default all); feature_budget: features to keep,
    a number or a list (default 256, 1024, 4096) from which validation accuracy chooses;
    tap_grid: each tapped map pooled to GRID x GRID; group_lasso: the penalty as a fraction of
    the strength that zeroes every feature.
    """

    blocks: str | int | Sequence[int] | None = None
    feature_budget: int | str | Sequence[int] | None = None
    tap_grid: int = 2
    group_lasso: float = 0.05
    mode: ClassVar[str] = "head2toe"

    @property
    def budgets(self) -> list[int]:
        from subtune.training.head2toe import parse_budgets

        budget = self.feature_budget
        return parse_budgets(",".join(map(str, budget)) if isinstance(budget, (list, tuple)) else budget)

    def check(self) -> "Head2Toe":
        _blocks_not_auto("Head2Toe", self.blocks)
        blocks_text(self.blocks)
        if not isinstance(self.tap_grid, int) or self.tap_grid < 1:
            raise SubtuneError(f"`tap_grid` must be at least 1, found {self.tap_grid}")
        if not 0 < self.group_lasso < 1:
            raise SubtuneError(f"`group_lasso` must be in (0, 1) (a fraction of the strength that zeroes every "
                               f"feature), found {self.group_lasso}")
        self.budgets  # noqa: B018 - parses, or refuses in one line
        return self


@dataclass(frozen=True)
class LoRA:
    """Low-rank adapters (PEFT) on the chosen blocks (default all), merged into them for
    deployment (training/lora.py). rank r; updates are alpha / r * B A (alpha default: r)."""

    blocks: str | int | Sequence[int] | None = None
    rank: int = 8
    alpha: float | None = None
    mode: ClassVar[str] = "lora"

    def check(self) -> "LoRA":
        _blocks_not_auto("LoRA", self.blocks)
        blocks_text(self.blocks)
        if not isinstance(self.rank, int) or self.rank < 1:
            raise SubtuneError(f"`rank` must be at least 1, found {self.rank}")
        if self.alpha is not None and not self.alpha > 0:
            raise SubtuneError(f"`alpha` must be positive, found {self.alpha}")
        return self


@dataclass(frozen=True)
class Linear:
    """A linear probe: a new head on the base's features, nothing else trains."""

    mode: ClassVar[str] = "linear"

    def check(self) -> "Linear":
        return self


@dataclass(frozen=True)
class Full:
    """Full finetuning: every weight trains; the result is a whole model (the base-file format),
    not a task delta."""

    mode: ClassVar[str] = "full"

    def check(self) -> "Full":
        return self


Method = Union[SubTuning, Head2Toe, LoRA, Linear, Full]
METHODS = {cls.mode: cls for cls in (SubTuning, Head2Toe, LoRA, Linear, Full)}


def check_method(method) -> Method:
    """The method object, checked; a class instead of an object, or anything else, is refused."""
    if isinstance(method, type) and method in METHODS.values():
        raise SubtuneError(f"`method`: expected an option object, found the class {method.__name__}: "
                           f"call it ({method.__name__}(...))")
    if not isinstance(method, tuple(METHODS.values())):
        raise SubtuneError(f"`method`: expected SubTuning(blocks=...), Head2Toe(), LoRA(), Linear() or Full(), "
                           f"found {type(method).__name__}")
    return method.check()


def is_default(method: Method) -> bool:
    """Every setting of `method` is its default (what a profile baseline runs)."""
    return all(getattr(method, f.name) == f.default for f in fields(method))


# --------------------------------------------------------------------------- data, schedule, Ray


@dataclass(frozen=True)
class DataOptions:
    """How a dataset spec (fashion-mnist, imagefolder:DIR, cifar10:DIR, ...) becomes splits.

    image_size: H or (H, W) the images are resized to (default: the base's input size);
    limit: a class-balanced subset of the labelled pool (validation is carved from it);
    val_split: the fraction held out for validation (default 0.2 unless the data has val/);
    seed: the subset's and the split's seed; label_map: coarser classes ("tops=0,2;..." or a
    dict); test: also evaluate on the test split (never used to choose); test_limit: a
    class-balanced subset of the test split (with test only).
    """

    image_size: int | tuple[int, int] | None = None
    limit: int | None = None
    val_split: float | None = None
    seed: int = 0
    label_map: str | dict | None = None
    test: bool = False
    test_limit: int | None = None

    def check(self) -> "DataOptions":
        if self.test_limit is not None and not self.test:
            raise SubtuneError("`test_limit` applies when the test split is evaluated: add `test`")
        if self.limit is not None and self.limit < 1:
            raise SubtuneError(f"`limit` {self.limit}: expected a positive number of images")
        if self.test_limit is not None and self.test_limit < 1:
            raise SubtuneError(f"`test_limit` {self.test_limit}: expected a positive number of images")
        if self.val_split is not None and not 0 < self.val_split < 1:
            raise SubtuneError(f"`val_split` {self.val_split}: expected a fraction between 0 and 1 (e.g. 0.2)")
        if self.image_size is not None:
            values = (self.image_size,) if isinstance(self.image_size, int) else tuple(self.image_size)
            if len(values) not in (1, 2) or not all(isinstance(v, int) and v >= 8 for v in values):
                raise SubtuneError(f"`image_size` expects H or (H, W), at least 8 pixels, found {self.image_size!r}")
        return self

    def load_splits(self, spec: str, base: "BaseModel"
                    ) -> "tuple[ImageDataset, ImageDataset, ImageDataset | None]":
        """(train, val, test or None) of `spec`, normalised for the base, at the chosen size."""
        from subtune.training.data import load_dataset

        mean, std = normalisation(base)
        common = dict(image_size=self.image_size or base.input_size, mean=mean, std=std, seed=self.seed,
                      label_map=self.label_map)
        train = load_dataset(spec, "train", limit=self.limit, val_split=self.val_split, **common)
        val = load_dataset(spec, "val", limit=self.limit, val_split=self.val_split, **common)
        test = load_dataset(spec, "test", limit=self.test_limit, **common) if self.test else None
        return train, val, test


@dataclass(frozen=True)
class TrainingOptions:
    """The schedule (defaults: the paper's Appendix A: AdamW, lr 1e-3, weight decay 0.01, batch
    256, cosine; 10 epochs, 50 with at most 1,000 training images) and cached activations.

    augment: none, flip or crop-flip (anything but none trains on the full forward pass);
    freeze_bn: keep the tuned blocks' BatchNorm statistics; cache: run the frozen layers once
    and train on their cached output (§3.2); cache_dir: where activations over the memory
    budget go; cache_memory: that budget in GiB (default half the available memory, at most 16).
    """

    epochs: int | None = None
    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 256
    seed: int = 0
    augment: str = "none"
    freeze_bn: bool = False
    cache: bool = True
    cache_dir: str | None = None
    cache_memory: float | None = None

    def check(self) -> "TrainingOptions":
        self.config(1000)  # TrainConfig's own checks
        if self.cache_memory is not None and not self.cache_memory > 0:
            raise SubtuneError(f"`cache_memory` {self.cache_memory}: expected a positive number of GiB")
        return self

    def config(self, train_images: int) -> "TrainConfig":
        from subtune.training.trainer import TrainConfig, default_epochs

        return TrainConfig(epochs=self.epochs or default_epochs(train_images), lr=self.lr,
                           weight_decay=self.weight_decay, batch_size=self.batch_size, seed=self.seed,
                           augment=self.augment, freeze_bn=self.freeze_bn, cache=self.cache)

    @property
    def memory_budget(self) -> int | None:
        return None if self.cache_memory is None else int(self.cache_memory * 2**30)


@dataclass(frozen=True)
class RayOptions:
    """Runs as Ray tasks: address "local" (a Ray instance sized to this machine), "auto" or
    HOST:PORT (a running cluster); each run declares cpus_per_run CPUs (also its torch threads)
    and gpus_per_run GPUs."""

    address: str = "local"
    cpus_per_run: float = 1
    gpus_per_run: float = 0

    def check(self) -> "RayOptions":
        if not isinstance(self.address, str) or not self.address:
            raise SubtuneError(f"`ray` address: expected local, auto or HOST:PORT, found {self.address!r}")
        if not self.cpus_per_run > 0 or self.gpus_per_run < 0:
            raise SubtuneError("`cpus_per_run` must be positive and `gpus_per_run` non-negative")
        return self

    @property
    def cluster(self) -> str | None:
        """The address for ray.init: None starts a local instance."""
        return None if self.address == "local" else self.address


def ray_options(ray: "RayOptions | str | None") -> RayOptions | None:
    """None, an address ("local", "auto", HOST:PORT) or RayOptions -> RayOptions or None, checked."""
    if ray is None or ray is False:
        return None
    if isinstance(ray, str):
        ray = RayOptions(ray)
    if not isinstance(ray, RayOptions):
        raise SubtuneError(f"`ray`: expected an address (local, auto, HOST:PORT) or RayOptions, "
                           f"found {type(ray).__name__}")
    return ray.check()


# --------------------------------------------------------------------------- shared pieces


def normalisation(base) -> tuple[list[float], list[float]]:
    from subtune.models import get_adapter

    model, _ = base.build()
    return get_adapter(base.arch)[0].normalization(model)


def data_summary(train, val, test) -> str:
    parts = [f"{len(train)} train", f"{len(val)} val"] + ([f"{len(test)} test"] if test is not None else [])
    dropped = train.info.get("dropped_classes")
    note = f"; dropped classes {dropped}" if dropped else ""
    return (f"{train.info['spec']}: {' / '.join(parts)} images, {len(train.classes)} classes, "
            f"{train.image_size[0]}x{train.image_size[1]}{note}")
