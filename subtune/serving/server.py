"""A real `tritonserver` on 127.0.0.1: start it, wait for readiness (bounded), stop it by PID.

The server runs in its own process group (it starts one backend-stub process per model
instance); stopping sends SIGTERM to the server, waits a bounded time for its clean shutdown,
then kills the group. Its log goes to a file, and a failure to start is one line carrying the
server's own error."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from subtune.errors import SubtuneError
from subtune.serving.environment import ServeEnvironment, find_environment

log = logging.getLogger(__name__)
LOCALHOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOCALHOST, 0))
        return s.getsockname()[1]


@dataclass
class ServerOptions:
    http_port: int = 0  # 0: a free port
    grpc_port: int = 0
    metrics_port: int = 0
    address: str = LOCALHOST
    exit_on_error: bool = True  # False: serve the models that load, report the others
    ready_timeout_s: float = 120.0
    exit_timeout_s: int = 5  # the server's own wait for in-flight requests and open connections
    stop_timeout_s: float = 20.0  # then ours, before SIGKILL
    log_path: Path | None = None  # default: a temporary file
    # explicit: every model loads at start, and models (versions) load and unload on request while it
    # serves (Triton's repository API: `subtune rollout`); none: the repository is read once, at start
    model_control: str = "explicit"
    extra_args: list[str] = field(default_factory=list)


MODEL_CONTROL = ("explicit", "none")


class TritonServer:
    """`with TritonServer(repo) as server:` starts the server and waits until it is ready."""

    def __init__(self, repository: str | Path, options: ServerOptions | None = None,
                 environment: ServeEnvironment | None = None):
        self.repository = Path(repository).resolve()
        if not (self.repository.is_dir()):
            raise SubtuneError(f"{repository}: not a folder; expected a Triton model repository "
                               "(subtune triton-repo MODEL.onnx -o REPO) or a compiled .onnx")
        self.options = options or ServerOptions()
        if self.options.model_control not in MODEL_CONTROL:
            raise SubtuneError(f"model control {self.options.model_control!r}: expected one of {', '.join(MODEL_CONTROL)}")
        self.env = environment or find_environment()
        self.http_port = self.options.http_port or free_port()
        self.grpc_port = self.options.grpc_port or free_port()
        self.metrics_port = self.options.metrics_port or free_port()
        self.process: subprocess.Popen | None = None
        self._own_log = self.options.log_path is None
        self.log_path = Path(self.options.log_path or tempfile.mkstemp(prefix="tritonserver-", suffix=".log")[1])

    # ------------------------------------------------------------------ endpoints
    @property
    def http_url(self) -> str:
        return f"{self.options.address}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.options.address}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.options.address}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def command(self) -> list[str]:
        o = self.options
        return [str(self.env.tritonserver), f"--model-repository={self.repository}",
                f"--backend-directory={self.env.backend_dir}",
                f"--http-address={o.address}", f"--http-port={self.http_port}",
                f"--grpc-address={o.address}", f"--grpc-port={self.grpc_port}",
                f"--metrics-address={o.address}", f"--metrics-port={self.metrics_port}",
                "--allow-gpu-metrics=false", "--disable-auto-complete-config",
                f"--exit-on-error={'true' if o.exit_on_error else 'false'}",
                f"--strict-readiness={'true' if o.exit_on_error else 'false'}",
                f"--exit-timeout-secs={o.exit_timeout_s}", "--log-verbose=0",
                *(["--model-control-mode=explicit", "--load-model=*"] if o.model_control == "explicit" else []),
                *o.extra_args]

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "TritonServer":
        if self.process is not None:
            raise RuntimeError("server already started")
        log.info("starting %s", " ".join(self.command()))
        with open(self.log_path, "ab") as logfile:
            try:
                self.process = subprocess.Popen(self.command(), stdout=logfile, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, env=self.env.process_env(),
                                                cwd=str(self.repository), start_new_session=True,
                                                preexec_fn=_die_with_parent)
            except OSError as e:
                raise SubtuneError(f"cannot run {self.env.tritonserver}: {e.strerror}; "
                                   "run `bash scripts/install_serve_env.sh` again") from e
        try:
            self.wait_ready(self.options.ready_timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout_s: float) -> None:
        """Poll /v2/health/ready until it answers 200, the process exits, or the time is up."""
        deadline = time.monotonic() + timeout_s
        delay = 0.05
        while True:
            code = self.process.poll()
            if code is not None:
                raise SubtuneError(f"tritonserver exited with status {code} while starting: {self.error_summary()} "
                                   f"(log: {self.log_path})")
            if self.is_ready():
                return
            if time.monotonic() > deadline:
                raise SubtuneError(f"tritonserver was not ready within {timeout_s:.0f} s: "
                                   f"{self.error_summary() or 'no error logged'} (log: {self.log_path})")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def _get(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}{path}", timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except (urllib.error.URLError, OSError, TimeoutError):
            return 0, b""

    def is_ready(self) -> bool:
        return self._get("/v2/health/ready")[0] == 200

    def model_ready(self, name: str) -> bool:
        return self._get(f"/v2/models/{name}/ready")[0] == 200

    def repository_index(self) -> list[dict]:
        """Every model of the repository with its state and, for one that failed, the reason."""
        req = urllib.request.Request(f"http://{self.http_url}/v2/repository/index", data=b"{}", method="POST")
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())

    def stop(self) -> int | None:
        """SIGTERM, a bounded wait for the clean shutdown, then SIGKILL to the process group.
        Returns the exit status (None if it was never started). Shared-memory regions the group
        held and left behind (a stub killed before its clean-up) are removed."""
        p = self.process
        if p is None:
            return None
        regions = shared_memory_regions(p.pid)
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=self.options.exit_timeout_s + self.options.stop_timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("tritonserver %d did not stop within %.0f s: killing it", p.pid,
                            self.options.stop_timeout_s)
        # The backend stubs are in the server's process group; none may outlive it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=10)
        deadline = time.monotonic() + 10
        while live_group_members(p.pid) and time.monotonic() < deadline:  # SIGKILL takes a moment to land
            time.sleep(0.05)
        remove_left_regions(regions, p.pid)
        return p.returncode

    def kill(self) -> None:
        """SIGKILL the server and its stubs at once (a crash, for fault runs); the shared-memory
        regions they held are removed."""
        if self.process is not None and self.process.poll() is None:
            regions = shared_memory_regions(self.process.pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
            deadline = time.monotonic() + 10
            while live_group_members(self.process.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            remove_left_regions(regions, self.process.pid)

    def close(self) -> None:
        self.stop()
        if self._own_log:
            with contextlib.suppress(OSError):
                self.log_path.unlink()

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ the log
    def log_text(self, limit: int = 200_000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-limit:].decode("utf-8", "replace")

    def error_summary(self) -> str:
        """The server's own error lines, joined on one line (Triton's E-lines, and the failed
        models in its status table)."""
        return summarize_errors(self.log_text())


SHM_REGION_PREFIX = "/dev/shm/triton_python_backend_shm_region_"  # the python backend's, one per stub and server


def shared_memory_regions(pgid: int) -> set[str]:
    """The python backend's shared-memory files mapped by the live members of process group
    `pgid` (Linux /proc): each is that server's own (a fresh UUID per region)."""
    regions = set()
    for pid in live_group_members(pgid):
        try:
            with open(f"/proc/{pid}/maps") as f:
                regions |= {line.split(None, 5)[5].strip() for line in f
                            if SHM_REGION_PREFIX in line and len(line.split(None, 5)) == 6}
        except OSError:
            continue
    return {r for r in regions if not r.endswith(" (deleted)")}


def remove_left_regions(regions: set[str], pgid: int) -> None:
    """Once no process of the group is left, the regions it held that are still on disk: a stub
    killed before its clean-up leaves its 1 MiB files in /dev/shm for good."""
    if live_group_members(pgid):
        return  # still mapped by something of this server's: never pull a region from under it
    for path in regions:
        with contextlib.suppress(OSError):
            os.unlink(path)
            log.debug("removed %s, left behind by tritonserver %d", path, pgid)


def live_group_members(pgid: int) -> list[int]:
    """PIDs in process group `pgid` that are not zombies (Linux /proc)."""
    pids = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return pids
    for entry in entries:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                pids.append(int(entry))
    return pids


def _resolve_prctl():
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _resolve_prctl()  # resolved here, so the child between fork and exec loads nothing


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the thread that started it dies, even by
    SIGKILL, so a killed `subtune serve` or test run leaves no server behind (Linux)."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


_ERROR_LINE = re.compile(r"^E\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] (.*)$")
# Not the reason a start failed: CPU-only machines log the first two for every ensemble; the third is
# restated by the "failed to load" line that follows it.
_NOISE = ("CudaDriverHelper has not been initialized", "unable to create stream for",
          "ERROR: Failed to create instance")


def summarize_errors(text: str, limit: int = 600) -> str:
    """The server's error lines on one line: each failed model and why (the first line of its
    error, without the Python traceback), then anything else it logged as an error."""
    failed, other = [], []
    for line in text.splitlines():
        m = _ERROR_LINE.match(line.strip())
        if not m:
            continue
        msg = m.group(1).strip()
        if msg.startswith('"') and msg.endswith('"'):
            msg = msg[1:-1]
        msg = msg.split("\\n")[0].strip()  # Triton escapes newlines; the traceback follows the first
        if not msg or any(msg.startswith(n) for n in _NOISE):
            continue
        target = failed if msg.startswith("failed to load") else other
        if msg not in target:
            target.append(msg)
    summary = "; ".join(failed + [m for m in other if not any(m in f for f in failed)])
    return summary if len(summary) <= limit else summary[: limit - 3] + "..."
