"""Command line: `subtune <command>` plus the `subtune-compile` and `subtune-bench` shortcuts.

Parsing only; each command's work lives in the library. A SubtuneError prints as one line and
exits 1 (the traceback only with --debug); any other exception is a bug and keeps its traceback.
The library's errors name Python parameters in backticks (`max_blocks`); here they are shown as
the command's flags (--max-blocks): `--` and the name with dashes, or the command module's
`FLAGS` table where a flag is spelt otherwise (`cache=False` -> --no-cache).

Conventions every command keeps: the base first (`subtune prune BASE TASK`), `--image-size H[,W]`
is the input images' size in pixels, thread flags say which threads (--torch-threads,
--intra-op-threads, --ort-threads), and a flag that does nothing for the chosen output or mode is
refused, not ignored (each command's `run` checks `args.given`, the flags given on the command
line). Old spellings still work for now, with a warning on stderr.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from typing import Callable

from subtune.errors import SubtuneError
from subtune.version import __version__

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
        _add_version(parser)
        _module(only).add_arguments(parser)
        _add_common(parser)
        parser.set_defaults(command=only, _parser=parser)
        return parser
    parser = argparse.ArgumentParser(prog="subtune", description="SubTuning toolkit and multi-task compiler.")
    _add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            _module(name).add_arguments(p)
        _add_common(p)
        p.set_defaults(_parser=p)
    return parser


def _add_version(p: argparse.ArgumentParser) -> None:
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                   help="print the version and exit")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show full tracebacks")


def main(argv: list[str] | None = None, only: str | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv, only)
    args = parser.parse_args(argv)
    command_parser = vars(args).pop("_parser", parser)
    args.given = given_flags(args, command_parser)
    module = _module(args.command)
    for warning in vars(args).pop("_deprecated", []):
        print(f"subtune {args.command}: warning: {warning}", file=sys.stderr)
    handler = _log_to_stderr()
    try:
        return int(module.run(args) or 0)
    except SubtuneError as e:
        if args.debug:
            raise
        print(f"subtune {args.command}: error: {as_flags(str(e), {**FLAGS, **getattr(module, 'FLAGS', {})})}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        logging.getLogger("subtune").removeHandler(handler)


def given_flags(args: argparse.Namespace, parser: argparse.ArgumentParser) -> frozenset[str]:
    """The destinations the command line set to something other than their defaults: what the user
    asked for (a flag given with its default value is taken as not given: it changes nothing)."""
    return frozenset(dest for dest, value in vars(args).items()
                     if dest not in ("command", "debug") and not dest.startswith("_")
                     and value != parser.get_default(dest))


# Parameters spelt otherwise on every command line that has them (a command's FLAGS add to these).
FLAGS = {"cache=False": "--no-cache", "output": "-o"}
_PARAMETER = re.compile(r"`([A-Za-z_][A-Za-z0-9_.]*(?:=[A-Za-z0-9_]+)?)`")


def as_flags(message: str, flags: dict[str, str]) -> str:
    """A library message for the command line: each `parameter` as the flag that sets it."""
    return _PARAMETER.sub(lambda m: flags.get(m.group(1)) or "--" + m.group(1).replace("_", "-"), message)


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
