"""Low-bit weights for the exported graphs: the opt-in CPU speed paths (`--precision int8` and `int4`). fp32
remains the exact path; these drift, by amounts measured in benchmarks/README.md, not assumed.

Decoder: every MatMul with a constant weight (projections, MLP, the tied lm_head) becomes a MatMulNBits
with weight-only blocks (asymmetric, round to nearest) and int8 compute (ACCURACY_LEVEL). int8: 8-bit blocks
of 128. int4: 4-bit blocks of 32, the lm_head kept at 8 bit (the choices and their measurements are below).
The embedding lookup is outside the graph and stays fp32.
Encoder (both precisions): ONNX Runtime's dynamic quantization (per-channel int8 weights, int8 GEMMs) of the
MatMuls with constant weights; the front end (/frontend/) and the attention products stay fp32.
"""

from __future__ import annotations

import logging
from pathlib import Path

# Measured on the full-size model (benchmarks/results/int4_choices.json, 2-core AVX2 machine):
# Weights per scale. 4 bit: 32, not 128: one MatMul's output error 8.1% against 10.1% (Gaussian random weights;
# real ones have outliers, which smaller blocks contain better), decode steps as fast (0.26 vs 0.27 s/token),
# prefill ~10% slower, +0.15 GB.
BLOCK_SIZE = {8: 128, 4: 32}
# The lm_head's bits. 4 bit keeps it at 8: its error goes straight into the argmax (alone on Gaussian rows, 4 bit
# changed the top token in 20% of rows, 8 bit in 0 to 2%), and 4 bit would save only 0.12 GB and ~0.06 s of each
# ~0.26 s decode step.
HEAD_BITS = {8: 8, 4: 8}
# int8 compute (activations quantized per block): with fp32 compute (0) the 4-bit decoder's steps are 7x slower
# (1.93 s/token); the 8-bit one's were ~50x slower when int8 was added.
ACCURACY_LEVEL = 4


def quantize_decoder(decoder_onnx, out_path, bits: int, block_size: int | None = None,
                     head_bits: int | None = None) -> Path:  # fmt: skip
    """Write the decoder with `bits`-bit MatMulNBits weights to out_path (normally `decoder_int8.onnx` or
    `decoder_int4.onnx`), its weights beside it in `<name>.data`. block_size (the body's; a head at other bits
    gets its own width's) and head_bits default to the measured choices (BLOCK_SIZE, HEAD_BITS); the arguments
    are for measuring others."""
    import onnx
    from onnxruntime.quantization import matmul_nbits_quantizer

    # The module logs every node it visits at INFO (it configures the root logger so on import).
    logging.getLogger(matmul_nbits_quantizer.__name__).setLevel(logging.WARNING)
    head_bits = head_bits or HEAD_BITS[bits]
    model = onnx.load(str(decoder_onnx))
    head = lm_head_name(model.graph)
    # One pass per bit width: the body first (the head left out when it gets other bits), then the head,
    # the only MatMul with a constant weight left.
    passes = [(bits, block_size or BLOCK_SIZE[bits], [head] if head_bits != bits else [])]
    if head_bits != bits:
        passes.append((head_bits, BLOCK_SIZE[head_bits], []))
    for pass_bits, block, exclude in passes:
        quantizer = matmul_nbits_quantizer.MatMulNBitsQuantizer(model, bits=pass_bits, block_size=block,
                                                                accuracy_level=ACCURACY_LEVEL, nodes_to_exclude=exclude)  # fmt: skip
        quantizer.process()
        model = quantizer.model.model
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.with_name(out_path.name + ".data").unlink(missing_ok=True)  # onnx appends to an existing one
    quantizer.model.save_model_to_file(str(out_path), use_external_data_format=True)
    return out_path


def lm_head_name(graph) -> str:
    """The lm_head MatMul's name: the one whose constant weight has a vocabulary-wide output (logits' last dim)."""
    vocab = next(o for o in graph.output if o.name == "logits").type.tensor_type.shape.dim[-1].dim_value
    weights = {t.name: t.dims for t in graph.initializer}
    heads = [n.name for n in graph.node if n.op_type == "MatMul" and list(weights.get(n.input[1], [])[-1:]) == [vocab]]
    if len(heads) != 1:
        raise ValueError(f"expected one lm_head MatMul with a [*, {vocab}] weight, found {heads}")
    return heads[0]


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
