"""Command line: `subtune <command>` plus the `subtune-compile` and `subtune-bench` shortcuts.

Parsing only; each command's work lives in the library. A SubtuneError prints as one line and
exits 1 (the traceback only with --debug); any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

from subtune.errors import SubtuneError

# command name -> module under subtune.commands with `add_arguments(parser)` and `run(args) -> int`
COMMANDS = {
    "base": "Write a base-model file from an architecture (random or given weights).",
    "compile": "Compile a base and task deltas into one verified multi-task ONNX graph or TensorRT engine.",
    "synthetic-task": "Write a synthetic task delta (perturbed base blocks) for tests and benchmarks.",
    "inspect": "Describe a base, task or compiled ONNX file.",
    "train": "Train a task delta with SubTuning (chosen or greedily selected blocks), or a linear/full baseline.",
    "profile": "Finetuning profile: accuracy, parameters and time of each block window, as JSON and a PNG.",
    "select": "Active learning: pick the unlabelled pool images with the smallest classification margin.",
    "prune": "Prune the channels inside a task's tuned blocks (Torch-Pruning), then recover accuracy on data.",
    "prune-sweep": "Accuracy against parameters kept for pruning ratios 0.1-0.9, local/global x L1/L2 (JSON + PNG).",
    "bench": "Time a model, compare deployments of a base and its tasks, or plot accuracy against added latency.",
    "triton-repo": "Write a Triton model repository for a compiled graph (python, onnxruntime or tensorrt backend).",
    "serve": "Serve a Triton model repository or a compiled graph with a real tritonserver on 127.0.0.1.",
    "rollout": "Serve a new compiled graph (or the previous one) on a running Triton server, checked, without downtime.",
}


def _module(name: str):
    import importlib

    return importlib.import_module(f"subtune.commands.{name.replace('-', '_')}")


def build_parser(argv: list[str], only: str | None = None) -> argparse.ArgumentParser:
    """Only the chosen command's module is imported, so parsing stays cheap and one command's
    heavy dependencies never slow another."""
    if only:
        parser = argparse.ArgumentParser(prog=f"subtune-{only}", description=COMMANDS[only])
        _module(only).add_arguments(parser)
        _add_common(parser)
        parser.set_defaults(command=only)
        return parser
    parser = argparse.ArgumentParser(prog="subtune", description="SubTuning toolkit and multi-task compiler.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            _module(name).add_arguments(p)
        _add_common(p)
    return parser


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show full tracebacks")


def main(argv: list[str] | None = None, only: str | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv, only)
    args = parser.parse_args(argv)
    handler = _log_to_stderr()
    try:
        return int(_module(args.command).run(args) or 0)
    except SubtuneError as e:
        if args.debug:
            raise
        print(f"subtune {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        logging.getLogger("subtune").removeHandler(handler)


def _log_to_stderr() -> logging.Handler:
    """The library logs on the "subtune" logger and never prints: its warnings reach the user
    here, one plain line each on stderr (INFO stays quiet; commands print their own results).
    Installed for one command and removed after it, so in-process callers do not stack handlers."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger("subtune").addHandler(handler)
    return handler


def _shortcut(name: str) -> Callable[[], int]:
    def entry() -> int:
        return main(sys.argv[1:], only=name)

    return entry


compile_main = _shortcut("compile")


def bench_main() -> int:
    if "bench" not in COMMANDS:
        print("subtune-bench: not available in this version", file=sys.stderr)
        return 1
    return main(sys.argv[1:], only="bench")


if __name__ == "__main__":
    sys.exit(main())
