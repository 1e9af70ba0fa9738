"""Running many training runs: where they run and what is already done.

Above `training` (which defines the unit of work, `training.profile.RunSpec` -> `run_one`) and
below `commands`:

    runlog.py        RunLog: a folder with one JSON file per finished run, written atomically as
                     each run finishes, so an interrupted profile resumes where it stopped.
    ray_executor.py  RayExecutor: each run a Ray task with declared CPUs/GPUs, the frozen
                     prefix's activations computed once and shared through the object store,
                     lost workers retried. RayMap: the same for any `work(item)` (the pruning
                     sweep's points). Ray is imported only when it is used.

The serial executor lives beside the unit of work (`training.profile.SerialExecutor`); both
executors call the same `run_one`.
"""

from subtune.sweeps.runlog import RunLog

__all__ = ["RunLog", "RayExecutor", "RayMap"]


def __getattr__(name: str):
    if name in ("RayExecutor", "RayMap"):  # keeps `import subtune.sweeps` free of Ray
        from subtune.sweeps import ray_executor

        return getattr(ray_executor, name)
    raise AttributeError(name)
