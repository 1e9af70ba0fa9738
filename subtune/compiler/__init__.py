"""The multi-task compiler: base + task deltas -> one ONNX graph (see pipeline.py)."""
