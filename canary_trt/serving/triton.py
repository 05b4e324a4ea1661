"""Small helpers over triton_python_backend_utils shared by the models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from ..manifest import read_manifest


class BadRequest(ValueError):
    """An input the model refuses; its message goes back to the client, the server keeps serving."""


def parameters(args: dict) -> dict[str, str]:
    config = json.loads(args["model_config"])
    return {key: value["string_value"] for key, value in config.get("parameters", {}).items()}


def build_manifest(args: dict) -> tuple[Path, dict]:
    build = Path(parameters(args)["build_dir"])
    return build, read_manifest(build)


def tensor(request, name: str, required: bool = True) -> np.ndarray | None:
    value = pb_utils.get_input_tensor_by_name(request, name)
    if value is None:
        if required:
            raise BadRequest(f"missing input {name}")
        return None
    return value.as_numpy()


def respond(outputs: dict[str, np.ndarray]):
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(k, v) for k, v in outputs.items()])


def error(message: str):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))


def per_request(requests, handle) -> list:
    """One response per request: handle(request) -> outputs, or the request's own error."""
    responses = []
    for request in requests:
        try:
            responses.append(respond(handle(request)))
        except BadRequest as e:
            responses.append(error(str(e)))
    return responses
