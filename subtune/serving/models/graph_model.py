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

A graph compiled with --task-select (its metadata has `subtune.task_select`) takes a second input,
a bool mask [batch, k] saying per image which tasks to compute. The model builds each request's
mask rows from the outputs that request asks for, so a client names outputs and nothing else:

1. no `tasks` input, outputs named: the named tasks on every image of the request (naming only
   `base`: no task);
2. no `tasks` input, no output named: every task (every output comes back);
3. a `tasks` input (when the configuration offers it, `optional: true`): bool [images, k], one
   column per task in `columns` order; it says which images compute which task; a task whose
   output the request does not name is not computed whatever the mask says (it would not come
   back), and a named task's rows whose mask entry is false hold NaN. A mask of the wrong dtype,
   shape or width fails that request alone with one line.

The requests of one `execute` call (requests for different tasks, merged by the dynamic batcher)
then run as one batch: images and mask rows concatenated in the same order. The base output
does not depend on the mask. With the parameter `log_task_rows` set to "1" each such run logs one
line at info level (images, requests, images per task), to see what the batcher merged.
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


class RequestError(ValueError):
    """One request cannot be run (its message is the answer); the others of the batch are."""


class TritonPythonModel:
    def initialize(self, args):
        import onnxruntime as ort

        config = json.loads(args["model_config"])
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
        self._init_inputs(config, path)
        self.log_task_rows = self.mask_input is not None and _parameter(config, "log_task_rows", "0") == "1"

    def _init_inputs(self, config, path):
        """The images input, and for a task-select graph (its metadata says so) the mask: its name,
        its columns (output name -> column) and whether clients may send it."""
        graph_inputs = [i.name for i in self.session.get_inputs()]
        config_inputs = [i["name"] for i in config["input"]]
        spec = self.metadata.get("subtune.task_select")
        self.mask_input = spec["input"] if spec else None
        self.columns = {name: i for i, name in enumerate(spec["columns"])} if spec else {}
        self.client_mask = self.mask_input in config_inputs
        if spec and self.mask_input not in graph_inputs:
            raise pb_utils.TritonModelException(
                f"{path}: its metadata says input {self.mask_input!r} chooses tasks, but the graph's inputs are "
                f"{graph_inputs}; compile the graph again")
        unknown = [n for n in config_inputs if n not in graph_inputs]
        images = [n for n in graph_inputs if n != self.mask_input]
        if unknown or len(images) != 1 or images[0] not in config_inputs:
            raise pb_utils.TritonModelException(
                f"{path}: the configuration's inputs {config_inputs} do not fit the graph's {graph_inputs}; write "
                "the repository again with subtune triton-repo")
        self.input_name = images[0]

    def _mask(self, request, asked, batch):
        """The request's rows of the mask (the module docstring's rules)."""
        k = len(self.columns)
        wanted = np.zeros(k, dtype=bool)
        if asked:
            for name in asked:
                if name in self.columns:
                    wanted[self.columns[name]] = True
        else:
            wanted[:] = True
        sent = pb_utils.get_input_tensor_by_name(request, self.mask_input) if self.client_mask else None
        if sent is None:
            return np.broadcast_to(wanted, (batch, k))
        mask = sent.as_numpy()
        if mask.dtype != np.bool_ or mask.ndim != 2 or mask.shape != (batch, k):
            raise RequestError(
                f"input '{self.mask_input}' must be BOOL [{batch}, {k}] (one row per image of the request, one "
                f"column per task: {', '.join(self.columns)}), found {mask.dtype} of shape {list(mask.shape)}; "
                f"send one row per image, or leave '{self.mask_input}' out and request the outputs you want")
        return mask & wanted

    def execute(self, requests):
        errors = [None] * len(requests)
        arrays, asked, masks = [], [], []
        for i, request in enumerate(requests):
            array = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
            want = request.requested_output_names()  # empty: every output
            if self.mask_input is not None:
                try:
                    masks.append(self._mask(request, want, len(array)))
                except RequestError as e:
                    errors[i] = str(e)
                    continue
            arrays.append(array)
            asked.append(want)
        if not arrays:
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(e)) for e in errors]
        if all(asked):
            wanted = set().union(*asked)
            names = [n for n in self.output_names if n in wanted]
        else:
            names = self.output_names
        batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        feeds = {self.input_name: batch}
        if self.mask_input is not None:
            feeds[self.mask_input] = mask = np.ascontiguousarray(masks[0] if len(masks) == 1 else np.concatenate(masks))
            if self.log_task_rows:
                per_task = ", ".join(f"{name} {int(n)}" for name, n in zip(self.columns, mask.sum(axis=0)))
                pb_utils.Logger.log_info(f"subtune: one run of {len(batch)} image(s) from {len(arrays)} request(s); "
                                         f"images per task: {per_task}")
        try:
            results = self.session.run(names, feeds)
        except Exception as e:  # noqa: BLE001 - one error answer per request, the model keeps serving
            error = pb_utils.TritonError(f"ONNX Runtime failed on a batch of {len(batch)}: {e}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        if len(requests) == 1:
            return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(n, r) for n, r in zip(names, results)])]
        responses, start, ran = [], 0, iter(zip(arrays, asked))
        for error in errors:
            if error is not None:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(error)))
                continue
            array, want = next(ran)
            stop = start + len(array)  # row slices of C-contiguous outputs: contiguous views, no copy here
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(n, r[start:stop]) for n, r in zip(names, results) if not want or n in want]))
            start = stop
        return responses

    def finalize(self):
        self.session = None
