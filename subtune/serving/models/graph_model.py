"""Triton python-backend model: one compiled subtune graph run with ONNX Runtime (CPU).

Written by `subtune triton-repo`; runs inside Triton's backend stub. At load it checks the graph's
subtune metadata against the definition copied beside it (graph_metadata.py and its JSON), so a graph
from a newer schema or missing a key fails to load with one line. Per-request overhead is
what limits a served model's throughput, so each `execute` call does one ONNX Runtime run for all
the requests Triton's dynamic batcher hands it:

- the inputs are read as zero-copy views of the shared-memory tensors; one concatenation when
  more than one request arrives (none for a single request);
- each response gets row slices (views) of the batch's outputs;
- ONNX Runtime's intra-op threads come from the `ort_intra_op_threads` parameter (default: the
  usable cores divided by the instance count), with spinning off by default so idle worker
  threads do not take the cores the server, the stub and the clients need.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


def _parameter(config, key, default):
    value = config.get("parameters", {}).get(key, {}).get("string_value")
    return default if value in (None, "") else value


def _graph_metadata():
    """subtune's graph_metadata module, which `subtune triton-repo` copies beside this file with its
    JSON definition (the server's Python has no subtune)."""
    import importlib.util

    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "graph_metadata.py")
    spec = importlib.util.spec_from_file_location("subtune_graph_metadata", here)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TritonPythonModel:
    def initialize(self, args):
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        self.output_names = [o["name"] for o in config["output"]]
        groups = config.get("instance_group") or [{"count": 1}]
        instances = max(1, sum(int(g.get("count", 1)) for g in groups))
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = int(_parameter(config, "ort_intra_op_threads", 0)) or max(1, cores // instances)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        spinning = _parameter(config, "ort_allow_spinning", "0")
        opts.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        path = os.path.join(args["model_repository"], args["model_version"], _parameter(config, "graph_file", "model.onnx"))
        self.session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        try:  # the graph's subtune metadata, checked against the definition copied beside this file
            self.metadata = _graph_metadata().decode(self.session.get_modelmeta().custom_metadata_map, path)
        except ValueError as e:
            raise pb_utils.TritonModelException(str(e)) from None
        known = {o.name for o in self.session.get_outputs()}
        missing = [n for n in self.output_names if n not in known]
        if missing:
            raise pb_utils.TritonModelException(
                f"{path}: the configuration names outputs {missing} that the graph lacks (it has {sorted(known)})")

    def execute(self, requests):
        arrays, asked = [], []
        for request in requests:
            arrays.append(pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy())
            asked.append(request.requested_output_names())  # empty: every output
        if all(asked):
            wanted = set().union(*asked)
            names = [n for n in self.output_names if n in wanted]
        else:
            names = self.output_names
        batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        try:
            results = self.session.run(names, {self.input_name: batch})
        except Exception as e:  # noqa: BLE001 - one error answer per request, the model keeps serving
            error = pb_utils.TritonError(f"ONNX Runtime failed on a batch of {len(batch)}: {e}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        if len(requests) == 1:
            return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(n, r) for n, r in zip(names, results)])]
        responses, start = [], 0
        for array, want in zip(arrays, asked):
            stop = start + len(array)  # row slices of C-contiguous outputs: contiguous views, no copy here
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(n, r[start:stop]) for n, r in zip(names, results) if not want or n in want]))
            start = stop
        return responses

    def finalize(self):
        self.session = None
