"""Where Triton comes from on this machine: the serve environment (a virtual environment that
scripts/install_serve_env.sh makes, .venv-serve/ beside the checkout by default) holds
nvidia-pytriton's `tritonserver` binary, its python backend (assembled under
triton/backends/python), and the Python the served models run in: numpy<2 (the python backend
answers with empty tensors under numpy 2), ONNX Runtime and Pillow.

`SUBTUNE_SERVE_ENV` names another environment."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from subtune.errors import SubtuneError

ENV_VAR = "SUBTUNE_SERVE_ENV"
INSTALL_HINT = "run `bash scripts/install_serve_env.sh` (or set SUBTUNE_SERVE_ENV to such an environment)"


@dataclass(frozen=True)
class ServeEnvironment:
    prefix: Path  # the virtual environment
    python: Path
    tritonserver: Path
    backend_dir: Path  # --backend-directory: holds python/
    lib_dirs: tuple[str, ...]  # LD_LIBRARY_PATH entries the binary and the backend stub need

    def process_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment tritonserver runs with: the serve environment's bin/ first on PATH (the
        backend stub takes the python it finds there and ignores PYTHONPATH), its interpreter's
        libpython and the wheel's bundled libraries on LD_LIBRARY_PATH."""
        env = dict(os.environ if base is None else base)
        env["PATH"] = os.pathsep.join([str(self.prefix / "bin"), env.get("PATH", "")])
        env["LD_LIBRARY_PATH"] = os.pathsep.join([*self.lib_dirs, *filter(None, [env.get("LD_LIBRARY_PATH")])])
        env["VIRTUAL_ENV"] = str(self.prefix)
        for key in ("PYTHONPATH", "PYTHONHOME"):
            env.pop(key, None)
        return env


def default_prefix() -> Path:
    """SUBTUNE_SERVE_ENV, else .venv-serve in the checkout subtune runs from, else in the
    current folder."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    checkout = Path(__file__).resolve().parents[2] / ".venv-serve"
    here = Path.cwd() / ".venv-serve"
    return here if not checkout.exists() and here.exists() else checkout


_cache: dict[Path, ServeEnvironment] = {}


def find_environment(prefix: str | Path | None = None) -> ServeEnvironment:
    """The serve environment, checked; a SubtuneError saying how to make it when it is missing."""
    prefix = Path(prefix) if prefix else default_prefix()
    if prefix in _cache:
        return _cache[prefix]
    python = prefix / "bin" / "python"
    if not python.exists():
        raise SubtuneError(f"no serve environment at {prefix} (tritonserver and its python backend live there); "
                           f"{INSTALL_HINT}")
    probe = ("import sys, os, sysconfig, numpy, pytriton; "
             "root = os.path.dirname(pytriton.__file__); "
             "print(numpy.__version__); print(sysconfig.get_config_var('LIBDIR') or ''); "
             "print(os.path.join(root, 'tritonserver')); "
             "print(os.path.join(os.path.dirname(root), 'nvidia_pytriton.libs'))")
    try:
        out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    except subprocess.CalledProcessError as e:
        last = (e.stderr.strip().splitlines() or ["no output"])[-1]
        raise SubtuneError(f"serve environment {prefix} is incomplete ({last}); {INSTALL_HINT}") from e
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SubtuneError(f"serve environment {prefix}: its python does not run ({e}); {INSTALL_HINT}") from e
    numpy_version, libdir, root, libs = out.stdout.strip().splitlines()
    if not numpy_version.startswith("1."):
        raise SubtuneError(f"serve environment {prefix} has numpy {numpy_version}: Triton's python backend "
                           f"answers with empty tensors under numpy 2; install numpy<2 there ({INSTALL_HINT})")
    binary = Path(root) / "bin" / "tritonserver"
    backend_dir = prefix / "triton" / "backends"
    needed = [binary, backend_dir / "python" / "libtriton_python.so",
              backend_dir / "python" / "triton_python_backend_stub"]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise SubtuneError(f"serve environment {prefix} lacks {', '.join(missing)}; {INSTALL_HINT}")
    env = ServeEnvironment(prefix, python, binary, backend_dir, tuple(d for d in (libdir, libs) if d))
    _cache[prefix] = env
    return env
