"""Serving compiled graphs from a Triton Inference Server.

    graph        what a compiled graph offers: input, outputs with shapes, subtune metadata
    pbtxt        Triton's protobuf text format, written from plain dicts
    repository   a Triton model repository for a graph (python, onnxruntime or tensorrt
                 backend): version 1 of the graph model, label files per version, an optional
                 image-preprocessing model and ensemble
    environment  where the `tritonserver` binary, its python backend and the served models'
                 Python environment are (scripts/install_serve_env.sh makes them)
    server       start a real tritonserver on 127.0.0.1 (explicit model control), wait for
                 readiness, stop it by PID
    models/      the python-backend model.py files copied into repositories: the graph model
                 (for a --task-select graph it builds each request's task mask from the outputs
                 the request names), the image preprocessing, a task-select graph's image
                 ensemble; they run inside Triton's backend stub, in the serve environment, and
                 never import subtune
  changing what a running server serves (`subtune rollout`, docs/rollout.md):
    versions     a graph model's versions in a repository: the one served, the ones served
                 before, the configuration for another version, undoable edits
    compare      a new graph against the served one: same base and input, outputs on check images
    control      the running server: Triton's repository API (load), readiness, inference by version
    rollout      check -> write the next version -> load it -> check its answers -> retire the old

Layering: this package builds on subtune.errors, subtune.atomic, subtune.graph_metadata (through
graph.py), subtune.runtimes (ONNX Runtime sessions for the checks) and subtune.training (check
images from a dataset); subtune.api and subtune.commands use it.
"""
