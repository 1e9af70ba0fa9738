"""`subtune train / profile / select` end to end on a tiny folder and ResNet-18 at 32px, including
the acceptance check that a trained task compiles and the ONNX agrees with the PyTorch model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from subtune.cli import main
from subtune.formats import BASE_FORMAT, load_base, load_dict, load_task

from .conftest import SIZE, write_image

TRAIN = ["--image-size", str(SIZE), "--epochs", "2", "--batch-size", "8"]


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def trained(tmp_path_factory, base_path, folder):
    """One task trained through the CLI, shared by the checks below."""
    out = tmp_path_factory.mktemp("trained") / "colours.pt"
    code = main(["train", base_path, "--data", f"imagefolder:{folder}", "--blocks", "layer2", "--test",
                 *TRAIN, "-o", str(out)])
    assert code == 0
    return out


def test_train_writes_task_with_meta_and_report(trained, folder):
    task = load_task(trained)
    assert task.name == "colours" and task.blocks == [3, 4] and task.classes == ["blue", "green", "red"]
    meta = task.meta
    assert meta["mode"] == "subtune" and 0 <= meta["val_accuracy"] <= 1 and "test_accuracy" in meta
    assert meta["preprocess"] == {"image_size": [SIZE, SIZE], "mean": [0.485, 0.456, 0.406],
                                  "std": [0.229, 0.224, 0.225], "channels": 3}
    t = meta["training"]
    assert (t["epochs"], t["lr"], t["weight_decay"], t["batch_size"], t["optimizer"]) == (2, 1e-3, 0.01, 8, "AdamW")
    assert t["cached_activations"] is True and t["tuned_bn_statistics"] == "updated"
    assert meta["data"]["train"]["images"] == 24 and meta["data"]["val"]["source_split"] == "val"
    report = json.loads(trained.with_suffix(".train.json").read_text())
    assert report["blocks"] == [3, 4] and report["accuracy"] == meta["val_accuracy"]


def test_trained_task_compiles_and_onnx_agrees_with_pytorch(trained, base, splits):
    from subtune.compiler.pipeline import CompileOptions, compile_plan, serialize
    from subtune.compiler.plan import Plan
    from subtune.runtimes.onnxruntime import session_from_bytes
    from subtune.training.network import SubTuneNet, freeze

    task = load_task(trained)
    plan = compile_plan(Plan(base, [task]), CompileOptions(verify=False, check_tensorrt=False))
    assert plan.input_size == (SIZE, SIZE)  # taken from the task's meta["preprocess"]
    session = session_from_bytes(serialize(plan))
    images = torch.cat([s.images for s in splits])
    (onnx_logits,) = session.run([task.name], {"images": images.numpy()})
    _, bb = base.build()
    with torch.no_grad():
        torch_logits = SubTuneNet.from_task(freeze(bb), task)(images)
    assert np.array_equal(onnx_logits.argmax(1), torch_logits.argmax(1).numpy())
    assert np.abs(onnx_logits - torch_logits.numpy()).max() <= 1e-4 * np.abs(torch_logits.numpy()).max()


def test_train_siamese_linear_and_full_modes(tmp_path, capsys, base_path, folder):
    data = ["--data", f"imagefolder:{folder}", *TRAIN]
    assert _run(capsys, "train", base_path, *data, "--blocks", "7-8", "--siamese", "--epochs", "1",
                "-o", tmp_path / "s.pt")[0] == 0
    s = load_task(tmp_path / "s.pt")
    assert s.siamese and s.head["weight"].shape == (3, 1024)

    assert _run(capsys, "train", base_path, *data, "--mode", "linear", "-o", tmp_path / "lin.pt")[0] == 0
    lin = load_task(tmp_path / "lin.pt")
    base = load_base(base_path)
    # a tap on the base's own features (point N + 2 = 10): no blocks, so the compiled graph never forks
    assert lin.meta["mode"] == "linear" and lin.kind == "tap" and lin.blocks == [] and lin.block_state == {}
    assert lin.taps["points"] == [{"point": 10, "grid": None, "dim": 512}] and lin.head["weight"].shape == (3, 512)

    code, out, _ = _run(capsys, "train", base_path, *data, "--mode", "full", "--epochs", "1", "-o", tmp_path / "full.pt")
    assert code == 0 and "not a task delta" in out
    raw = load_dict(tmp_path / "full.pt", "model")
    assert raw["format"] == BASE_FORMAT and raw["kind"] == "full-finetune"
    assert raw["finetuned_from"] == base.fingerprint and raw["classes"] == ["blue", "green", "red"]
    full = load_base(tmp_path / "full.pt")  # a valid base file: compiles as a model of its own
    assert full.arch_kwargs["num_classes"] == 3 and full.fingerprint != base.fingerprint
    code, out, _ = _run(capsys, "inspect", "--json", tmp_path / "full.pt")
    shown = json.loads(out)
    assert code == 0 and shown["kind"] == "full-finetune" and shown["finetuned_from"] == base.fingerprint
    assert shown["meta"]["mode"] == "full"


def test_train_auto_runs_greedy_on_validation(tmp_path, capsys, base_path, folder):
    code, out, _ = _run(capsys, "train", base_path, "--data", f"imagefolder:{folder}", *TRAIN, "--epochs", "1",
                        "--blocks", "auto", "--max-blocks", "2", "--epsilon", "0", "-o", tmp_path / "auto.pt")
    assert code == 0 and "linear probe validation accuracy" in out and "selected blocks" in out
    task = load_task(tmp_path / "auto.pt")
    sel = task.meta["selection"]
    assert len(sel["steps"][0]["candidates"]) == 8 and sel["selected"] == [task.first, task.last]
    assert 1 <= len(task.blocks) <= 2 and "test_accuracy" not in task.meta  # no --test given


def test_profile_writes_json_and_png(tmp_path, capsys, base_path, folder):
    out = tmp_path / "profile.json"
    code, stdout, _ = _run(capsys, "profile", base_path, "--data", f"imagefolder:{folder}", *TRAIN, "--epochs", "1",
                           "--window", "2", "--starts", "5-7", "--seeds", "0,1", "--baselines", "--test", "-o", out)
    assert code == 0 and "best window" in stdout
    data = json.loads(out.read_text())
    assert [e["blocks"] for e in data["entries"]] == [[5, 6], [6, 7], [7, 8]]
    for e in data["entries"]:
        assert {"accuracy", "accuracy_std", "params", "seconds", "test_accuracy"} <= set(e) and len(e["runs"]) == 2
    assert set(data["baselines"]) == {"linear", "full"} and data["stages"]["layer4"] == [7, 8]
    png = (tmp_path / "profile.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_select_ranks_pool_by_margin_and_skips_training_images(tmp_path, capsys, trained, base_path, folder):
    out = tmp_path / "picks.json"
    code, stdout, _ = _run(capsys, "select", base_path, trained, "--pool", f"imagefolder:{folder}",
                           "--pool-split", "test", "--budget", "5", "-o", out)
    assert code == 0 and "smallest margins" in stdout
    picks = json.loads(out.read_text())
    margins = [p["margin"] for p in picks["picks"]]
    assert picks["pool_size"] == 12 and picks["excluded"] == 0 and picks["picked"] == 5
    assert margins == sorted(margins) and all(0 <= m <= 1 for m in margins)
    assert all(p["p1"] - p["p2"] == pytest.approx(p["margin"]) and "label" in p for p in picks["picks"])
    assert 0 <= picks["pool_accuracy"] <= 1

    # The training folder as the pool: every image was used to train or validate the task.
    code, _, err = _run(capsys, "select", base_path, trained, "--pool", f"imagefolder:{folder}",
                        "--budget", "5", "-o", tmp_path / "none.json")
    assert code == 1 and "excluded" in err and not (tmp_path / "none.json").exists()

    pool = tmp_path / "pool"
    pool.mkdir()
    for i in range(12):
        write_image(pool / f"{i:02d}.png", (40 * (i % 6), 90, 200 - 15 * i), 100 + i)
    code, _, _ = _run(capsys, "select", base_path, trained, "--pool", f"images:{pool}", "--budget", "5",
                      "--exclude", out, "-o", tmp_path / "unlabelled.json")
    picks = json.loads((tmp_path / "unlabelled.json").read_text())
    assert code == 0 and picks["picked"] == 5 and picks["pool_size"] == 12 and "pool_accuracy" not in picks
    assert picks["margin_quantiles"]["0.0"] == pytest.approx(picks["picks"][0]["margin"])


BAD = [
    (["--blocks", "9-10"], "out of range"),
    (["--blocks", "3,5"], "not consecutive"),
    ([], "--blocks is required"),
    (["--mode", "linear", "--blocks", "3"], "--blocks does nothing with --mode linear"),
    (["--blocks", "3", "--label-map", "warm=red;cold=purple"], "unknown class"),
    (["--blocks", "3", "--augment", "mixup"], None),  # argparse refuses it (exit 2)
]


@pytest.mark.parametrize("extra,message", BAD)
def test_bad_train_input_is_one_line_and_leaves_no_file(tmp_path, capsys, base_path, folder, extra, message):
    out = tmp_path / "t.pt"
    argv = ["train", base_path, "--data", f"imagefolder:{folder}", *TRAIN, *extra, "-o", out]
    if message is None:
        with pytest.raises(SystemExit):
            main([str(a) for a in argv])
        return
    code, _, err = _run(capsys, *argv)
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_select_refuses_a_pool_with_other_classes(tmp_path, capsys, trained, base_path, fashion_mnist):
    code, _, err = _run(capsys, "select", base_path, trained, "--pool", fashion_mnist, "--pool-limit", "20",
                        "--budget", "3", "-o", tmp_path / "p.json")
    assert code == 1 and "--label-map" in err and not (tmp_path / "p.json").exists()


def test_image_size_takes_height_and_width(tmp_path, capsys, base_path, folder):
    """`--image-size H,W` means what it means everywhere: the input images' size in pixels."""
    code, _, _ = _run(capsys, "train", base_path, "--data", f"imagefolder:{folder}", "--mode", "linear",
                      "--image-size", "32,48", "--epochs", "1", "--batch-size", "8", "-o", tmp_path / "wide.pt")
    assert code == 0 and load_task(tmp_path / "wide.pt").meta["preprocess"]["image_size"] == [32, 48]
