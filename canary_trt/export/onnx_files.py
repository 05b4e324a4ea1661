"""ONNX files as the build directory keeps them: `<name>.onnx` + all weights in one `<name>.onnx.data`.

Models over 2 GB cannot hold their weights inside the protobuf, and exporters scatter them over one
file per tensor; a single data file beside every graph keeps builds uniform and easy to copy.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path


@contextlib.contextmanager
def onnx_file(path: Path):
    """Yield a scratch path to export to; on success, rewrite it as `path` + `path.onnx.data`."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as scratch:
        scratch_path = Path(scratch) / path.name
        yield scratch_path
        model = onnx.load(str(scratch_path))
        data = path.with_name(path.name + ".data")
        data.unlink(missing_ok=True)  # onnx appends to an existing data file
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=data.name, size_threshold=0)  # fmt: skip
