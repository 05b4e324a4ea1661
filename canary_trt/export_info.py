"""BUILD/export.json: what `canary-trt export` produced and what a runtime needs to know about it.

Torch-free: ONNX Runtime backends and Triton python models read it.
"""

from __future__ import annotations

import json
from pathlib import Path

from .contract import EXPORT_INFO
from .errors import MissingFile


def write_export_info(build: Path, manifest: dict) -> None:
    (Path(build) / EXPORT_INFO).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def read_export_info(build: Path) -> dict:
    path = Path(build) / EXPORT_INFO
    if not path.is_file():
        raise MissingFile(f"{path} not found: run `canary-trt export --checkpoint DIR --out {build}` first")
    return json.loads(path.read_text(encoding="utf-8"))
