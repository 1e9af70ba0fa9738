"""`subtune prune`, `subtune-compile --prune`: outputs, report, and bad input failing before any work."""

import json

import pytest

from subtune.cli import main
from subtune.formats import load_task, save_base, save_task


@pytest.fixture(scope="module")
def files(tmp_path_factory, family_models):
    base, _, task, _ = family_models("resnet18")
    d = tmp_path_factory.mktemp("prune_cli")
    save_base(d / "base.pt", base)
    save_task(d / "task.pt", task)
    return d


def test_prune_command_writes_a_pruned_task_and_report(files, capsys):
    out = files / "pruned.pt"
    rc = main(["prune", str(files / "base.pt"), str(files / "task.pt"), "--ratio", "0.5", "--scope", "global",
               "--norm", "l1", "--round-to", "8", "-o", str(out)])
    assert rc == 0
    assert load_task(out).meta["pruned"]["report"]["options"] == {
        "ratio": 0.5, "norm": "l1", "scope": "global", "round_to": 8, "heads": True}
    report = json.loads(out.with_suffix(".report.json").read_text())
    assert report["params"][1] < report["params"][0] and set(report["blocks"]) == {"3", "4"}
    assert "conv1" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["prune", "{base}", "{task}", "--ratio", "1.5", "-o", "{out}"], "strictly between 0 and 1"),
    (["prune", "{base}", "{task}", "--ratio", "0.995", "-o", "{out}"], "would remove every channel"),
    (["prune", "{base}", "{task}", "--ratio", "0.5", "--round-to", "0", "-o", "{out}"], "round_to 0"),
    (["compile", "{base}", "{task}", "--prune", "0", "-o", "{out}.onnx"], "strictly between 0 and 1"),
    (["compile", "{base}", "{task}", "--round-to", "8", "-o", "{out}.onnx"], "add --prune"),
])
def test_bad_input_fails_with_one_line_and_no_output(files, capsys, argv, message):
    out = files / "bad.pt"
    fill = {"task": files / "task.pt", "base": files / "base.pt", "out": out}
    rc = main([a.format(**fill) for a in argv])
    err = capsys.readouterr().err
    assert rc == 1 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not (files / "bad.pt.onnx").exists() and not out.with_suffix(".report.json").exists()
