"""subtune: SubTuning toolkit and multi-task deployment compiler.

Heavy libraries (torch, onnx, onnxruntime, tensorrt) are imported where they are used,
so `import subtune` and argument parsing stay cheap.
"""

__version__ = "0.1.0"
