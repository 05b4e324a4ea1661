"""Small helpers over triton_python_backend_utils shared by the models.

Every `execute` returns exactly one response per request, in order: a request's own bad input
(`BadRequest`) and any unexpected failure (ONNX Runtime, a bug) become that request's error response,
never an exception escaping `execute` (the python backend would then fail the whole batch at once).
"""

from __future__ import annotations

import asyncio
import json
import traceback
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from ..export_info import read_export_info


class BadRequest(ValueError):
    """An input the model refuses; its message goes back to the client, the server keeps serving."""


def parameters(args: dict) -> dict[str, str]:
    config = json.loads(args["model_config"])
    return {key: value["string_value"] for key, value in config.get("parameters", {}).items()}


def build_manifest(args: dict) -> tuple[Path, dict]:
    # build_dir comes from the model config written by `canary-trt export`; no file is ever opened from
    # request data in any model.
    build = Path(parameters(args)["build_dir"])
    return build, read_export_info(build)


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
    """An internal failure (gRPC INTERNAL, HTTP 500)."""
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))


def refusal(bad: BadRequest):
    """The request's own fault: gRPC INVALID_ARGUMENT (HTTP 400), so clients can tell it from a failure."""
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(bad), pb_utils.TritonError.INVALID_ARG))


def internal_error(model: str, exc: BaseException, count: int = 1) -> list:
    """An unexpected failure: logged once with its traceback, answered as `count` explicit errors."""
    log_error(f"{model}: {''.join(traceback.format_exception(exc)).rstrip()}")
    return [error(f"{model}: internal error: {type(exc).__name__}: {exc}") for _ in range(count)]


def log_error(message: str) -> None:
    try:
        pb_utils.Logger.log_error(message)
    except Exception:  # an older stub without the logger, or no stub at all
        pass


def per_request(requests, handle, model: str) -> list:
    """One response per request: handle(request) -> outputs, or the request's own error."""
    responses = []
    for request in requests:
        try:
            responses.append(respond(handle(request)))
        except BadRequest as e:
            responses.append(refusal(e))
        except Exception as e:
            responses += internal_error(model, e)
    return responses


async def per_request_async(requests, handle, model: str) -> list:
    """per_request for an `async def execute`: handle(request) is awaited for every request at once."""
    outcomes = await asyncio.gather(*(handle(request) for request in requests), return_exceptions=True)
    return per_request(outcomes, _unwrap, model)


def _unwrap(outcome):
    if isinstance(outcome, Exception):
        raise outcome
    if isinstance(outcome, BaseException):  # a cancelled coroutine: still that request's own error response
        raise RuntimeError(f"{type(outcome).__name__}: {outcome}") from outcome
    return outcome


def batched(model: str, requests, parse, run, pack) -> list:
    """The dynamic batch as one run: parse(request) -> that request's items (BadRequest, or any failure,
    answers that request alone), run(all items) -> one result per item (a failure answers every request
    of the run), pack(a request's items, their results) -> its outputs."""
    items, owners, responses = [], [], [None] * len(requests)
    for index, request in enumerate(requests):
        try:
            parsed = parse(request)
        except BadRequest as e:
            responses[index] = refusal(e)
            continue
        except Exception as e:  # a bug, not the client's fault: this request only
            responses[index] = internal_error(model, e)[0]
            continue
        items += parsed
        owners += [index] * len(parsed)
    served = sorted(set(owners))
    if not served:
        return responses
    try:
        results = run(items)
    except Exception as e:  # ONNX Runtime failed: every request of this run gets the error
        for index, response in zip(served, internal_error(model, e, len(served))):
            responses[index] = response
        return responses
    for index in served:
        mine = [i for i, owner in enumerate(owners) if owner == index]
        responses[index] = respond(pack([items[i] for i in mine], [results[i] for i in mine]))
    return responses


def guarded(model: str, requests, execute) -> list:
    """execute(requests) -> responses, checked to hold exactly one response per request; if it raises,
    or leaves a request unanswered, those requests get an explicit internal error instead."""
    try:
        responses = list(execute(requests))
    except Exception as e:
        return internal_error(model, e, len(requests))
    if len(responses) != len(requests):
        log_error(f"{model}: {len(responses)} responses for {len(requests)} requests")
        responses = (responses + [None] * len(requests))[: len(requests)]
    return [r if r is not None else error(f"{model}: internal error: request left unanswered") for r in responses]


async def guarded_async(model: str, requests, execute) -> list:
    """guarded for an `async def execute`: the coroutine execute(requests) is awaited, then checked alike."""
    try:
        responses = await execute(requests)
    except Exception as e:
        return internal_error(model, e, len(requests))
    return guarded(model, requests, lambda batch: responses)
