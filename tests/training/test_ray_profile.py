"""The finetuning profile on Ray against the serial profile: the same numbers, resumable after a
partial or interrupted run, complete after a worker is killed mid-run, and no Ray process left
behind after Ctrl-C. One local Ray instance (2 CPUs, no dashboard) serves the module; the model
is `subtune:tiny_resnet` on real Fashion-MNIST images."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'subtune[ray]')")

from subtune.sweeps import RayExecutor, RunLog  # noqa: E402
from subtune.sweeps.ray_executor import start_local_ray  # noqa: E402
from subtune.training.greedy import greedy_select  # noqa: E402
from subtune.training.profile import RunSpec, SerialExecutor, run_profile, window_scorer  # noqa: E402
from subtune.training.sources import FASHION_MNIST_DIR  # noqa: E402

DATA = ["--data", "fashion-mnist", "--limit", "300", "--test", "--test-limit", "200", "--image-size", "32"]
TRAIN = ["--epochs", "3", "--batch-size", "32", "--lr", "0.003"]
TIMING = ("seconds", "eval_seconds")


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    if not os.path.isfile(os.path.join(FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte.gz")):
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    # a small object store: the runs pass kilobytes
    start_local_ray(ray, num_cpus=2, object_store_memory=256 * 2**20, include_dashboard=False, log_to_driver=False,
                    logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def base_path(tmp_path_factory):
    """tiny_resnet with random weights whose BatchNorm statistics are measured on Fashion-MNIST,
    so its features carry information and the runs' accuracies differ from each other."""
    import torch

    from subtune.formats import save_base
    from subtune.models import make_base
    from subtune.models.tiny import TinyResNet
    from subtune.training.data import load_dataset

    torch.manual_seed(0)
    model = TinyResNet()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # a plain average over the batches below
            m.reset_running_stats()
    images = load_dataset("fashion-mnist", "test", image_size=32, mean=[0.5] * 3, std=[0.25] * 3, limit=256)
    model.train()
    with torch.no_grad():
        for lo in range(0, len(images), 128):
            model(images.batch(range(lo, lo + 128)))
    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    save_base(path, make_base("subtune:tiny_resnet", {}, weights=model.state_dict()))
    return str(path)


@pytest.fixture(scope="module")
def trainer(base_path):
    """The data exactly as `subtune profile` loads it for DATA and TRAIN."""
    from subtune.cli import build_parser
    from subtune.commands.training_flags import data_options, training_options
    from subtune.formats import load_base
    from subtune.training.trainer import Trainer

    args = build_parser(["profile"]).parse_args(["profile", base_path, *DATA, *TRAIN, "-o", "unused.json"])
    base = load_base(base_path)
    data = data_options(args).check()
    train, val, test = data.load_splits(args.data, base)
    return Trainer(base, train, val, test, config=training_options(args).check().config(len(train)))


@pytest.fixture(scope="module")
def serial(trainer):
    """The reference: every window and both baselines, serially, one torch thread."""
    return run_profile(trainer, baselines=True)


def numbers(prof) -> list[list[dict]]:
    """Every run's results, timings left out, in profile order (a Profile or its JSON)."""
    data = prof if isinstance(prof, dict) else {"entries": prof.entries, "baselines": prof.baselines}
    rows = data["entries"] + [data["baselines"][k] for k in sorted(data["baselines"])]
    return [[{k: v for k, v in r.items() if k not in TIMING} for r in row["runs"]] for row in rows]


def test_ray_profile_equals_serial_bit_for_bit(trainer, serial):
    accs = [e["accuracy"] for e in serial.entries]
    assert len(set(accs)) > 3 and max(accs) > 0.3  # the comparison is between runs that learned something
    with RayExecutor(trainer, cpus_per_run=1) as ex:
        prof = run_profile(trainer, baselines=True, executor=ex)
        assert ex.nodes == 1 and ex.cpus == 2 and ex.slots == 2
    assert numbers(prof) == numbers(serial)  # accuracies and training losses, exactly
    assert prof.best["blocks"] == serial.best["blocks"]
    # the prefix came from the object store: no worker ran a frozen block, all ran elsewhere
    assert len(ex.workers) == 10 and all(w["prefix_seconds"] == 0 for w in ex.workers)
    assert ex.shared_bytes > 0 and os.getpid() not in {w["pid"] for w in ex.workers}


def test_without_sharing_each_run_computes_its_prefix_with_the_same_result(trainer, serial):
    with RayExecutor(trainer, share_activations=False) as ex:
        got = {}
        ex.run([RunSpec("subtune", (7,), 0), RunSpec("linear", (), 0)], lambda s, r: got.__setitem__(s.group, r))
    assert ex.shared_bytes == 0 and all(w["prefix_seconds"] > 0 for w in ex.workers)
    want = {"7": serial.entries[6]["runs"][0], "linear": serial.baselines["linear"]["runs"][0]}
    for group, result in got.items():
        assert {k: v for k, v in result.items() if k not in TIMING} == \
               {k: v for k, v in want[group].items() if k not in TIMING}


def test_greedy_selection_on_ray_takes_the_serial_path(trainer, serial):
    kw = dict(epsilon=0.0, max_blocks=2, start_score=serial.baselines["linear"]["accuracy"])  # 8 + 2 runs
    # the serial path's single blocks are the serial profile's runs (validation is all they are scored by)
    singles = {RunSpec("subtune", (e["blocks"][0],), 0, test=False).key: e["runs"][0] for e in serial.entries}
    want = greedy_select(None, 8, score_many=window_scorer(SerialExecutor(trainer), seeds=[0], done=singles), **kw)
    with RayExecutor(trainer) as ex:
        done: dict = {}
        got = greedy_select(None, 8, score_many=window_scorer(ex, seeds=[0], done=done), **kw)
    assert got.to_json() == want.to_json() and len(got.steps) == 2 and len(done) == 10
    # the single-block scores are the profile's validation accuracies
    assert [s for _, s in got.steps[0].candidates] == [e["accuracy"] for e in serial.entries]


def test_interrupted_profile_keeps_finished_runs_and_resumes(tmp_path, trainer, serial):
    log = RunLog(tmp_path / "runs", {"test": 1})
    saved = []
    part = dict(starts=[6, 7, 8], baselines=True)  # 5 runs

    def save_then_interrupt(spec, result):
        log.save(spec, result)
        saved.append(spec.key)
        if len(saved) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: the executor's handler only notes it

    handler = signal.getsignal(signal.SIGINT)
    with RayExecutor(trainer) as ex, pytest.raises(KeyboardInterrupt):
        run_profile(trainer, executor=ex, on_run=save_then_interrupt, **part)
    assert ex.interrupted and signal.getsignal(signal.SIGINT) is handler  # the caller's handler is back
    done = log.load()
    assert sorted(done) == sorted(saved) and len(done) == 2
    assert RunLog(tmp_path / "runs", {"test": 2}).load() == {}  # other settings: nothing reused

    ran = []
    with RayExecutor(trainer) as ex:
        prof = run_profile(trainer, executor=ex, done=done, on_run=lambda s, r: (log.save(s, r), ran.append(s.key)),
                           **part)
    assert len(ran) == 3 and not set(ran) & set(saved) and prof.resumed == 2
    assert numbers(prof) == numbers(serial)[5:] and len(log.load()) == 5


def test_cli_profile_on_ray_resumes_a_partial_run(tmp_path, capsys, base_path, serial):
    from subtune.cli import main

    out = tmp_path / "profile.json"
    assert main(["profile", base_path, *DATA, *TRAIN, "--baselines", "--starts", "1-3", "--ray", "-o", str(out)]) == 0
    assert len(list((tmp_path / "profile.runs").glob("*.json"))) == 5  # 3 windows, 2 baselines
    capsys.readouterr()
    assert main(["profile", base_path, *DATA, *TRAIN, "--baselines", "--ray", "-o", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "10 runs; 5 already finished" in stdout and "Ray: 1 node, 2 CPUs" in stdout
    data = json.loads(out.read_text())
    assert numbers(data) == numbers(serial) and data["resumed_runs"] == 5
    assert (tmp_path / "profile.png").read_bytes()[:4] == b"\x89PNG"


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        kids.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return kids


def _descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        for kid in _children(todo.pop()):
            if kid not in found:
                found.add(kid)
                todo.append(kid)
    return found


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_killed_worker_costs_a_retry_not_the_profile(trainer, serial):
    """Kill, by PID, a worker of this test's Ray instance while it trains a run."""
    killed: list[int] = []
    stop = threading.Event()

    def killer():
        deadline = time.monotonic() + 120
        while not stop.is_set() and time.monotonic() < deadline:
            for pid in _descendants(os.getpid()):
                if _cmdline(pid).startswith("ray::subtune_run"):  # the process title while a run trains
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            time.sleep(0.01)

    thread = threading.Thread(target=killer, daemon=True)
    with RayExecutor(trainer, max_retries=3) as ex:
        thread.start()
        try:
            prof = run_profile(trainer, starts=[5, 6, 7, 8], baselines=True, executor=ex)
        finally:
            stop.set()
            thread.join(10)
    assert killed, "no worker was seen training"
    assert killed[0] not in {w["pid"] for w in ex.workers}  # its run finished on another worker
    assert numbers(prof) == numbers(serial)[4:]  # every window present, the rerun gave the same numbers


def test_ctrl_c_keeps_finished_runs_and_leaves_no_ray_process(tmp_path, base_path, serial):
    """`subtune profile --ray` (its own local Ray instance) interrupted as a terminal's Ctrl-C does:
    SIGINT to its whole process group, the moment the first run is on disk (other runs are then
    finishing and being dispatched: with the earlier `ray.cancel(force=True)` this is where Ray's
    core worker aborted the command). Exit status 130, one line saying how to resume, the
    finished runs on disk, no process of that Ray instance left (by PID); rerunning the command
    completes the profile with the serial numbers."""
    out, runs = tmp_path / "p.json", tmp_path / "p.runs"
    command = ["profile", base_path, *DATA, *TRAIN, "--starts", "5-8", "--ray", "-o", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "subtune.cli", *command],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and proc.poll() is None and not list(runs.glob("*.json")):
            seen |= _descendants(proc.pid)
            time.sleep(0.1)
        seen |= _descendants(proc.pid)
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        assert list(runs.glob("*.json")), "no run finished in time"
        os.killpg(proc.pid, signal.SIGINT)  # the command is its group's leader (start_new_session)
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    err = err.decode()
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("subtune profile: interrupted; ") and \
        err.strip().splitlines()[-1].endswith("rerun the same command to resume"), err[-2000:]
    assert "Traceback" not in err and "Check failed" not in err
    finished = sorted(p.stem for p in runs.glob("*.json"))
    assert 1 <= len(finished) < 4 and not out.exists()
    assert f"{len(finished)} of 4 runs are saved in {runs}" in err
    assert len(seen) >= 3  # at least the GCS server, the raylet and a worker
    deadline = time.monotonic() + 20  # the command has already stopped them: this only absorbs /proc lag
    while time.monotonic() < deadline and [p for p in seen if _alive(p)]:
        time.sleep(0.2)
    assert not [(p, _cmdline(p)) for p in seen if _alive(p)]

    # the same command again (here, on this module's Ray instance) runs only what is missing
    from subtune.cli import main

    assert main(command) == 0
    data = json.loads(out.read_text())
    assert data["resumed_runs"] == len(finished) and len(list(runs.glob("*.json"))) == 4
    assert numbers(data) == numbers(serial)[4:8]  # windows 5-8, the serial profile's numbers


def test_pruning_sweep_on_ray_equals_serial(trainer):
    """The sweep's points (prune, recover, evaluate) as Ray tasks: the same points as serially."""
    from dataclasses import asdict

    from subtune.sweeps import RayMap
    from subtune.pruning.recover import CachedData
    from subtune.pruning.sweep import run_sweep
    from subtune.synthetic import synthetic_task
    from subtune.training.trainer import TrainConfig

    base, bb = trainer.base, trainer.backbone
    task = synthetic_task(base, "t", [7, 8], seed=1, backbone=bb)
    train, test = (CachedData(bb, 7, trainer.data[s].images, trainer.data[s].labels) for s in ("train", "test"))
    kw = dict(train=train, config=TrainConfig(epochs=2, batch_size=32), ratios=(0.3, 0.6), scopes=("local",),
              norms=("l1", "l2"), input_size=(32, 32))
    want = run_sweep(task, base, bb, test, **kw)
    pools = []

    def ray_pool(work):
        pools.append(RayMap(work))
        return pools[-1]

    got = run_sweep(task, base, bb, test, executor=ray_pool, **kw)
    assert [asdict(p) for p in got.points] == [asdict(p) for p in want.points]
    assert all(p.error is None and p.accuracy != p.accuracy_pruned for p in got.points)  # recovery ran
    assert len(pools[0].workers) == 4 and os.getpid() not in {w["pid"] for w in pools[0].workers}


def test_cli_train_blocks_auto_on_ray_writes_the_serial_task(tmp_path, capsys, base_path):
    """`subtune train --blocks auto --ray`: the same selection and the same weights as serially."""
    import torch

    from subtune.cli import main
    args = [base_path, *DATA, *TRAIN, "--blocks", "auto", "--max-blocks", "2", "--epsilon", "0"]
    assert main(["train", *args, "--torch-threads", "1", "-o", str(tmp_path / "serial.pt")]) == 0
    assert main(["train", *args, "--ray", "-o", str(tmp_path / "ray.pt")]) == 0
    assert "Ray: 1 node, 2 CPUs" in capsys.readouterr().out
    a, b = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in ("serial", "ray"))
    assert a["blocks"] == b["blocks"] and a["meta"]["selection"] == b["meta"]["selection"]
    for block, state in a["block_state"].items():
        assert all(torch.equal(v, b["block_state"][block][k]) for k, v in state.items())
    assert all(torch.equal(torch.as_tensor(v), torch.as_tensor(b["head"][k])) for k, v in a["head"].items())
