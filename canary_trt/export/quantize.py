"""8-bit weight-only quantization of the exported decoder: the opt-in CPU speed path (CPU_PERF.md).

Every MatMul with a constant weight (projections, MLP, the tied lm_head) becomes a MatMulNBits with
8-bit blocks of 128 and int8 compute (accuracy_level 4: with fp32 compute the same model is ~50x slower).
The embedding lookup is outside the graph and stays fp32. fp32 remains the exact path; this one drifts.
"""

from __future__ import annotations

import logging
from pathlib import Path

INT8_NAME = "decoder_int8.onnx"


def quantize_decoder_int8(decoder_onnx, out_path) -> Path:
    """Write the quantized decoder to out_path (normally `decoder_int8.onnx`) with its weights beside it
    in `<name>.data`."""
    from onnxruntime.quantization import matmul_nbits_quantizer

    # The module logs every node it visits at INFO (it configures the root logger so on import).
    logging.getLogger(matmul_nbits_quantizer.__name__).setLevel(logging.WARNING)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.with_name(out_path.name + ".data").unlink(missing_ok=True)  # onnx appends to an existing one
    quantizer = matmul_nbits_quantizer.MatMulNBitsQuantizer(str(decoder_onnx), bits=8, block_size=128, accuracy_level=4)
    quantizer.process()
    quantizer.model.save_model_to_file(str(out_path), use_external_data_format=True)
    return out_path
