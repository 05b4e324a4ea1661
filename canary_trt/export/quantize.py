"""8-bit weights for the exported graphs: the opt-in CPU speed path (`--precision int8`). fp32 remains
the exact path; this one drifts, by amounts measured in benchmarks/README.md, not assumed.

Decoder: every MatMul with a constant weight (projections, MLP, the tied lm_head) becomes a MatMulNBits
with 8-bit blocks of 128 and int8 compute (accuracy_level 4: with fp32 compute the same model is ~50x
slower). The embedding lookup is outside the graph and stays fp32.
Encoder: ONNX Runtime's dynamic quantization (per-channel int8 weights, int8 GEMMs) of the MatMuls with
constant weights; the front end (/frontend/) and the attention products stay fp32.
"""

from __future__ import annotations

import logging
from pathlib import Path



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


def quantize_encoder_int8(encoder_onnx, out_path) -> Path:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(encoder_onnx), load_external_data=False).graph
    constants = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    keep_fp32 = [n.name for n in graph.node
                 if n.name.startswith("/frontend/") or (n.op_type == "MatMul" and not constants & set(n.input))]  # fmt: skip
    out_path = Path(out_path)
    out_path.with_name(out_path.name + ".data").unlink(missing_ok=True)
    quantize_dynamic(str(encoder_onnx), str(out_path), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul"], nodes_to_exclude=keep_fp32, use_external_data_format=True)  # fmt: skip
    return out_path
