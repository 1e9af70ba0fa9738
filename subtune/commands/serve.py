from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", help="a Triton model repository (subtune triton-repo), or a compiled model.onnx "
                                  "(served from a temporary python-backend repository)")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--address", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--preprocess", action="store_true", help="a graph file only: add the image-bytes ensemble")
    p.add_argument("--max-batch-size", type=int, default=8, help="a graph file only (default 8)")
    p.add_argument("--ready-timeout", type=float, default=120.0, help="seconds to wait for readiness (default 120)")
    p.add_argument("--model-control", choices=["explicit", "none"], default="explicit",
                   help="explicit (default): models and versions load and unload while it serves (`subtune rollout`); "
                        "none: the repository is read once, at start")
    p.add_argument("--log", help="write the server's log here (default: a temporary file, printed)")


def run(args: argparse.Namespace) -> int:
    import signal
    import sys
    import tempfile
    from pathlib import Path

    from subtune.errors import SubtuneError
    from subtune.serving.server import ServerOptions, TritonServer

    target = Path(args.target)
    for flag in ("http_port", "grpc_port", "metrics_port"):
        port = getattr(args, flag)
        if not 1 <= port <= 65535:
            raise SubtuneError(f"--{flag.replace('_', '-')} {port}: expected a port number 1-65535")
    if len({args.http_port, args.grpc_port, args.metrics_port}) < 3:
        raise SubtuneError("--http-port, --grpc-port and --metrics-port must differ")
    if args.log:
        from subtune.atomic import check_writable

        check_writable(args.log)
    from subtune.commands.flag_values import refuse_unless

    refuse_unless(args, not target.is_dir(), ("preprocess", "max_batch_size"),
                  "for a repository folder: its models are configured already (subtune triton-repo sets them)")
    tmpdir = None
    if target.is_file():
        from subtune.api import triton_repo

        tmpdir = tempfile.TemporaryDirectory(prefix="subtune-serve-")
        try:  # an engine: checked to be one compile's pair with its engine.onnx, served from that ONNX
            repository = triton_repo(target, Path(tmpdir.name) / "repo", backend="python",
                                     preprocess=args.preprocess, max_batch_size=args.max_batch_size).path
        except BaseException:
            tmpdir.cleanup()
            raise
    elif target.is_dir():
        repository = target
    else:
        raise SubtuneError(f"{target}: no such file or folder; expected a Triton model repository or a compiled .onnx")

    def terminate(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    server = TritonServer(repository, ServerOptions(http_port=args.http_port, grpc_port=args.grpc_port,
                                                    metrics_port=args.metrics_port, address=args.address,
                                                    ready_timeout_s=args.ready_timeout, model_control=args.model_control,
                                                    log_path=Path(args.log) if args.log else None))
    try:
        try:
            server.start()
        except KeyboardInterrupt:
            server.stop()
            print("interrupted while starting; server stopped", file=sys.stderr)
            return 130
        try:  # from here on a Ctrl-C or SIGTERM, wherever it lands (even mid-print), is a clean stop
            try:
                models = [f"{m['name']} (version {m['version']})" if m.get("version") not in (None, "1") else m["name"]
                          for m in server.repository_index() if m.get("state") == "READY"]
            except (OSError, ValueError):
                models = ["(the repository index did not answer)"]
            print(f"tritonserver ready (pid {server.pid}): models {', '.join(models)}", flush=True)
            print(f"  HTTP        http://{server.http_url}/v2", flush=True)
            print(f"  gRPC        {server.grpc_url}", flush=True)
            print(f"  metrics     {server.metrics_url}", flush=True)
            print(f"  repository  {repository}", flush=True)
            print(f"  log         {server.log_path}", flush=True)
            if args.model_control == "explicit":
                print(f"New graphs go live with: subtune rollout {repository} NEW.onnx --url {server.http_url}",
                      flush=True)
            print("Ctrl-C or SIGTERM stops it.", flush=True)
            code = server.process.wait()
        except KeyboardInterrupt:
            status = server.stop()
            print(f"tritonserver stopped (exit status {status})", flush=True)
            return 0
        from subtune.serving.server import summarize_errors

        raise SubtuneError(f"tritonserver exited with status {code}: "
                           f"{summarize_errors(server.log_text()) or 'no error logged'} (log: {server.log_path})")
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)
        if tmpdir is not None:
            tmpdir.cleanup()
