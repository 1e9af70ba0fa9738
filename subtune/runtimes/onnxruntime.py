"""ONNX Runtime sessions (the CPU runtime everything here is verified on)."""

from __future__ import annotations

from subtune.errors import SubtuneError


def _ort():
    try:
        import onnxruntime
    except ImportError as e:
        raise SubtuneError("onnxruntime is not installed: pip install onnxruntime") from e
    return onnxruntime


def session_from_bytes(model: bytes | str, *, threads: int | None = None, providers=("CPUExecutionProvider",)):
    """An InferenceSession from serialized ONNX bytes or a path."""
    ort = _ort()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(model, sess_options=opts, providers=list(providers))
