"""Training runs as Ray tasks.

    with RayExecutor(trainer, address=None, cpus_per_run=1) as ex:
        run_profile(trainer, executor=ex, ...)
    with RayMap(work, cpus_per_run=1) as ex:      # any other work: work(item) -> result
        ex.run(items, on_done)

1. Connecting: no address starts a local Ray instance sized to this machine (and shuts it down
   afterwards, on success, error or Ctrl-C); `auto` or `HOST:PORT` / `ray://HOST:PORT` joins a
   running cluster (and only disconnects). A process already connected (`ray.init` done by the
   caller) is used as it is and left connected.
2. Sharing: the base, the datasets and the training configuration go into the object store
   once (the data is read once, by the driver). With `share_activations` (the default) the
   driver also computes, once, the frozen prefix's activations at every cut point the runs need
   (walking down the network one block at a time, as the serial profile does) and puts each
   into the object store; a task receives the arrays it needs zero-copy. Without it, every task
   computes its own prefix (what the benchmark compares against).
3. Running: each run is one task declaring `cpus_per_run` CPUs and `gpus_per_run` GPUs, and sets
   torch's threads to `cpus_per_run`; the results are the serial ones for the same thread count.
   A worker that dies mid-run (killed, out of memory, a node lost) makes Ray rerun the task, up
   to `max_retries` times; a run that raises is not retried (it would raise again).
4. Results arrive in completion order and go to `on_done` at once (to be written to disk). On
   any exit from `run` the tasks still pending are cancelled.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from typing import Callable

from subtune.errors import SubtuneError
from subtune.training.profile import RunSpec, run_one
from subtune.training.trainer import Trainer

log = logging.getLogger(__name__)
TASK_NAME = "subtune_run"  # the worker's process title while it trains: `ray::subtune_run`


def import_ray():
    try:
        import ray
    except ImportError:
        raise SubtuneError("--ray needs Ray: pip install 'subtune[ray]' (or pip install ray)") from None
    return ray


class RayPool:
    """The connection (rule 1) and the submit-wait-cancel loop (rules 3, 4) that every kind of
    work shares."""

    def __init__(self, *, address: str | None = None, cpus_per_run: float = 1, gpus_per_run: float = 0,
                 max_retries: int = 3):
        if cpus_per_run <= 0 or gpus_per_run < 0:
            raise SubtuneError("--ray-cpus-per-run must be positive and --ray-gpus-per-run non-negative")
        self.address, self.cpus_per_run, self.gpus_per_run = address, cpus_per_run, gpus_per_run
        self.max_retries = max_retries
        self.threads = max(1, int(cpus_per_run))
        self._connected = self._owns_connection = False
        self.nodes, self.cpus, self.gpus = 0, 0.0, 0.0
        self.workers: list[dict] = []  # per finished run: pid, host, seconds (and what the work adds)

    # ---------------------------------------------------------------- connection (rule 1)

    def __enter__(self) -> "RayPool":
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def connect(self) -> None:
        ray = import_ray()
        if ray.is_initialized():
            self._owns_connection = False
        else:
            kwargs = dict(include_dashboard=False, logging_level=logging.WARNING, configure_logging=True)
            try:
                if self.address is None:
                    # "local": a new instance on this machine, even where a `ray start` left its address
                    # in /tmp/ray (plain ray.init() would join that cluster, or fail on a stale one)
                    ray.init(address="local", **kwargs)
                else:
                    ray.init(address=self.address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as e:
                where = "a local Ray instance" if self.address is None else f"the Ray cluster at {self.address!r}"
                raise SubtuneError(f"cannot start or reach {where}: {str(e).splitlines()[0]}; for a cluster, "
                                   "run `ray start --head` on its head node and pass --ray auto or --ray HOST:6379"
                                   ) from None
            self._owns_connection = True
        self._connected = True
        resources = ray.cluster_resources()
        self.cpus, self.gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
        self.nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        biggest = max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=0.0)
        if self.cpus_per_run > biggest:
            self.close()
            raise SubtuneError(f"--ray-cpus-per-run {self.cpus_per_run:g}: the largest node has {biggest:g} CPUs; "
                               "lower it so a run fits on one node")
        if self.gpus_per_run > 0 and not any(n["Resources"].get("GPU", 0.0) >= self.gpus_per_run
                                             for n in ray.nodes() if n.get("Alive")):
            self.close()
            raise SubtuneError(f"--ray-gpus-per-run {self.gpus_per_run:g}: no node of the cluster has that many GPUs "
                               f"({self.gpus:g} in all); lower it or add GPU nodes")

    def close(self) -> None:
        """Disconnect; a local instance we started stops with its workers. Safe to call twice."""
        if self._connected and self._owns_connection:
            import ray

            ray.shutdown()
        self._connected = False

    @property
    def slots(self) -> int:
        """Runs the cluster can hold at once."""
        n = int(self.cpus // self.cpus_per_run)
        if self.gpus_per_run:
            n = min(n, int(self.gpus // self.gpus_per_run))
        return max(n, 0)

    def describe(self) -> str:
        gpus = f", {self.gpus:g} GPUs" if self.gpus else ""
        return (f"Ray: {self.nodes} node{'s' if self.nodes != 1 else ''}, {self.cpus:g} CPUs{gpus}; "
                f"{self.slots} runs at once ({self.cpus_per_run:g} CPU"
                + (f", {self.gpus_per_run:g} GPU" if self.gpus_per_run else "") + " each)")

    def _map(self, fn: Callable, calls: list[tuple[object, tuple]], on_done: Callable[[object, object], None]) -> None:
        """Submit `fn(*args)` for every (item, args) and hand each result to on_done(item, result)
        as it arrives; fn returns (result, worker info)."""
        ray = import_ray()
        if not self._connected:
            self.connect()
        task = ray.remote(fn).options(name=TASK_NAME, num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run,
                                      max_retries=self.max_retries, retry_exceptions=False)
        pending = {task.remote(*args): item for item, args in calls}
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    item = pending.pop(ref)
                    result, worker = self._get(ray, ref, item)
                    self.workers.append(worker)
                    on_done(item, result)
        finally:
            for ref in pending:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - best effort while unwinding
                    pass

    def _get(self, ray, ref, item):
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, SubtuneError):
                raise e.cause from None
            raise
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                ray.exceptions.ObjectLostError) as e:
            name = getattr(item, "key", item)
            raise SubtuneError(f"run {name} lost its worker {self.max_retries + 1} times ({type(e).__name__}); "
                               "what finished is kept: rerun the same command to resume") from None


class RayExecutor(RayPool):
    """Profile and greedy-selection runs (`training.profile.RunSpec`) on Ray."""

    def __init__(self, trainer: Trainer, *, address: str | None = None, cpus_per_run: float = 1,
                 gpus_per_run: float = 0, share_activations: bool = True, max_retries: int = 3):
        super().__init__(address=address, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run,
                         max_retries=max_retries)
        self.trainer, self.share_activations = trainer, share_activations
        self.shared_bytes = 0  # activations put into the object store
        self.share_seconds = 0.0  # computing and putting them
        self._ctx: tuple[str, object] | None = None  # kept across run() calls (greedy's steps)
        self._refs: dict[tuple[str, int], object] = {}

    def close(self) -> None:
        super().close()
        self._ctx, self._refs = None, {}  # object references die with the connection

    # ---------------------------------------------------------------- sharing (rule 2)

    def _needs(self, spec: RunSpec) -> list[tuple[str, int]]:
        """(split, point) activations a run reads from the cache; none without the cache."""
        from subtune.training.network import features_point

        tr, config = self.trainer, self.trainer.config
        feats = features_point(tr.backbone)
        cut = spec.blocks[0] if spec.mode == "subtune" else feats if spec.mode == "linear" else 0
        if not config.cache or cut == 0:
            return []
        splits = ["val"] + (["test"] if spec.test and "test" in tr.data else []) + \
                 (["train"] if config.cached_training else [])
        points = sorted({cut, feats} if spec.siamese else {cut})
        return [(s, p) for s in splits for p in points]

    def _share(self, specs: list[RunSpec]) -> tuple[str, object, dict[tuple[str, int], object]]:
        ray = import_ray()
        tr = self.trainer
        if self._ctx is None:
            self._ctx = (uuid.uuid4().hex, ray.put({"base": tr.base, "config": tr.config, "data": tr.data}))
        if self.share_activations:
            began = time.perf_counter()
            wanted = sorted({need for s in specs for need in self._needs(s)} - set(self._refs))
            for split, point in wanted:  # ascending points per split: each frozen block runs once
                acts = tr.stores[split].get(point)
                array = acts.data.numpy() if hasattr(acts.data, "numpy") else acts.data
                self._refs[(split, point)] = ray.put(array)
                self.shared_bytes += int(array.nbytes)
            self.share_seconds += time.perf_counter() - began
            log.info("shared %d activation arrays (%.1f MiB in all)", len(wanted), self.shared_bytes / 2**20)
        return *self._ctx, self._refs

    # ---------------------------------------------------------------- running (rules 3, 4)

    def run(self, specs: list[RunSpec], on_done: Callable[[RunSpec, dict], None]) -> None:
        if not specs:
            return
        if not self._connected:
            self.connect()
        ctx_id, ctx_ref, refs = self._share(specs)
        calls = []
        for spec in specs:
            needs = self._needs(spec) if self.share_activations else []
            calls.append((spec, (ctx_id, [ctx_ref], spec, self.threads, needs, *[refs[n] for n in needs])))
        self._map(_subtune_run, calls, on_done)


class RayMap(RayPool):
    """Any work of the same shape: `work(item) -> result` for many items, `work` a picklable
    callable holding what every item needs (put into the object store once, and kept by each
    worker process for the items it runs after the first)."""

    def __init__(self, work: Callable, **pool):
        super().__init__(**pool)
        self.work = work

    def describe(self) -> str:
        return super().describe().replace("runs at once", "items at once")

    def run(self, items: list, on_done: Callable[[object, object], None]) -> None:
        if not items:
            return
        ray = import_ray()
        if not self._connected:
            self.connect()
        ctx_id, ctx_ref = uuid.uuid4().hex, ray.put(self.work)
        self._map(_map_item, [(item, (ctx_id, [ctx_ref], item, self.threads)) for item in items], on_done)


# ---------------------------------------------------------------------- the task (on a worker)

_WORKER: dict[str, Trainer] = {}  # one trainer per worker process, rebuilt for a new profile
_WORK: dict[str, Callable] = {}  # RayMap's work, likewise


class _Preloaded:
    """An ActivationStore's `get` over activations received from the object store."""

    seconds = 0.0

    def __init__(self, held: dict):
        self.held = held

    def get(self, point: int):
        return self.held[point]


def _map_item(ctx_id: str, ctx_box: list, item, threads: int):
    import socket

    import ray
    import torch

    torch.set_num_threads(threads)
    work = _WORK.get(ctx_id)
    if work is None:
        work = ray.get(ctx_box[0])
        _WORK.clear()
        _WORK[ctx_id] = work
    began = time.perf_counter()
    result = work(item)
    return result, {"pid": os.getpid(), "host": socket.gethostname(), "seconds": round(time.perf_counter() - began, 3)}


def _subtune_run(ctx_id: str, ctx_box: list, spec: RunSpec, threads: int, needs: list, *arrays):
    import socket
    import warnings

    import ray
    import torch

    from subtune.training.cache import ActivationStore, Activations

    torch.set_num_threads(threads)
    trainer = _WORKER.get(ctx_id)
    if trainer is None:
        ctx = ray.get(ctx_box[0])
        data = ctx["data"]
        trainer = Trainer(ctx["base"], data["train"], data["val"], data.get("test"), config=ctx["config"],
                          log=logging.getLogger(__name__).info)
        _WORKER.clear()
        _WORKER[ctx_id] = trainer
    if needs:
        held: dict[str, dict] = {split: {} for split in trainer.data}
        with warnings.catch_warnings():  # object-store arrays are read-only; runs only index them
            warnings.simplefilter("ignore", UserWarning)
            for (split, point), array in zip(needs, arrays):
                held[split][point] = Activations(torch.from_numpy(array))
        trainer.stores = {split: _Preloaded(h) for split, h in held.items()}
    else:  # recompute the prefix for this run alone
        trainer.stores = {split: ActivationStore(trainer.backbone, ds, batch_size=trainer.config.eval_batch_size)
                          for split, ds in trainer.data.items()}
    began = time.perf_counter()
    result = run_one(trainer, spec)
    worker = {"pid": os.getpid(), "host": socket.gethostname(), "prefix_seconds": round(trainer.cache_seconds, 3),
              "seconds": round(time.perf_counter() - began, 3)}
    return result, worker
