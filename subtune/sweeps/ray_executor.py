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
4. Results arrive in completion order and go to `on_done` at once (to be written to disk). At
   most as many tasks as the cluster can run at once are submitted; the next one when one ends.
5. Stopping (Ctrl-C, an error, a run that raises): nothing more is submitted and the pool is
   left from the main thread, never from a signal handler. While the pool is open, SIGINT only
   sets a flag (Ray's own calls are never interrupted half-way); the loop sees it within
   `POLL_SECONDS` and raises KeyboardInterrupt from subtune's code. A local instance we started
   is then shut down with every process it started (checked by PID, stragglers killed); a
   cluster we joined is disconnected from, which ends our job and its tasks. Tasks are not
   force-cancelled: `ray.cancel(force=True)` racing a task that is just finishing aborts the
   driver inside Ray (Ray 2.60: `Check failed: ... Tried to complete task that was not
   pending` from `NormalTaskSubmitter::PushNormalTask`'s reply). Only on a connection the
   caller made (and keeps) are the pending tasks cancelled, without force (a KeyboardInterrupt
   inside each task), and waited for a few seconds.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
from typing import Callable

from subtune.errors import SubtuneError
from subtune.training.profile import RunSpec, run_one
from subtune.training.trainer import Trainer

log = logging.getLogger(__name__)
TASK_NAME = "subtune_run"  # the worker's process title while it trains: `ray::subtune_run`
POLL_SECONDS = 0.25  # how often the submit-wait loop looks at the interrupt flag
SETTLE_SECONDS = 10.0  # bound on waiting for cancelled tasks, and for a local instance's processes to exit


def import_ray():
    try:
        import ray
    except ImportError:
        raise SubtuneError("`ray` needs Ray: pip install 'subtune[ray]' (or pip install ray)") from None
    return ray


class RayPool:
    """The connection (rule 1), the submit-wait loop (rules 3, 4) and stopping (rule 5) that
    every kind of work shares."""

    def __init__(self, *, address: str | None = None, cpus_per_run: float = 1, gpus_per_run: float = 0,
                 max_retries: int = 3):
        if cpus_per_run <= 0 or gpus_per_run < 0:
            raise SubtuneError("`cpus_per_run` must be positive and `gpus_per_run` non-negative")
        self.address, self.cpus_per_run, self.gpus_per_run = address, cpus_per_run, gpus_per_run
        self.max_retries = max_retries
        self.threads = max(1, int(cpus_per_run))
        self._connected = self._owns_connection = self._local = False
        self.nodes, self.cpus, self.gpus = 0, 0.0, 0.0
        self.workers: list[dict] = []  # per finished run: pid, host, seconds (and what the work adds)
        self.interrupted = False  # a SIGINT arrived while the pool was open
        self._delivered = False  # ... and was raised as KeyboardInterrupt
        self._previous_sigint = None  # the handler to restore; None while ours is not installed
        self._closing = False  # shutting down: further Ctrl-Cs are ignored until it is done

    # ---------------------------------------------------------------- connection (rule 1)

    def __enter__(self) -> "RayPool":
        self.connect()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        undelivered = self.interrupted and not self._delivered
        self.close()
        if undelivered and exc_type is None:
            raise KeyboardInterrupt  # a Ctrl-C after the last run is not lost

    # ---------------------------------------------------------------- Ctrl-C (rule 5)

    def _guard_sigint(self) -> None:
        """While the pool is open, SIGINT sets `interrupted` instead of raising inside Ray's calls
        (main thread only: elsewhere Python delivers no signals anyway)."""
        if self._previous_sigint is not None or threading.current_thread() is not threading.main_thread():
            return

        def on_sigint(signum, frame):
            if self.interrupted and not self._closing:  # a second Ctrl-C before we stop: at once
                raise KeyboardInterrupt
            self.interrupted = True
            log.info("interrupted: stopping the Ray runs")

        self.interrupted = self._delivered = False
        self._previous_sigint = signal.signal(signal.SIGINT, on_sigint)

    def _release_sigint(self) -> None:
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def _check_interrupt(self) -> None:
        if self.interrupted:
            self._delivered = True
            raise KeyboardInterrupt

    def connect(self) -> None:
        if self._connected:
            return
        ray = import_ray()
        self._guard_sigint()  # before ray.init: a Ctrl-C while it starts processes must not leave them behind
        try:
            self._connect(ray)
            self._check_interrupt()
        except BaseException:
            self.close()
            raise
        if not self._owns_connection:
            self._release_sigint()  # nothing of ours to protect between runs; _map guards its own loop

    def _connect(self, ray) -> None:
        if ray.is_initialized():
            self._owns_connection = False
        else:
            kwargs = dict(include_dashboard=False, logging_level=logging.WARNING, configure_logging=True)
            try:
                if self.address is None:
                    start_local_ray(ray, **kwargs)
                else:
                    ray.init(address=self.address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as e:
                where = "a local Ray instance" if self.address is None else f"the Ray cluster at {self.address!r}"
                raise SubtuneError(f"cannot start or reach {where}: {str(e).splitlines()[0]}; for a cluster, "
                                   "run `ray start --head` on its head node and pass `ray` auto or HOST:6379"
                                   ) from None
            self._owns_connection = True
            self._local = self.address is None
        self._connected = True
        resources = ray.cluster_resources()
        self.cpus, self.gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
        self.nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        biggest = max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=0.0)
        if self.cpus_per_run > biggest:
            raise SubtuneError(f"`cpus_per_run` {self.cpus_per_run:g}: the largest node has {biggest:g} CPUs; "
                               "lower it so a run fits on one node")
        if self.gpus_per_run > 0 and not any(n["Resources"].get("GPU", 0.0) >= self.gpus_per_run
                                             for n in ray.nodes() if n.get("Alive")):
            raise SubtuneError(f"`gpus_per_run` {self.gpus_per_run:g}: no node of the cluster has that many GPUs "
                               f"({self.gpus:g} in all); lower it or add GPU nodes")

    def close(self) -> None:
        """Disconnect; a local instance we started stops with every process it started. Safe to
        call twice; restores the SIGINT handler."""
        self._closing = True
        try:
            if self._connected and self._owns_connection:
                import ray

                pids = _local_ray_pids(ray) if self._local else []
                ray.shutdown()
                if pids:
                    _reap(pids, SETTLE_SECONDS)
        finally:
            self._connected = self._owns_connection = self._local = self._closing = False
            self._release_sigint()

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
        """Submit `fn(*args)` for every (item, args), at most `slots` at a time, and hand each
        result to on_done(item, result) as it arrives; fn returns (result, worker info)."""
        ray = import_ray()
        if not self._connected:
            self.connect()
        guarded_here = self._previous_sigint is None  # a pool on the caller's connection: for this loop only
        self._guard_sigint()
        self._check_interrupt()
        task = ray.remote(fn).options(name=TASK_NAME, num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run,
                                      max_retries=self.max_retries, retry_exceptions=False)
        todo = list(reversed(calls))
        pending: dict = {}
        try:
            while todo or pending:
                while todo and len(pending) < max(1, self.slots) and not self.interrupted:
                    item, args = todo.pop()
                    pending[task.remote(*args)] = item
                self._check_interrupt()
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_SECONDS)
                for ref in ready:
                    item = pending.pop(ref)
                    result, worker = self._get(ray, ref, item)
                    self.workers.append(worker)
                    on_done(item, result)
                self._check_interrupt()
        finally:
            if pending and not self._owns_connection:
                self._closing = True
                try:
                    self._cancel(ray, list(pending))
                finally:
                    self._closing = False
            if guarded_here:
                self._release_sigint()

    def _cancel(self, ray, refs: list) -> None:
        """Stop tasks on a connection the caller keeps: without force (see rule 5), then wait a
        bounded time for them to end so that their CPUs are free again."""
        for ref in refs:
            try:
                ray.cancel(ref, force=False)
            except Exception:  # noqa: BLE001 - best effort while unwinding
                pass
        try:
            ray.wait(refs, num_returns=len(refs), timeout=SETTLE_SECONDS)
        except Exception:  # noqa: BLE001
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


RAY_START_TRIES = 2
STARTUP_TIMEOUT = "timed out during startup"  # Ray's words when its raylet misses its fixed 30 s to register


def start_local_ray(ray, **kwargs) -> None:
    """`ray.init(address="local", **kwargs)`: a new instance on this machine, even where a `ray
    start` left its address in /tmp/ray (plain ray.init() would join that cluster, or fail on a
    stale one). Ray gives the raylet a fixed 30 s to register with its GCS; a fresh CI machine once
    missed it. Such a start is tried once more after the processes it left are stopped; a second
    one raises SubtuneError in one line with the end of the raylet's log."""
    for attempt in range(1, RAY_START_TRIES + 1):
        try:
            ray.init(address="local", **kwargs)
            return
        except Exception as e:  # noqa: BLE001 - Ray raises a bare Exception for the startup timeout
            if STARTUP_TIMEOUT not in str(e):
                raise
            tail = _raylet_log_tail()
            try:
                ray.shutdown()
            except Exception:  # noqa: BLE001 - nothing was connected; the processes are reaped below
                pass
            _reap(_ray_children(), SETTLE_SECONDS)
            if attempt == RAY_START_TRIES:
                raise SubtuneError(f"a local Ray instance did not start in {RAY_START_TRIES} tries: its raylet did not "
                                   f"register within Ray's 30 s (the raylet's log ends: {tail}); check free memory "
                                   "and /tmp/ray, or run without --ray") from None
            log.warning("a local Ray instance did not start (its raylet did not register within Ray's 30 s; the "
                        "raylet's log ends: %s): trying once more", tail)


def _raylet_log_tail(limit: int = 200) -> str:
    path = os.path.join(os.environ.get("RAY_TMPDIR", "/tmp"), "ray", "session_latest", "logs", "raylet.out")
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f.read().splitlines() if line.strip()]
    except OSError:
        return "no raylet log: the raylet was not started"
    return lines[-1][-limit:] if lines else "an empty raylet log"


def _ray_children() -> list[int]:
    """This process's descendants that are Ray's (GCS server, raylet, agents) after a failed start."""
    import psutil

    pids = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "ray" in " ".join(child.cmdline()):
                pids.append(child.pid)
        except psutil.Error:
            pass
    return pids


def _local_ray_pids(ray) -> list[int]:
    """The processes of the local instance this process started (GCS server, raylet, agents,
    workers): the node's own processes and all their descendants."""
    try:
        import psutil

        node = ray._private.worker._global_node  # only Ray knows which processes it started
        roots = [info.process.pid for infos in node.all_processes.values() for info in infos]
    except Exception:  # noqa: BLE001 - without them, ray.shutdown() alone
        return []
    pids = set(roots)
    for pid in roots:
        try:
            pids.update(p.pid for p in psutil.Process(pid).children(recursive=True))
        except psutil.Error:
            pass
    pids.discard(os.getpid())
    return sorted(pids)


def _reap(pids: list[int], timeout: float) -> None:
    """Wait (bounded) for these processes to exit; kill what is left, by PID."""
    import psutil

    def running(procs):
        left = []
        for p in procs:
            try:
                # not the same process any more (PID reused), or a zombie (exited; its parent reaps it)
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    left.append(p)
            except psutil.Error:
                pass
        return left

    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))  # remembers the start time: a reused PID is not ours
        except psutil.Error:
            pass
    deadline = time.monotonic() + timeout
    while (procs := running(procs)) and time.monotonic() < deadline:
        time.sleep(0.05)
    for p in procs:
        try:
            log.warning("Ray process %d (%s) still running %.0f s after shutdown: killing it", p.pid, p.name(),
                        timeout)
            p.kill()
        except psutil.Error:
            pass
    deadline = time.monotonic() + 2
    while (procs := running(procs)) and time.monotonic() < deadline:
        time.sleep(0.05)


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
                self._check_interrupt()  # Ctrl-C while the driver computes the prefix
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
