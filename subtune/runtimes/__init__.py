"""Runtimes: ONNX Runtime (CPU; CUDA and TensorRT providers when present), TensorRT engines,
PyTorch eager. Each heavy runtime is imported only when used."""
