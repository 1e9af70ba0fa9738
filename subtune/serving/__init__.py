"""Serving compiled graphs from a Triton Inference Server.

    graph        what a compiled graph offers: input, outputs with shapes, subtune metadata
    pbtxt        Triton's protobuf text format, written from plain dicts
    repository   a Triton model repository for a graph (python, onnxruntime or tensorrt
                 backend), label files, an optional image-preprocessing model and ensemble
    environment  where the `tritonserver` binary, its python backend and the served models'
                 Python environment are (scripts/install_serve_env.sh makes them)
    server       start a real tritonserver on 127.0.0.1, wait for readiness, stop it by PID
    models/      the python-backend model.py files copied into repositories (they run inside
                 Triton's backend stub, in the serve environment, and never import subtune)

Layering: this package imports only subtune.errors, subtune.atomic and the standard library
(plus onnx to read graphs); only subtune.commands imports it.
"""
