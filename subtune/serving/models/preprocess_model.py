"""Triton python-backend model: encoded images (JPEG, PNG, … bytes) -> the graph's `images`
tensor, preprocessed as the tasks were trained (the graph's subtune.preprocess metadata).

Written by `subtune triton-repo --preprocess`; runs inside Triton's backend stub, first step of the
ensemble. Per image, as subtune's own image loader does: decode with Pillow, convert to RGB,
resize to (H, W) with bilinear filtering, scale to [0, 1], subtract the mean, divide by the std.
An image that cannot be decoded fails its own request with a clear error; the others in the same
batch are answered.
"""

import io
import json

import numpy as np
import triton_python_backend_utils as pb_utils
from PIL import Image


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        pre = json.loads(config["parameters"]["preprocess"]["string_value"])
        self.height, self.width = (int(v) for v in pre["image_size"])
        self.mean = np.asarray(pre["mean"], dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(pre["std"], dtype=np.float32).reshape(3, 1, 1)
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]

    def _image(self, data):
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("RGB").resize((self.width, self.height), Image.BILINEAR)
            pixels = np.asarray(im, dtype=np.uint8)
        x = pixels.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
        return (x - self.mean) / self.std

    def execute(self, requests):
        responses = []
        for request in requests:
            items = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy().reshape(-1)
            out = np.empty((len(items), 3, self.height, self.width), dtype=np.float32)
            try:
                for i, item in enumerate(items):
                    out[i] = self._image(bytes(item))
            except Exception as e:  # noqa: BLE001 - Pillow raises many kinds for bad bytes
                msg = (f"image {i} of the request is not a decodable image ({type(e).__name__}: {e}); "
                       "send the encoded file's bytes (JPEG, PNG, ...)")
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(msg)))
                continue
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, out)]))
        return responses
