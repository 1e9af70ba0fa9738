"""Head2Toe and LoRA (issue 14): feature selection, the LoRA merge, training through the CLI, and
the trained tasks compiled with the other kinds into one verified graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from subtune.cli import main
from subtune.formats import load_task

from .conftest import SIZE

TRAIN = ["--image-size", str(SIZE), "--epochs", "2", "--batch-size", "8"]


# ---------------------------------------------------------------------- Head2Toe selection


def _planted(seed: int = 0, n: int = 600, d: int = 40, informative: int = 17):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x[:, informative] > 0).long()
    return x, y


def test_group_lasso_ranks_a_planted_informative_feature_first():
    from subtune.training.head2toe import group_lasso_importance

    x, y = _planted()
    imp = group_lasso_importance(x, y, 2)
    assert imp.shape == (40,)
    assert int(imp.argmax()) == 17
    others = torch.cat([imp[:17], imp[18:]])
    assert float(imp[17]) > 3 * float(others.max())  # not a near tie


def test_selection_is_stable_for_a_seed():  # the fit is deterministic: no seed to depend on
    from subtune.training.head2toe import group_lasso_importance, select_top

    g = torch.Generator().manual_seed(1)
    x = torch.randn(500, 60, generator=g)
    y = ((x[:, 3] + x[:, 30] - x[:, 44]) > 0).long() + (x[:, 12] > 1).long()
    picks = [select_top(group_lasso_importance(x, y, 3, strength=0.02), 8) for _ in range(2)]
    assert torch.equal(picks[0], picks[1])
    assert picks[0].tolist() == sorted(picks[0].tolist()) and len(set(picks[0].tolist())) == 8
    assert {3, 30, 44, 12} <= set(picks[0].tolist())


def test_select_top_ties_go_to_the_lower_index_and_budget_caps():
    from subtune.training.head2toe import drop_unused_taps, select_top

    imp = torch.tensor([0.5, 2.0, 0.5, 1.0, 0.5])
    assert select_top(imp, 3).tolist() == [0, 1, 3]
    assert select_top(imp, 99).tolist() == [0, 1, 2, 3, 4]
    specs = [{"point": 1, "dim": 2}, {"point": 4, "dim": 3}, {"point": 9, "dim": 2}]
    kept, renum = drop_unused_taps(specs, torch.tensor([1, 5, 6]))
    assert [s["point"] for s in kept] == [1, 9] and renum.tolist() == [1, 2, 3]


# ---------------------------------------------------------------------- LoRA merge


@pytest.fixture(scope="module")
def tiny():
    from subtune.models import make_base

    return make_base("subtune:tiny_resnet", {"num_classes": 5}, seed=0)


def test_lora_merge_reproduces_the_unmerged_adapters(tiny):
    pytest.importorskip("peft")
    from subtune.training.lora import LoRANet
    from subtune.training.network import SubTuneNet, freeze

    _, bb = tiny.build()
    bb = freeze(bb)
    net = LoRANet(bb, [5, 6, 7], 4, rank=3, alpha=6.0, seed=0)
    assert net.targets == ["0.conv1", "0.conv2", "0.downsample.0", "1.conv1", "1.conv2", "2.conv1", "2.conv2",
                           "2.downsample.0"]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # B starts at zero: give the adapters something to merge
        for name, p in net.tuned.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    merged = SubTuneNet(bb, [5, 6, 7], 4)
    merged.tuned = torch.nn.ModuleList(net.merged_blocks())
    merged.head.load_state_dict(net.head.state_dict())
    assert all(set(m.state_dict()) == set(bb.blocks[b - 1].state_dict()) for b, m in zip([5, 6, 7], merged.tuned))
    images = torch.randn(6, 3, SIZE, SIZE, generator=g)
    with torch.no_grad():
        unmerged_out, merged_out = net.eval()(images), merged.eval()(images)
        base_out = SubTuneNet(bb, [5, 6, 7], 4)
        base_out.head.load_state_dict(net.head.state_dict())
        base_out = base_out.eval()(images)
    assert (unmerged_out - base_out).abs().max() > 1e-3  # the adapters do change the output
    assert (merged_out - unmerged_out).abs().max() <= 1e-5


# ---------------------------------------------------------------------- train -> compile


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory, tiny):
    from subtune.formats import save_base

    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    save_base(path, tiny)
    return str(path)


@pytest.fixture(scope="module")
def method_tasks(tmp_path_factory, tiny_path, folder):
    """Head2Toe, linear probe, LoRA on all blocks and LoRA on 7-8, trained through the CLI."""
    pytest.importorskip("peft")
    d = tmp_path_factory.mktemp("methods")
    data = [tiny_path, "--data", f"imagefolder:{folder}", *TRAIN, "--test"]
    runs = {"h2t": ["--mode", "head2toe", "--feature-budget", "16,48", "--epochs", "3"],
            "probe": ["--mode", "linear"],
            "lora_all": ["--mode", "lora", "--lora-rank", "2"],
            "lora78": ["--mode", "lora", "--lora-rank", "4", "--lora-alpha", "8", "--blocks", "7-8"]}
    for name, extra in runs.items():
        assert main(["train", *data, *extra, "-o", str(d / f"{name}.pt")]) == 0, name
    return {name: load_task(d / f"{name}.pt") for name in runs}


def test_trained_tasks_record_method_and_hyper_parameters(method_tasks):
    h2t, probe, lora_all, lora78 = (method_tasks[k] for k in ("h2t", "probe", "lora_all", "lora78"))
    assert h2t.kind == "tap" and h2t.meta["method"] == "head2toe" and h2t.blocks == []
    info = h2t.meta["head2toe"]
    assert info["budget"] in (16, 48) and [b["budget"] for b in info["budgets"]] == [16, 48]
    assert info["selected"] == h2t.head["weight"].shape[1] == len(h2t.taps["select"])
    assert h2t.tap_points == info["taps_kept"] and set(h2t.tap_points) <= set(range(1, 11))
    assert probe.kind == "tap" and probe.tap_points == [10]
    assert lora_all.kind == "delta" and lora_all.blocks == list(range(1, 9)) and lora_all.meta["method"] == "lora"
    assert lora_all.meta["lora"]["rank"] == 2 and lora_all.meta["lora"]["alpha"] == 2.0
    assert lora78.blocks == [7, 8] and lora78.meta["lora"]["scaling"] == 2.0
    assert lora78.meta["params"] == lora78.meta["lora"]["adapter_params"] + 3 * 64 + 3


def _compiled(base, tasks, **kw):
    from subtune.compiler.pipeline import CompileOptions, compile_plan
    from subtune.compiler.plan import Plan

    return compile_plan(Plan(base, list(tasks)), CompileOptions(**kw))


def _run_onnx(plan, images):
    from subtune.compiler.pipeline import serialize
    from subtune.runtimes.onnxruntime import session_from_bytes

    return session_from_bytes(serialize(plan)).run(plan.output_names, {"images": images.numpy()})


def test_head2toe_compiles_without_a_fork_and_matches_its_trained_net(tiny, method_tasks, splits):
    from subtune.compiler.schedule import Fork
    from subtune.training.network import SubTuneNet, freeze

    h2t, probe = method_tasks["h2t"], method_tasks["probe"]
    plan = _compiled(tiny, [h2t, probe])  # verifies at batch 1 and 5 against each task alone
    assert not [s for s in plan.schedule.steps if isinstance(s, Fork)]
    nodes = [n.name for n in plan.onnx.graph]
    assert not [n for n in nodes if "fork" in n or "merge" in n], nodes
    checks = plan.report["verification"]["checks"]
    assert {(c["batch"], c["output"]) for c in checks} == {(b, o) for b in (1, 5) for o in ("base", "h2t", "probe")}
    assert not any(n.op_type == "Conv" for n in plan.onnx.graph if "tasks." in (n.name or ""))
    images = torch.cat([s.images for s in splits])
    base_out, h2t_out, probe_out = _run_onnx(plan, images)
    model, bb = tiny.build()
    with torch.no_grad():
        assert np.abs(base_out - model(images).numpy()).max() <= 1e-5  # the base output is untouched
        want = SubTuneNet.from_task(freeze(bb), h2t)(images).numpy()
    assert np.abs(h2t_out - want).max() <= 1e-4 * np.abs(want).max()


def test_lora_tasks_compile_merged_and_a_mixed_graph_verifies(tiny, method_tasks):
    from subtune.synthetic import synthetic_task

    _, bb = tiny.build()
    sub = synthetic_task(tiny, "sub", [4, 5], seed=3, backbone=bb)
    tasks = [method_tasks[k] for k in ("lora_all", "h2t", "lora78", "probe")] + [sub]
    plan = _compiled(tiny, tasks)
    assert "fork lora_all" not in str(plan.report["schedule"])  # indices, not names, in the description
    assert "fork task0 before block 1" in plan.report["schedule"]  # LoRA on every block forks at block 1
    assert "fork task2 before block 7" in plan.report["schedule"]
    worst = max(c["relative_error"] for c in plan.report["verification"]["checks"])
    assert worst <= 1e-4
    assert {c["batch"] for c in plan.report["verification"]["checks"]} == {1, 5}


def test_bad_method_flags_are_one_line_and_leave_no_file(tmp_path, capsys, tiny_path, folder):
    data = [tiny_path, "--data", f"imagefolder:{folder}", *TRAIN]
    for extra, message in ((["--mode", "lora", "--lora-rank", "0"], "--lora-rank must be at least 1"),
                           (["--mode", "head2toe", "--feature-budget", "x"], "--feature-budget 'x'"),
                           (["--mode", "lora", "--blocks", "auto"], "--blocks auto (greedy selection) is SubTuning's")):
        out = tmp_path / "t.pt"
        assert main(["train", *data, *extra, "-o", str(out)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
        assert not out.exists()


# ---------------------------------------------------------------------- accuracy vs added latency


def test_tradeoff_reads_methods_results_and_times_tap_tasks(tiny, tmp_path):
    """`subtune-bench --profile` over bench/methods.py's results: taps and windows side by side."""
    import json

    from subtune.benchmarking.harness import Protocol
    from subtune.benchmarking.tradeoff import load_profile, measure_tradeoff
    from subtune.benchmarking.variants import RuntimeSpec

    results = {"protocol": {"arch": tiny.arch}, "methods": {
        "linear": {"accuracy": 0.70, "blocks": []},
        "head2toe": {"accuracy": 0.74, "blocks": [], "method": {"method": "head2toe", "taps_kept": [1, 5, 10],
                                                                "grid": 2, "selected": 20}},
        "subtune": {"accuracy": 0.80, "blocks": [7, 7]},
        "lora_all": {"accuracy": 0.81, "blocks": [1, 8]},
        "full": {"accuracy": 0.83, "blocks": [1, 8]}}}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    entries = load_profile(path, arch=tiny.arch)
    assert [e.label for e in entries] == ["linear", "head2toe", "subtune (7)", "lora_all (1-8)"]  # full: not a task
    result = measure_tradeoff(tiny, entries, batch=2, protocol=Protocol(1, 2, 1), runtime=RuntimeSpec("torch"),
                              threads=1, input_size=(SIZE, SIZE), budget_ms=1e6, show_progress=False)
    assert [p.label for p in result.points] == [e.label for e in entries]
    assert result.chosen is not None and result.chosen.label == "lora_all (1-8)"  # the most accurate within budget
    with pytest.raises(Exception, match="made for"):
        load_profile(path, arch="subtune:other")
