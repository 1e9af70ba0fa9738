"""Triton python-backend model: the image ensemble of a --task-select graph (encoded image bytes ->
NAME_preprocess -> NAME), written by `subtune triton-repo --preprocess` as NAME_ensemble.

Triton's own ensembles ask each step for every output the step maps, whatever the client asked the
ensemble for, so a task-select graph behind one would compute every task for every image. This
model chains the same two steps itself (Triton's business logic scripting, BLS): per request, the
image bytes go to the preprocessing model, the images to the graph model asking for exactly the
outputs the client named (every output when it named none); the graph model builds the task mask
from them. The requests of one `execute` call go out together, so the graph model's dynamic
batcher merges requests for different tasks into one run. A step's error (an undecodable image)
fails that request alone, with the step's message.
"""

import asyncio
import json

import triton_python_backend_utils as pb_utils


def _parameter(config, key):
    value = config.get("parameters", {}).get(key, {}).get("string_value")
    if not value:
        raise pb_utils.TritonModelException(f"{config.get('name')}: parameter {key!r} is missing; write the "
                                            "repository again with subtune triton-repo --preprocess")
    return value


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.bytes_input = config["input"][0]["name"]
        self.output_names = [o["name"] for o in config["output"]]
        self.graph_model = _parameter(config, "graph_model")
        self.preprocess_model = _parameter(config, "preprocess_model")
        self.images = _parameter(config, "images_input")

    async def execute(self, requests):
        return list(await asyncio.gather(*(self._answer(r) for r in requests)))

    async def _answer(self, request):
        data = pb_utils.get_input_tensor_by_name(request, self.bytes_input)
        asked = request.requested_output_names()
        names = [n for n in self.output_names if n in asked] or list(self.output_names)
        pre = await pb_utils.InferenceRequest(model_name=self.preprocess_model, inputs=[data],
                                              requested_output_names=[self.images]).async_exec()
        if pre.has_error():
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(pre.error().message()))
        images = pb_utils.get_output_tensor_by_name(pre, self.images)
        out = await pb_utils.InferenceRequest(model_name=self.graph_model, inputs=[images],
                                              requested_output_names=names).async_exec()
        if out.has_error():
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(out.error().message()))
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.get_output_tensor_by_name(out, n) for n in names])
