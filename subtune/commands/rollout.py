from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("repository", help="the Triton model repository the server serves (subtune triton-repo)")
    p.add_argument("graph", nargs="?", help="the new compiled graph (model.onnx, with its .data file beside it if any)")
    p.add_argument("--rollback", action="store_true", help="serve the version served before the current one again")
    p.add_argument("--url", default="127.0.0.1:8000", help="the server's HTTP endpoint, HOST:PORT (default 127.0.0.1:8000)")
    p.add_argument("--name", help="the graph model to change, when the repository holds several")
    p.add_argument("--replace", action="append", default=[], metavar="TASK[,TASK]",
                   help="tasks retrained on purpose: they may answer differently from the served version "
                        "(every other task in both versions must answer as before)")
    p.add_argument("--data", help="check images from this dataset (fashion-mnist, imagefolder:DIR, images:DIR, ...), "
                                  "preprocessed as the tasks were trained (default: random pixel images)")
    p.add_argument("--check-images", type=int, default=16, help="how many check images (default 16)")
    p.add_argument("--dry-run", action="store_true", help="print the comparison only: nothing written, no server contacted")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds the server may take to load the new version "
                                                                "(default 300)")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead")


def run(args: argparse.Namespace) -> int:
    import json

    from subtune.api import rollout
    from subtune.errors import SubtuneError

    if args.rollback and args.graph:
        raise SubtuneError("give the new graph or --rollback, not both")
    if not args.rollback and not args.graph:
        raise SubtuneError("give the new graph (subtune rollout REPO NEW.onnx) or --rollback")
    replace = [t for value in args.replace for t in value.split(",") if t.strip()]
    result = rollout(args.repository, args.graph, rollback=args.rollback, url=args.url, name=args.name,
                     replace=replace, data=args.data, check_images=args.check_images, dry_run=args.dry_run,
                     timeout=args.timeout, on_progress=None if args.json else lambda line: print(line, flush=True))
    if args.json:
        print(json.dumps(result.to_json(), indent=2, default=str))
    return 0
