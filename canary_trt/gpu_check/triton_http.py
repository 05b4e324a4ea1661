"""A minimal Triton HTTP/REST client (KServe v2 protocol + Triton's binary tensor extension): stdlib and
numpy only, because the GPU image installs this package without its dependencies (no tritonclient there).

Tensors travel as raw little-endian bytes (`binary_data_size`), so FP32 audio and embeddings arrive
bit for bit, never through decimal text.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidInput

DTYPES = {"FP32": "<f4", "FP16": "<f2", "INT32": "<i4", "INT64": "<i8", "UINT8": "u1", "BOOL": "?"}
HEADER_LENGTH = "Inference-Header-Content-Length"


class TritonHttpError(RuntimeError):
    """The server could not be reached, or it answered with an error (its own message included)."""


@dataclass(frozen=True)
class Output:
    name: str
    binary: bool = True  # BYTES outputs come back as JSON strings: set False for them


def base_url(url: str) -> str:
    """`host:port` or `http://host:port` -> `http://host:port` (no trailing slash)."""
    url = url.strip().rstrip("/")
    if not url:
        raise InvalidInput("empty server URL: give Triton's HTTP endpoint, e.g. 127.0.0.1:8000")
    return url if url.startswith(("http://", "https://")) else f"http://{url}"


class TritonHttp:
    def __init__(self, url: str, timeout: float = 300.0):
        self.url, self.timeout = base_url(url), timeout

    def get(self, path: str) -> dict:
        return json.loads(self._send(urllib.request.Request(self.url + path))[1] or b"{}")

    def ready(self) -> bool:
        try:
            self._send(urllib.request.Request(self.url + "/v2/health/ready"))
            return True
        except TritonHttpError:
            return False

    def server_metadata(self) -> dict:
        """{"name", "version", "extensions"}."""
        return self.get("/v2")

    def model_config(self, model: str) -> dict:
        return self.get(f"/v2/models/{model}/config")

    def infer(self, model: str, inputs: dict[str, np.ndarray], outputs: list[Output]) -> dict[str, np.ndarray]:
        """One request; inputs by name (dtype from the array: float32, int32, ...). BYTES outputs come
        back as object arrays of str."""
        header = {"inputs": [], "outputs": [{"name": o.name, "parameters": {"binary_data": o.binary}} for o in outputs]}
        chunks = []
        for name, array in inputs.items():
            datatype = _datatype(name, array)
            raw = np.ascontiguousarray(array, dtype=DTYPES[datatype]).tobytes()
            header["inputs"].append({"name": name, "shape": list(array.shape), "datatype": datatype,
                                     "parameters": {"binary_data_size": len(raw)}})  # fmt: skip
            chunks.append(raw)
        head = json.dumps(header).encode()
        request = urllib.request.Request(
            f"{self.url}/v2/models/{model}/infer", data=head + b"".join(chunks), method="POST",
            headers={"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(head))},
        )  # fmt: skip
        headers, body = self._send(request, what=model)
        return _parse_response(headers, body, model)

    def _send(self, request: urllib.request.Request, what: str | None = None) -> tuple[dict, bytes]:
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return dict(response.headers), response.read()
        except urllib.error.HTTPError as e:
            message = _error_message(e.read())
            raise TritonHttpError(f"{what or request.full_url}: HTTP {e.code}: {message}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise TritonHttpError(f"not reachable at {self.url}: {reason}") from None


def _datatype(name: str, array: np.ndarray) -> str:
    for datatype, dtype in DTYPES.items():
        if array.dtype == np.dtype(dtype):
            return datatype
    raise ValueError(f"input {name}: dtype {array.dtype} is not one this client sends ({', '.join(DTYPES)})")


def _error_message(body: bytes) -> str:
    try:
        return json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", "replace").strip() or "(no message)"


def _parse_response(headers: dict, body: bytes, model: str) -> dict[str, np.ndarray]:
    """JSON header, then each binary output's bytes in the order the header lists them."""
    length = next((int(v) for k, v in headers.items() if k.lower() == HEADER_LENGTH.lower()), len(body))
    header, offset, result = json.loads(body[:length]), length, {}
    for output in header.get("outputs", []):
        name, datatype, shape = output["name"], output["datatype"], output["shape"]
        size = output.get("parameters", {}).get("binary_data_size")
        if size is None:
            result[name] = np.array(output["data"], dtype=object if datatype == "BYTES" else DTYPES[datatype]).reshape(shape)
            continue
        if datatype not in DTYPES:
            raise TritonHttpError(f"{model}: output {name} is binary {datatype}; ask for it as JSON (binary=False)")
        result[name] = np.frombuffer(body[offset : offset + size], dtype=DTYPES[datatype]).reshape(shape)
        offset += size
    return result
