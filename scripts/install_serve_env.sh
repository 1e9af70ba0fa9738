#!/usr/bin/env bash
# The environment Triton's python backend runs the served models in (`subtune serve`):
# a virtual environment beside the checkout, .venv-serve/, holding nvidia-pytriton (its
# `tritonserver` binary and python backend), ONNX Runtime, Pillow and numpy<2. The python
# backend answers with EMPTY output tensors under numpy 2, which the main environment runs, so
# the served models get their own environment instead of pinning numpy project-wide.
# Safe to run again: it does nothing when the environment is present and correct.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${SUBTUNE_SERVE_ENV:-.venv-serve}
ORT=$("$PY" -c 'import onnxruntime; print(onnxruntime.__version__)' 2>/dev/null || echo "")
ORT_SPEC="onnxruntime${ORT:+==$ORT}"   # the main environment's version: served outputs equal local ones

check() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$ORT" <<'PY'
import sys, os, numpy, onnxruntime, PIL, pytriton
want = sys.argv[1]
ok = numpy.__version__.split(".")[0] == "1" and (not want or onnxruntime.__version__ == want)
root = os.path.join(os.path.dirname(pytriton.__file__), "tritonserver")
ok = ok and os.access(os.path.join(root, "bin", "tritonserver"), os.X_OK)
be = os.path.join(sys.prefix, "triton", "backends", "python")
ok = ok and all(os.path.exists(os.path.join(be, f)) for f in
                ("libtriton_python.so", "triton_python_backend_stub", "triton_python_backend_utils.py"))
sys.exit(0 if ok else 1)
PY
}

if check 2>/dev/null; then
  echo "serve environment $VENV: present"
  exit 0
fi
# A leftover environment whose interpreter no longer runs (its base Python moved) is made afresh.
if [ -e "$VENV" ] && ! "$VENV/bin/python" -c "pass" 2>/dev/null; then rm -rf "$VENV"; fi
if [ ! -x "$VENV/bin/python" ]; then
  # Debian's python3 without python3-venv has no ensurepip: fall back to virtualenv from PyPI.
  "$PY" -m venv "$VENV" 2>/dev/null || { rm -rf "$VENV"; "$PY" -m pip install -q virtualenv && "$PY" -m virtualenv -q "$VENV"; }
fi
"$VENV/bin/python" -m pip install -q "numpy<2" "$ORT_SPEC" pillow "nvidia-pytriton==0.7.0"
# The wheel ships the python backend and one stub per Python version apart: assemble the
# backend folder tritonserver's --backend-directory expects, for this environment's Python.
"$VENV/bin/python" - <<'PY'
import os, sys, pytriton
root = os.path.join(os.path.dirname(pytriton.__file__), "tritonserver")
ver = f"{sys.version_info.major}.{sys.version_info.minor}"
dst = os.path.join(sys.prefix, "triton", "backends", "python")
os.makedirs(dst, exist_ok=True)
for src in (os.path.join(root, "backends", "python", "libtriton_python.so"),
            os.path.join(root, "backends", "python", "triton_python_backend_utils.py"),
            os.path.join(root, "python_backend_stubs", ver, "triton_python_backend_stub")):
    link = os.path.join(dst, os.path.basename(src))
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(src, link)
PY
check || { echo "serve environment $VENV: incomplete after install" >&2; exit 1; }
"$VENV/bin/python" -c "import numpy, onnxruntime; print('serve environment: numpy', numpy.__version__, '| onnxruntime', onnxruntime.__version__)"
