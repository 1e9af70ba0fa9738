"""Whether a new compiled graph may take over from the one a server runs (`subtune rollout`).

Before anything reaches a server, the new graph is held against the version being served:

1. the same base (`subtune.base_fingerprint`, `subtune.arch`) and the same inputs (names, types,
   dims): a rollout changes tasks, never what every task stands on or what clients send. A
   --task-select graph's mask input is not compared where the served model builds it from the
   outputs a request names (the python backend): clients send images alone to either kind;
2. both graphs run (ONNX Runtime, one thread) on the same fixed check images, once alone
   (batch 1) and once all together, a task-select graph with every task asked for, and every
   output present in both is compared by the compiler's measure, max |new - served| / max |served|:
   - `base` and every task in both versions must agree: **bit-identical** when the shared layers
     run the same batch layout in both graphs (the multiset of the tasks' last tuned blocks,
     which fixes where task streams merge into the shared stream and how big its batch is after
     each block: `compiler/schedule.py`; a graph that gathers each task's rows and one that does
     not never count as the same), otherwise within the compile tolerance (the tolerance the new
     graph was verified with, `subtune.verification`; 1e-4 when it records none);
   - a task named in `replace` (retrained) must differ, and is listed with how far it moved and
     how often its top-1 class stayed the same;
3. tasks only in the new graph are listed as added, tasks only in the served one as removed;
4. a new task-select graph keeps its own promise on the check images: its base bit-identical
   under the masks none and one task per image to its base with every task, NaN exactly where a
   task was not asked for, selected rows within the tolerance.

A violation is a `SubtuneError` of one line that names what differs. A rollback (serving an
earlier version again) lists tasks that differ as replaced without asking for them by name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from subtune.errors import SubtuneError
from subtune.serving.graph import GraphInfo

log = logging.getLogger(__name__)
DEFAULT_TOLERANCE = 1e-4  # the compiler's (CompileOptions.tolerance) for graphs that record none
DEFAULT_CHECK_IMAGES = 16


@dataclass
class CheckImages:
    images: np.ndarray  # float32 [N, C, H, W], preprocessed as the graph's input expects
    source: str  # what they are, for the report

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass
class OutputChange:
    name: str
    status: str  # same | replaced | added | removed
    max_difference: float | None = None  # max |new - served| / max |served| over every check run
    bit_identical: bool | None = None
    top1_agreement: float | None = None  # replaced tasks: share of check images whose top-1 class stayed
    detail: str = ""  # blocks and classes of an added/removed task; what changed in a replaced one

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None and v != ""}


@dataclass
class Comparison:
    served_version: int
    new: str  # the new graph (a path), or "version N" for a rollback
    images: int
    image_source: str
    batches: list[int]
    tolerance: float
    same_layout: bool  # the shared layers run the same batch layout: unchanged outputs must be bit-identical
    outputs: list[OutputChange] = field(default_factory=list)
    new_outputs: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # the new graph on the check images
    # --task-select: whether each version chooses tasks per image, and (new graph) the masks its
    # base was checked bit-identical under and the largest difference of selected rows
    task_select: dict | None = None

    def named(self, status: str) -> list[str]:
        return [o.name for o in self.outputs if o.status == status]

    @property
    def changes_anything(self) -> bool:
        return any(o.status != "same" for o in self.outputs)

    def to_json(self) -> dict:
        return {"served_version": self.served_version, "new": self.new, "check_images": self.images,
                "image_source": self.image_source, "batches": self.batches, "tolerance": self.tolerance,
                "same_layout": self.same_layout, "task_select": self.task_select,
                "outputs": [o.to_json() for o in self.outputs],
                "added": self.named("added"), "removed": self.named("removed"), "replaced": self.named("replaced")}

    def lines(self) -> list[str]:
        """The comparison as a reader wants it: one line per output."""
        kinds_differ = bool(self.task_select) and self.task_select["served"] != self.task_select["new"]
        expect = ("bit-identical expected (the shared layers run the same batch layout)" if self.same_layout else
                  f"within {self.tolerance:.0e} expected (" + ("one version gathers each task's rows, the other does not"
                                                               if kinds_differ else
                                                               "the shared layers' batch layout changed") + ")")
        out = [f"checked on {self.images} check images ({self.image_source}), batches "
               f"{' and '.join(map(str, self.batches))}: outputs in both versions {expect}"]
        width = max(len(o.name) for o in self.outputs)
        for o in self.outputs:
            if o.status == "same":
                how = ("bit-identical" if o.bit_identical
                       else f"agrees (max difference {o.max_difference:.1e} <= {self.tolerance:.0e})")
            elif o.status == "replaced":
                how = (f"max difference {o.max_difference:.1e}" if o.max_difference is not None else "")
                if o.top1_agreement is not None:
                    how += f", top-1 class unchanged on {o.top1_agreement:.0%} of the check images"
                how = ", ".join(filter(None, [how.lstrip(", "), o.detail]))
            else:
                how = o.detail
            out.append(f"  {o.name:<{width}}  {o.status:<8}  {how}".rstrip())
        ts = self.task_select
        if ts:
            kind = {(False, True): "the new version chooses tasks per image (the served one computes every task)",
                    (True, False): "the new version computes every task for every image (the served one chooses per "
                                   "image); clients that send a tasks input get Triton's error for an unknown input",
                    (True, True): "both versions choose tasks per image"}[(ts["served"], ts["new"])]
            out.append(f"task selection: {kind}")
            if ts["new"]:
                out.append(f"  its base bit-identical under the masks {', '.join(ts['masks'])}; selected rows within "
                           f"{ts['selected_max_difference']:.1e} of every task on every image")
        return out


def tolerance_of(graph: GraphInfo) -> float:
    ver = graph.metadata.get("subtune.verification")
    tol = ver.get("tolerance") if isinstance(ver, dict) else None
    return float(tol) if isinstance(tol, (int, float)) and not isinstance(tol, bool) and tol > 0 else DEFAULT_TOLERANCE


def _tasks(graph: GraphInfo) -> dict[str, dict]:
    return {t["name"]: t for t in graph.tasks if isinstance(t, dict) and "name" in t}


def shared_layout(graph: GraphInfo) -> list[int]:
    """What fixes the shared layers' batch layout: the last tuned block of each forking task
    (sorted). Shared block k runs on 1 + #(tasks whose last block < k) chunks; the neck on
    1 + #(forking tasks). Tap tasks never fork."""
    return sorted(int(t["blocks"][-1]) for t in _tasks(graph).values()
                  if t.get("kind", "delta") == "delta" and t.get("blocks"))


def check_same_base_and_inputs(served: GraphInfo, new: GraphInfo, served_label: str, new_label: str, *,
                               mask_from_outputs: bool = True) -> None:
    """Refuse (one line) a graph on another base or with other inputs. `mask_from_outputs` (the
    python backend): the served model builds a --task-select graph's mask from the outputs a
    request names, so clients send the images alone to either kind of graph, and only the images
    input must match; otherwise (Triton's onnxruntime backend) every input must."""
    for key, what in (("subtune.base_fingerprint", "base"), ("subtune.arch", "architecture")):
        a, b = served.metadata.get(key), new.metadata.get(key)
        if a is None or b is None:
            missing = served_label if a is None else new_label
            raise SubtuneError(f"{missing} records no {key}: not a graph from subtune-compile; compile it again")
        if a != b:
            shown = (a[:12] + "…", b[:12] + "…") if key == "subtune.base_fingerprint" else (a, b)
            raise SubtuneError(f"{new_label} was compiled on another {what} ({key} {shown[1]}) than {served_label} "
                               f"({shown[0]}): a rollout changes tasks on the same base; serve another base as a "
                               "model of its own (subtune triton-repo)")
    compared = (lambda g: [g.image_input]) if mask_from_outputs else (lambda g: g.inputs)  # noqa: E731
    want = [(t.name, t.dtype, t.dims) for t in compared(served)]
    got = [(t.name, t.dtype, t.dims) for t in compared(new)]
    if want != got:
        fmt = lambda ts: ", ".join(f"{n} {d} {dims}" for n, d, dims in ts)  # noqa: E731
        if [served.image_input.name, served.image_input.dims] == [new.image_input.name, new.image_input.dims]:
            with_mask = new_label if new.task_select else served_label
            raise SubtuneError(f"{with_mask} takes a task mask ({(new.mask_input or served.mask_input).name}) that "
                               f"{new_label if with_mask == served_label else served_label} does not, and Triton's "
                               "onnxruntime backend feeds the graph what clients send, so every client would have to "
                               "change; serve the graphs with the python backend (subtune triton-repo --backend "
                               "python), whose model builds the mask from the outputs a request names")
        raise SubtuneError(f"{new_label} takes inputs {fmt(got)}, {served_label} takes {fmt(want)}: clients send "
                           "the same inputs to every version; compile the new graph for the served input")


def check_images(graph: GraphInfo, count: int = DEFAULT_CHECK_IMAGES, data: str | None = None,
                 seed: int = 0) -> CheckImages:
    """`count` images for the graph's input: from `data` (a dataset spec, e.g. imagefolder:DIR),
    preprocessed as the tasks were trained; otherwise seeded random pixel images put through the
    same preprocessing (random normal tensors when the graph records none)."""
    if count < 1:
        raise SubtuneError(f"--check-images {count}: expected 1 or more")
    image = graph.image_input
    dims = list(image.dims)
    size = graph.metadata.get("subtune.input_size")
    if len(dims) == 3 and (dims[1] < 1 or dims[2] < 1) and isinstance(size, list) and len(size) == 2:
        dims = [dims[0], int(size[0]), int(size[1])]
    if len(dims) != 3 or min(dims) < 1 or image.dtype != "FP32":
        raise SubtuneError(f"{graph.onnx_path}: input {image.name} is {image.dtype} {image.dims}; check images are "
                           "float32 [batch, 3, H, W]")
    pre = _preprocessing(graph)
    if data is not None:
        if pre is None:
            raise SubtuneError(f"--data {data}: {graph.onnx_path} records no preprocessing (mean, std) to prepare the "
                               "images with; leave --data out (random check images are used)")
        from subtune.training.data import load_dataset

        ds = load_dataset(data, "pool", image_size=dims[1:], mean=pre["mean"], std=pre["std"], limit=count, seed=seed)
        images = ds.images.numpy().astype(np.float32, copy=False)
        return CheckImages(np.ascontiguousarray(images), f"{len(images)} from {data}")
    rng = np.random.default_rng(seed)
    if pre is None or len(pre["mean"]) != dims[0]:
        return CheckImages(rng.standard_normal((count, *dims), dtype=np.float32), "random normal tensors")
    pixels = rng.integers(0, 256, (count, *dims), dtype=np.uint8).astype(np.float32) / np.float32(255.0)
    mean = np.asarray(pre["mean"], np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(pre["std"], np.float32).reshape(1, -1, 1, 1)
    return CheckImages(np.ascontiguousarray((pixels - mean) / std, dtype=np.float32),
                       "random pixels, normalised as the tasks were trained")


def _preprocessing(graph: GraphInfo) -> dict | None:
    pre = graph.metadata.get("subtune.preprocess")
    if not isinstance(pre, dict) or not pre:
        return None
    first = next(iter(pre.values()))
    return first if isinstance(first, dict) and "mean" in first and "std" in first else None


def run_graph(graph: GraphInfo, images: np.ndarray, batches: list[int],
              masks: list[np.ndarray] | None = None) -> list[dict[str, np.ndarray]]:
    """The graph's every output on `images` at each batch size in `batches` (the first `b` images),
    ONNX Runtime on one thread, as the server runs it (all graph optimisations). A --task-select
    graph gets `masks[i]` for batch i (default: every task on every image)."""
    from subtune.runtimes.onnxruntime import make_session

    try:
        session = make_session(graph.onnx_path, threads=1)
    except SubtuneError as e:
        raise SubtuneError(f"ONNX Runtime cannot load {graph.onnx_path}: {str(e).splitlines()[0]}") from None
    names = [o.name for o in session.get_outputs()]
    feed, mask = graph.image_input.name, graph.mask_input
    runs = []
    for i, b in enumerate(batches):
        feeds = {feed: images[:b]}
        if mask is not None:
            feeds[mask.name] = masks[i] if masks is not None else np.ones((b, len(graph.task_select["columns"])), bool)
        try:
            values = session.run(names, feeds)
        except Exception as e:  # noqa: BLE001 - any runtime failure refuses the graph
            raise SubtuneError(f"ONNX Runtime cannot run {graph.onnx_path} on {b} check image(s): "
                               f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        runs.append(dict(zip(names, values)))
    return runs


def task_masks(batch: int, k: int) -> dict[str, np.ndarray]:
    """The masks a task-select graph is checked under besides every task: no task, and one task per
    image (image i asks for task i mod k)."""
    one = np.zeros((batch, k), dtype=bool)
    one[np.arange(batch), np.arange(batch) % k] = True
    return {"none": np.zeros((batch, k), dtype=bool), "one task per image": one}


def check_task_selection(graph: GraphInfo, label: str, images: np.ndarray, all_tasks: dict[str, np.ndarray],
                         tolerance: float) -> tuple[list[str], float]:
    """A --task-select graph keeps its promise on the check images: under each of `task_masks` its
    base is bit-identical to its base with every task asked (`all_tasks`, the same images), a task
    holds NaN exactly where its column is false, and its selected rows agree with `all_tasks`
    within `tolerance`. Returns the masks checked and the largest difference in selected rows."""
    columns = list(graph.task_select["columns"])
    masks = task_masks(len(images), len(columns))
    runs = run_graph(graph, images, [len(images)] * len(masks), list(masks.values()))
    worst = 0.0
    for (mask_name, mask), run in zip(masks.items(), runs):
        if not np.array_equal(run["base"], all_tasks["base"]):
            raise SubtuneError(f"the base output of {label} changes with the task mask (every task vs {mask_name}): "
                               "a task-select graph's base must not depend on it; compile the graph again")
        for column, task in enumerate(columns):
            got, want, rows = run[task], all_tasks[task], mask[:, column]
            if not np.isnan(got[~rows]).all() or np.isnan(got[rows]).any():
                raise SubtuneError(f"task {task} of {label} under the mask '{mask_name}' does not hold NaN exactly in "
                                   "the images that did not ask for it; compile the graph again")
            if rows.any():
                scale = float(np.abs(want[rows]).max()) or 1.0
                worst = max(worst, float(np.abs(got[rows].astype(np.float64) - want[rows]).max()) / scale)
    if worst > tolerance:
        raise SubtuneError(f"{label} answers a task differently when fewer images ask for it (max difference "
                           f"{worst:.1e} > {tolerance:.0e} against every task on every image); compile the graph again")
    return ["every task", *masks], worst


def _difference(served: list[dict], new: list[dict], name: str) -> tuple[float, bool]:
    worst, identical = 0.0, True
    for a, b in zip(served, new):
        x, y = a[name], b[name]
        if x.shape != y.shape:
            return float("inf"), False
        identical = identical and bool(np.array_equal(x, y))
        scale = float(np.abs(x).max()) or 1.0
        worst = max(worst, float(np.abs(y.astype(np.float64) - x).max()) / scale)
    return worst, identical


def _describe(task: dict) -> str:
    blocks = task.get("blocks") or []
    where = ("blocks " + "-".join(str(b) for b in dict.fromkeys(blocks))) if blocks else "a tap head"
    n = task.get("num_classes")
    return f"{where}, {n} classes" if n else where


def compare(served: GraphInfo, new: GraphInfo, images: CheckImages, *, served_version: int, new_label: str,
            replace: list[str] | tuple[str, ...] = (), rollback: bool = False,
            mask_from_outputs: bool = True) -> Comparison:
    """Hold `new` against `served` (the version being served) as the module docstring says."""
    served_label = f"the served version {served_version}"
    check_same_base_and_inputs(served, new, served_label, new_label, mask_from_outputs=mask_from_outputs)
    old_tasks, new_tasks = _tasks(served), _tasks(new)
    common = [t for t in new_tasks if t in old_tasks]
    unknown = [t for t in replace if t not in common]
    if unknown:
        raise SubtuneError(f"--replace {','.join(unknown)}: a replaced task is in both versions; the served version "
                           f"has {', '.join(old_tasks) or 'no tasks'}, {new_label} has {', '.join(new_tasks) or 'no tasks'}")
    tolerance = tolerance_of(new)
    # a graph that gathers each task's rows and one that does not are not the same layout
    same_layout = shared_layout(served) == shared_layout(new) and bool(served.task_select) == bool(new.task_select)
    batches = sorted({1, len(images)})
    old_runs = run_graph(served, images.images, batches)
    new_runs = run_graph(new, images.images, batches)
    old_names, new_names = list(old_runs[0]), list(new_runs[0])
    if "base" not in old_names or "base" not in new_names:
        raise SubtuneError(f"{served_label if 'base' not in old_names else new_label} has no `base` output: not a "
                           "graph from subtune-compile; compile it again")
    result = Comparison(served_version, new_label, len(images), images.source, batches, tolerance, same_layout,
                        new_outputs=new_runs[-1])
    expectation = ("bit-identical: the shared layers run the same batch layout in both" if same_layout
                   else f"tolerance {tolerance:.0e}")

    def agrees(name: str) -> tuple[bool, float, bool]:
        diff, identical = _difference(old_runs, new_runs, name)
        return (identical if same_layout else diff <= tolerance), diff, identical

    ok, diff, identical = agrees("base")
    if not ok:
        raise SubtuneError(f"the base output of {new_label} differs from {served_label}'s by {diff:.1e} (max |new - "
                           f"served| / max |served| on {len(images)} check images; expected {expectation}); the "
                           "base must answer as before: compile the new graph from the same base file")
    result.outputs.append(OutputChange("base", "same", diff, identical))
    if served.task_select or new.task_select:
        result.task_select = {"served": bool(served.task_select), "new": bool(new.task_select)}
        if new.task_select:
            masks, worst = check_task_selection(new, new_label, images.images, new_runs[-1], tolerance)
            result.task_select.update(masks=masks, selected_max_difference=worst)
    for name in new_names:
        if name == "base":
            continue
        task = new_tasks.get(name, {})
        if name not in old_names:
            result.outputs.append(OutputChange(name, "added", detail=_describe(task)))
            continue
        ok, diff, identical = agrees(name)
        meta_changed = [k for k in ("blocks", "num_classes", "classes", "kind", "siamese", "tap_points")
                        if old_tasks.get(name, {}).get(k) != task.get(k)]
        if ok and not meta_changed:
            if name in replace and not rollback:
                raise SubtuneError(f"--replace {name}: task {name} of {new_label} answers as the served one does "
                                   f"({'bit-identical' if identical else f'max difference {diff:.1e}'} on "
                                   f"{len(images)} check images): nothing was retrained; check the file, or drop "
                                   f"--replace {name}")
            result.outputs.append(OutputChange(name, "same", diff, identical))
            continue
        if name not in replace and not rollback:
            why = (f"its {', '.join(meta_changed)} changed" if meta_changed and not np.isfinite(diff) else
                   f"it differs from the served one by {diff:.1e} (max |new - served| / max |served| on "
                   f"{len(images)} check images; expected {expectation})"
                   + (f" and its {', '.join(meta_changed)} changed" if meta_changed else ""))
            raise SubtuneError(f"task {name} of {new_label}: {why}; if {name} was retrained, say so with "
                               f"--replace {name}")
        agreement = None
        a, b = old_runs[-1][name], new_runs[-1][name]
        if a.shape == b.shape and a.ndim == 2:
            agreement = float(np.mean(a.argmax(1) == b.argmax(1)))
        detail = ", ".join(f"{k} {old_tasks.get(name, {}).get(k)} -> {task.get(k)}" for k in meta_changed
                           if k != "classes") + (", class names changed" if "classes" in meta_changed else "")
        result.outputs.append(OutputChange(name, "replaced", diff if np.isfinite(diff) else None, identical,
                                           agreement, detail.strip(", ")))
    for name in old_names:
        if name not in new_runs[0]:
            result.outputs.append(OutputChange(name, "removed", detail=_describe(old_tasks.get(name, {}))))
    return result
