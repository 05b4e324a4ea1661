"""The encoder engine: BUILD/encoder.onnx -> a TensorRT plan, built by NVIDIA's own `trtexec`.

Precision (GPU.md, MODEL.md section 8): FastConformer under FP16 has produced NaNs (LayerNorm/Softmax
overflow), and the log-mel front end needs real FP32. The weakly typed build (--fp16 or --bf16, deprecated
since TensorRT 10.12 but accepted by 10.14) therefore obeys per-layer FP32 pins:
- the front end by one prefix pattern, `/frontend/*`. trtexec allows one '*' per name (TensorRT 10.14
  samples/common/sampleUtils.cpp, matchStringWithOneWildcard) and skips pattern matches on shape and
  integer layers, so the length arithmetic under /frontend/ stays as it is;
- for fp16, every LayerNormalization and Softmax by its exact name, read from the ONNX file: the ONNX
  parser gives a node's layer the node's name, and a list read from the graph fails loudly (no such node)
  where a pattern would silently match nothing. Before the file exists (a dry run) the command shows the
  patterns that the TorchScript exporter's names (`<scope>/LayerNormalization`) would match.
--noTF32 because TF32 keeps only FP16's 10-bit mantissa: the pinned layers must really run in FP32.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from .presets import Preset, require_executable

ENGINE = "encoder.plan"
FRONTEND = "/frontend/"
FP32_OPS = {"fp16": ("LayerNormalization", "Softmax"), "bf16": ()}  # bf16 has FP32's range: no overflow


def fp32_layers(onnx_path: Path, precision: str) -> list[str]:
    """Layer names, or one-wildcard patterns, that the engine must keep in FP32."""
    ops = FP32_OPS[precision]
    if not onnx_path.is_file():
        return [FRONTEND + "*", *(f"*/{op}" for op in ops)]
    import onnx

    nodes = onnx.load(str(onnx_path), load_external_data=False).graph.node  # names only, not the weights
    if not any(node.name.startswith(FRONTEND) for node in nodes):
        raise ValueError(f"{onnx_path}: no node named {FRONTEND}...: the front end cannot be pinned to FP32")
    names = []
    for op in ops:
        found = [node.name for node in nodes if node.op_type == op]
        if not found:
            raise ValueError(f"{onnx_path} has no {op} node to pin to FP32 (exported below opset 17?)")
        names += [name for name in found if not name.startswith(FRONTEND)]
    unusable = [name for name in names if not name or "," in name or "'" in name]  # trtexec's separators
    if unusable:
        raise ValueError(f"{onnx_path}: node names trtexec cannot address: {unusable[:5]}")
    return [FRONTEND + "*", *names]


def trtexec_command(onnx_path: Path, engine_path: Path, preset: Preset, timing_cache: Path | None = None) -> list[str]:
    """The full trtexec invocation for this preset's profile and precision."""
    shapes = preset.encoder_shapes()

    def profile(i: int) -> str:  # i: 0 min, 1 opt, 2 max
        return ",".join(f"{name}:{'x'.join(map(str, dims[i]))}" for name, dims in shapes.items())

    pins = ",".join(f"{name}:fp32" for name in fp32_layers(onnx_path, preset.encoder_precision))
    return [
        "trtexec",
        f"--onnx={onnx_path}",
        f"--saveEngine={engine_path}",
        f"--minShapes={profile(0)}",
        f"--optShapes={profile(1)}",
        f"--maxShapes={profile(2)}",
        f"--timingCacheFile={timing_cache or engine_path.with_suffix('.timing.cache')}",
        "--builderOptimizationLevel=3",
        f"--memPoolSize=workspace:{preset.workspace_mib}M",
        "--skipInference",
        f"--{preset.encoder_precision}",
        "--noTF32",
        "--precisionConstraints=obey",
        f"--layerPrecisions={pins}",
    ]


def build_encoder_engine(onnx_path: Path, engine_path: Path, preset: Preset, timing_cache: Path | None = None) -> Path:
    require_executable("trtexec")
    if not onnx_path.is_file():
        raise FileNotFoundError(f"encoder ONNX {onnx_path} not found: export it first")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(trtexec_command(onnx_path, engine_path, preset, timing_cache), check=True)
    return engine_path
