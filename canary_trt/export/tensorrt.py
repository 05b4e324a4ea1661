"""The encoder engine: BUILD/encoder.onnx -> a TensorRT plan, built with TensorRT's own Python API.

Why not `trtexec`: the pinned container unpacks TensorRT under /usr/local/tensorrt and puts only its lib/ on the
library path (TensorRT-LLM docker/common/install_tensorrt.sh, NVIDIA/TensorRT-LLM@0237cabd; Triton's build sets
TRT_ROOT=/usr/local/tensorrt, triton-inference-server/server build.py r26.04@dd16c0ca, while its QA scripts call
/usr/src/tensorrt/bin/trtexec by full path), so `trtexec` is not on PATH there. The `tensorrt` Python module is:
TensorRT-LLM depends on it (requirements.txt, NVIDIA/TensorRT-LLM@000867d9). Like the TensorRT-LLM convert step
(trtllm.py) the build is a command, `python -m canary_trt.export.tensorrt ...`, so a dry run prints exactly what
runs and `tensorrt` is imported in that process only.

Precision (docs/MODEL.md#precision): FastConformer under FP16 has produced NaNs (LayerNorm/Softmax overflow),
and the log-mel front end needs real FP32. The build is weakly typed (BuilderFlag FP16 or BF16) and obeys
per-layer FP32 pins, chosen from the PARSED network by `select_fp32_layers`, a pure function of the layers'
names, types and tensor types, so it is tested without a GPU:
- the front end (ONNX nodes named /frontend/..., its weights frontend.*), and for fp16 every LayerNorm
  (NORMALIZATION) and Softmax (SOFTMAX) layer with its helper layers;
- only layers that compute in float. A pattern pin as `--layerPrecisions=/frontend/*:fp32` reaches Cast layers
  from booleans, and a FLOAT precision on a conversion from bool fails the build under obey (NVIDIA/TensorRT#3570,
  #2761). trtexec's own filter (samples/common/sampleEngines.cpp setLayerPrecisions, NVIDIA/TensorRT@3b4ddc1d =
  v10.14, VERSION 10.14.1.48) skips only int/bool default precisions, int constants, a shape-tensor input 0 and
  layers whose input 0 AND output 0 are int/bool: a Cast BOOL -> FLOAT passes it. Our graph has two of them.
Pins can still be dropped inside fused regions (NVIDIA/TensorRT#3889: a Myelin region ran a pinned LayerNorm in
FP16), so after the build the engine inspector's per-layer tensor formats are checked (`check_engine_precisions`):
a region made only of pinned layers that has FP16/BF16 tensors fails the build, naming those layers.
TF32 is cleared: it keeps only FP16's 10-bit mantissa in products, and the pinned layers must really be FP32.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .presets import (
    ENCODER_PRECISIONS,
    PRESETS,
    TENSORRT_VERSION,
    MissingToolError,
    Preset,
    get_preset,
    require_module,
)

MODULE = "canary_trt.export.tensorrt"
BUILDER_OPTIMIZATION_LEVEL = 3  # TensorRT's default ("The default optimization level is 3", pyCoreDoc.h@3b4ddc1d)
# Torch names a node by its module scope (/frontend/...) and an initializer by its state-dict path (frontend.fb);
# the parser names a layer after its node, and the constant layer it makes for an initializer after the
# initializer (ImporterContext.cpp registerLayer, importerUtils.cpp convertToTensor, onnx/onnx-tensorrt 10.1-GA
# @96e78110; the 10.14 parser is submodule parsers/onnx@c7272770, not readable here).
FRONTEND_NODE, FRONTEND_WEIGHTS = "/frontend/", "frontend."
UNNAMED = "(Unnamed Layer"  # TensorRT's default layer name, "(Unnamed Layer* 522) [Shuffle]" (NVIDIA/TensorRT#3224)

# tensorrt.DataType / LayerType member names of the 10.14 bindings (python/src/infer/pyFoundationalTypes.cpp and
# pyGraph.cpp @3b4ddc1d; all present in tensorrt_cu12_bindings 10.14.1.48.post1's tensorrt.so).
DATA_TYPES = ("FLOAT", "HALF", "BF16", "INT8", "INT32", "INT64", "BOOL", "UINT8", "FP8", "INT4", "FP4", "E8M0")
FLOAT_TYPES = frozenset({"FLOAT", "HALF", "BF16"})
INTEGER_TYPES = frozenset({"INT8", "INT32", "INT64", "UINT8", "INT4"})
LAYER_TYPES = (
    "CONVOLUTION", "GRID_SAMPLE", "NMS", "ACTIVATION", "POOLING", "LRN", "SCALE", "SOFTMAX", "DECONVOLUTION",
    "CONCATENATION", "ELEMENTWISE", "PLUGIN", "UNARY", "PADDING", "SHUFFLE", "REDUCE", "TOPK", "GATHER",
    "MATRIX_MULTIPLY", "RAGGED_SOFTMAX", "CONSTANT", "IDENTITY", "CAST", "PLUGIN_V2", "SLICE", "SHAPE",
    "PARAMETRIC_RELU", "RESIZE", "TRIP_LIMIT", "RECURRENCE", "ITERATOR", "LOOP_OUTPUT", "SELECT", "ASSERTION",
    "FILL", "QUANTIZE", "DEQUANTIZE", "CONDITION", "CONDITIONAL_INPUT", "CONDITIONAL_OUTPUT", "SCATTER", "EINSUM",
    "ONE_HOT", "NON_ZERO", "REVERSE_SEQUENCE", "NORMALIZATION", "PLUGIN_V3", "SQUEEZE", "UNSQUEEZE", "CUMULATIVE",
    "DYNAMIC_QUANTIZE", "ATTENTION_INPUT", "ATTENTION_OUTPUT",
)  # fmt: skip
# Never pinned (our choice; none occurs in the encoder): shape arithmetic, control flow, (de)quantization,
# plugins (their own precisions) and the attention markers. SHAPE outputs are shape tensors, whose layer output
# type TensorRT ignores with an error (NvInfer.h ILayer::setOutputType doc @3b4ddc1d).
NEVER_PINNED = frozenset({
    "SHAPE", "ASSERTION", "TRIP_LIMIT", "RECURRENCE", "ITERATOR", "LOOP_OUTPUT", "CONDITION", "CONDITIONAL_INPUT",
    "CONDITIONAL_OUTPUT", "NON_ZERO", "QUANTIZE", "DEQUANTIZE", "DYNAMIC_QUANTIZE", "PLUGIN", "PLUGIN_V2",
    "PLUGIN_V3", "ATTENTION_INPUT", "ATTENTION_OUTPUT",
})  # fmt: skip
# Type conversions: a FLOAT precision is valid only when they convert between float types (NvInfer.h
# ILayer::setPrecision doc on IIdentityLayer @3b4ddc1d; #3570, #2761).
CONVERSIONS = frozenset({"CAST", "IDENTITY"})
FP16_KINDS = {"NORMALIZATION": "LayerNorm", "SOFTMAX": "Softmax"}  # bf16 has FP32's range: no overflow to avoid
FRONTEND = "front end"
CAST_OUTPUTS = "front-end int->float casts (output type only)"


class EngineBuildError(RuntimeError):
    """A step of the encoder engine build failed; the message names what and where."""


@dataclass(frozen=True)
class LayerInfo:
    """What the selection needs of one network layer, as plain data."""

    index: int
    name: str
    type: str  # a LayerType member name ("OTHER" if unknown)
    inputs: tuple[str | None, ...]  # DataType member names; None: an optional input left out
    outputs: tuple[str | None, ...]
    input_tensors: tuple[str | None, ...] = ()  # tensor names, to follow the graph
    output_tensors: tuple[str | None, ...] = ()
    shape_tensor: bool = False  # input 0 or an output is a shape tensor (which may be Float: ITensor doc)
    node: str = ""  # the ONNX node the parser made it for, from the layer's metadata; "" if none


def onnx_node(metadata: str) -> str:
    """The node name in the parser's layer metadata "[ONNX Layer: <name> | ...]" (importerUtils.cpp
    processMetadata, onnx-tensorrt 10.1-GA @96e78110), or ""."""
    found = re.search(r"\[ONNX Layer: (.*?)(?: \| [^\]]*)?\]", metadata or "")
    return found.group(1) if found else ""


def float_compute_reason(layer: LayerInfo) -> str | None:
    """None if the layer computes in float and can take an FP32 pin; otherwise why not."""
    inputs = [t for t in layer.inputs if t is not None]
    outputs = [t for t in layer.outputs if t is not None]
    if layer.type in NEVER_PINNED:
        return "shape, control or quantize layer"
    if layer.shape_tensor:
        return "shape tensor"
    if not outputs or any(t not in FLOAT_TYPES for t in outputs):
        return "non-float output"
    if layer.type in CONVERSIONS and any(t not in FLOAT_TYPES for t in inputs):
        return "conversion from bool/int"
    if layer.type != "CONSTANT" and not any(t in FLOAT_TYPES for t in inputs):
        return "no float input"  # e.g. FILL from a shape; a SELECT or GATHER has float data inputs
    return None


def _provenance(layer: LayerInfo) -> str:
    return layer.node or layer.name


def frontend_layers(layers: list[LayerInfo]) -> set[int]:
    """Indices of the front end's layers: by node or weight name, plus unnamed helper layers (e.g. the shuffle
    that broadcasts a scalar constant) whose every consumer is in the front end. Layers are in topological
    order (the parser adds them node by node), so one backward pass settles chains of helpers."""
    member = {
        layer.index
        for layer in layers
        if _provenance(layer).startswith(FRONTEND_NODE)
        or (layer.type == "CONSTANT" and layer.name.startswith(FRONTEND_WEIGHTS))
    }
    consumers = defaultdict(list)
    for layer in layers:
        for tensor in layer.input_tensors:
            if tensor:
                consumers[tensor].append(layer.index)
    for layer in reversed(layers):
        if layer.index in member or layer.node or not layer.name.startswith(UNNAMED):
            continue
        users = [user for tensor in layer.output_tensors if tensor for user in consumers.get(tensor, ())]
        if users and all(user in member for user in users):
            member.add(layer.index)
    return member


@dataclass
class Pins:
    """The layers to pin: `precision` get layer.precision = FP32 and FP32 output types; `output_only` (int ->
    float casts in the front end, e.g. the frame count, exact in FP16 only up to 2048) get the output type."""

    precision: list[LayerInfo] = field(default_factory=list)
    output_only: list[LayerInfo] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)  # pinned layers by kind
    frontend_left: Counter = field(default_factory=Counter)  # front-end layers not pinned, by reason

    def summary(self) -> str:
        pinned = ", ".join(f"{kind} {n}" for kind, n in self.counts.items() if kind != CAST_OUTPUTS)
        left = ", ".join(f"{reason} {n}" for reason, n in sorted(self.frontend_left.items()))
        return (f"FP32 pins: {pinned}; {CAST_OUTPUTS}: {self.counts[CAST_OUTPUTS]}; "
                f"front-end layers left as they are: {left or 'none'}")  # fmt: skip


def select_fp32_layers(layers: list[LayerInfo], precision: str) -> Pins:
    """The FP32 pins for an fp16 or bf16 build. Fails where the network cannot carry the pins it needs."""
    if precision not in ENCODER_PRECISIONS:
        raise ValueError(f"encoder precision must be one of {ENCODER_PRECISIONS}, not {precision!r}")
    front = frontend_layers(layers)
    kinds = FP16_KINDS if precision == "fp16" else {}
    kind_of_node = {layer.node: kinds[layer.type] for layer in layers if layer.type in kinds and layer.node}
    pins = Pins()
    for layer in layers:
        reason = float_compute_reason(layer)
        if layer.index in front:
            if reason is None:
                pins.precision.append(layer)
                pins.counts[FRONTEND] += 1
            elif (layer.type == "CAST" and layer.inputs and all(t in INTEGER_TYPES for t in layer.inputs if t)
                  and all(t == "FLOAT" for t in layer.outputs if t)):  # fmt: skip
                pins.output_only.append(layer)
                pins.counts[CAST_OUTPUTS] += 1
            else:
                pins.frontend_left[reason] += 1
        elif layer.type in kinds or (layer.node in kind_of_node and reason is None):
            # the LayerNorm / Softmax layer and the float helpers the parser made for the same node
            if reason is not None:
                raise EngineBuildError(f"{layer.type} layer {layer.name!r} does not compute in float ({reason}): "
                                       "it cannot be pinned to FP32")  # fmt: skip
            pins.precision.append(layer)
            pins.counts[kinds.get(layer.type) or kind_of_node[layer.node]] += 1
    if not pins.counts[FRONTEND]:
        raise EngineBuildError(f"no front-end layer ({FRONTEND_NODE}... or {FRONTEND_WEIGHTS}...) computes in "
                               "float: the front end cannot be pinned to FP32 (not an ONNX of encoder_onnx.py?)")  # fmt: skip
    for layer_type, kind in kinds.items():
        if not any(layer.type == layer_type for layer in layers):
            raise EngineBuildError(f"the network has no {layer_type} layer to pin ({kind}): exported below opset 17, "
                                   "or decomposed into elementwise layers?")  # fmt: skip
    return pins


# -- the engine check --------------------------------------------------------------------------------------------


def tensor_precision(desc: str) -> str | None:
    """FLOAT / HALF / BF16 from an engine-inspector "Format/Datatype" string ("Row major linear FP32",
    "Channel major FP16 format ...", "Half", "BFloat16": trt-engine-explorer activations.py @3b4ddc1d), or None
    for other types."""
    if "BFloat16" in desc or "BF16" in desc:
        return "BF16"
    if "FP16" in desc or "Half" in desc:
        return "HALF"
    if "FP32" in desc or "Float" in desc:
        return "FLOAT"
    return None


@dataclass
class PrecisionCheck:
    verified: set = field(default_factory=set)  # pinned nodes in engine layers whose float tensors are all FP32
    unverifiable: dict = field(default_factory=dict)  # node -> engine layer also holding unpinned float nodes
    dropped: dict = field(default_factory=dict)  # node -> engine layer of pinned nodes only, with FP16/BF16 tensors
    not_found: set = field(default_factory=set)  # pinned nodes no engine layer names (folded or eliminated)

    def summary(self) -> str:
        return (f"engine check of FP32 pins: {len(self.verified)} nodes kept FP32, {len(self.dropped)} dropped, "
                f"{len(self.unverifiable)} fused with unpinned layers (unverifiable from the region's tensors), "
                f"{len(self.not_found)} not in the engine's layer list")  # fmt: skip


def check_engine_precisions(info: dict, pinned: set[str], unpinned_float: set[str]) -> PrecisionCheck:
    """`info`: the engine inspector's JSON (LayerInformationFormat.JSON of an engine built with
    ProfilingVerbosity.DETAILED): {"Layers": [{"Name", "LayerType", "Inputs"/"Outputs": [{"Format/Datatype"}],
    "Metadata": "[ONNX Layer: ...]<0x1E>..."}]}, as trt-engine-explorer reads it (parser.py, layer.py @3b4ddc1d).
    `pinned`: the ONNX nodes pinned to FP32; `unpinned_float`: nodes with float layers left to the builder."""
    layers = info.get("Layers") if isinstance(info, dict) else None
    if not layers or not all(isinstance(layer, dict) for layer in layers):
        raise ValueError("the engine information has no per-layer details (build with ProfilingVerbosity.DETAILED)")
    known = pinned | unpinned_float
    rank = {"verified": 0, "unverifiable": 1, "dropped": 2}
    status: dict[str, tuple[str, str]] = {}
    for layer in layers:
        if layer.get("ParameterType") == "Reformat":  # TensorRT's own conversions between regions
            continue
        nodes = set(re.findall(r"\[ONNX Layer: (.*?)(?: \| [^\]]*)?\]", layer.get("Metadata") or ""))
        if not nodes:  # no metadata: the names in a fused layer's name ("a + b", "{ForeignNode[a...b]}")
            nodes = {token.strip() for token in re.split(r" \+ |\.\.\.|[(){}\[\],]", layer.get("Name", ""))} & known
        held = nodes & pinned
        if not held:
            continue
        tensors = [t.get("Format/Datatype", "") for t in layer.get("Inputs", []) + layer.get("Outputs", [])]
        reduced = any(tensor_precision(t) in ("HALF", "BF16") for t in tensors if isinstance(t, str))
        verdict = "verified" if not reduced else "unverifiable" if nodes & unpinned_float else "dropped"
        for node in held:
            if node not in status or rank[verdict] > rank[status[node][0]]:
                status[node] = (verdict, layer.get("Name", "?"))
    check = PrecisionCheck(not_found=pinned - status.keys())
    for node, (verdict, engine_layer) in status.items():
        if verdict == "verified":
            check.verified.add(node)
        else:
            getattr(check, verdict)[node] = engine_layer
    return check


# -- the build ---------------------------------------------------------------------------------------------------


def default_timing_cache(engine_path: Path) -> Path:
    return engine_path.with_suffix(".timing.cache")


def build_command(onnx_path: Path, engine_path: Path, preset: Preset, timing_cache: Path | None = None) -> list[str]:
    """The build as the dry run prints it; the child rebuilds the preset from its name and precision."""
    rebuilt = get_preset(preset.name, encoder_precision=preset.encoder_precision)
    if (rebuilt.encoder_shapes(), rebuilt.workspace_mib) != (preset.encoder_shapes(), preset.workspace_mib):
        raise ValueError(f"preset {preset.name!r} has encoder overrides beyond its precision; "
                         "`python -m canary_trt.export.tensorrt` takes only --preset and --precision")  # fmt: skip
    return [sys.executable, "-m", MODULE, "--onnx", str(onnx_path), "--engine", str(engine_path),
            "--preset", preset.name, "--precision", preset.encoder_precision,
            "--timing-cache", str(timing_cache or default_timing_cache(engine_path))]  # fmt: skip


def describe_network(trt, network) -> list[LayerInfo]:
    """Every layer of a parsed network as plain data. is_shape_tensor is reliable once the network is complete
    (NvInfer.h ITensor::isShapeTensor doc @3b4ddc1d): after parsing."""
    layer_types = {getattr(trt.LayerType, name): name for name in LAYER_TYPES}
    data_types = {getattr(trt.DataType, name): name for name in DATA_TYPES}
    layers = []
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        inputs = [layer.get_input(i) for i in range(layer.num_inputs)]
        outputs = [layer.get_output(i) for i in range(layer.num_outputs)]
        layers.append(LayerInfo(
            index=index, name=layer.name, type=layer_types.get(layer.type, "OTHER"),
            inputs=tuple(None if t is None else data_types.get(t.dtype, "OTHER") for t in inputs),
            outputs=tuple(None if t is None else data_types.get(t.dtype, "OTHER") for t in outputs),
            input_tensors=tuple(None if t is None else t.name for t in inputs),
            output_tensors=tuple(None if t is None else t.name for t in outputs),
            shape_tensor=bool(inputs and inputs[0] is not None and inputs[0].is_shape_tensor)
            or any(t is not None and t.is_shape_tensor for t in outputs),
            node=onnx_node(layer.metadata),
        ))  # fmt: skip
    return layers


def apply_pins(trt, network, pins: Pins) -> None:
    # ILayer.precision and set_output_type warn "Deprecated in TensorRT 10.12. Superseded by strong typing."
    # (python/src/infer/pyGraph.cpp @3b4ddc1d) on every call; they still work in 10.14, and the weakly typed
    # build is the point here, so the warning is silenced instead of printed hundreds of times.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        for info in pins.precision:
            layer = network.get_layer(info.index)
            layer.precision = trt.float32
            for i, dtype in enumerate(info.outputs):
                if dtype in FLOAT_TYPES:
                    layer.set_output_type(i, trt.float32)
        for info in pins.output_only:
            network.get_layer(info.index).set_output_type(0, trt.float32)


def _parse(trt, network, logger, onnx_path: Path):
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # reads external data beside the file
        errors = [parser.get_error(i) for i in range(parser.num_errors)]
        lines = [f"node {e.node_name()!r} ({e.node_operator() or '?'}): {e.desc()} [{e.code()}]" for e in errors]
        listing = "\n  ".join(lines or ["(no error recorded)"])
        raise EngineBuildError(f"TensorRT's ONNX parser rejected {onnx_path}:\n  {listing}")
    return parser  # owns the weights the network points at: keep it alive until the engine is built


def _configure(trt, builder, network, preset: Preset, cache_bytes: bytes):
    shapes = preset.encoder_shapes()
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    if sorted(names) != sorted(shapes):
        raise EngineBuildError(f"the encoder ONNX has inputs {names}, the profile is for {list(shapes)}")
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in shapes.items():
        # tuples become Dims (pyFoundationalTypes.cpp); raises on inconsistent shapes (pyCore.cpp @3b4ddc1d)
        profile.set_shape(name, low, opt, high)
    config = builder.create_builder_config()
    if config.add_optimization_profile(profile) < 0:
        raise EngineBuildError(f"TensorRT rejected the optimization profile {shapes}")
    # FP16 / BF16 and the precision constraints are deprecated since 10.12 ("Superseded by strong typing",
    # NvInfer.h @3b4ddc1d) and still honoured by 10.14.
    config.set_flag(trt.BuilderFlag.FP16 if preset.encoder_precision == "fp16" else trt.BuilderFlag.BF16)
    config.clear_flag(trt.BuilderFlag.TF32)  # TF32 is on by default (NvInfer.h BuilderFlag::kTF32)
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)  # a pin without an implementation fails the build
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, preset.workspace_mib << 20)
    config.builder_optimization_level = BUILDER_OPTIMIZATION_LEVEL
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # per-layer formats for the engine inspector
    cache = config.create_timing_cache(cache_bytes)  # b"": a new cache (pyCoreDoc.h create_timing_cache)
    if not config.set_timing_cache(cache, False):  # False: refuse a cache made on another device
        raise EngineBuildError("the timing cache does not fit this TensorRT / GPU: delete it and build again")
    return config


def _check(trt, logger, plan, layers: list[LayerInfo], pins: Pins, mode: str, log) -> None:
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    if engine is None:
        raise EngineBuildError("TensorRT cannot deserialize the engine it has just built")
    info = json.loads(engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON))
    pinned_ids = {layer.index for layer in pins.precision + pins.output_only}  # casts: FP32 outputs as well
    pinned = {layer.node for layer in pins.precision if layer.node}
    unpinned = {layer.node for layer in layers if layer.node and layer.index not in pinned_ids
                and any(t in FLOAT_TYPES for t in layer.outputs)} - pinned  # fmt: skip
    check = check_engine_precisions(info, pinned, unpinned)
    log(check.summary())
    for node, engine_layer in sorted(check.unverifiable.items())[:10]:
        log(f"  unverifiable: {node} (in {engine_layer})")
    if check.dropped:
        listing = "\n  ".join(f"{node} (in {layer})" for node, layer in sorted(check.dropped.items())[:20])
        message = f"{len(check.dropped)} FP32-pinned nodes run in FP16/BF16 in the engine:\n  {listing}"
        if mode == "error":
            raise EngineBuildError(message + "\n(NVIDIA/TensorRT#3889; --precision-check warn builds it anyway)")
        log("WARNING: " + message)


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(path.name + ".partial")
    scratch.write_bytes(memoryview(data))
    os.replace(scratch, path)


def build_engine(onnx_path: Path, engine_path: Path, preset: Preset, timing_cache: Path | None = None,
                 precision_check: str = "error", verbose: bool = False, log=print) -> Path:  # fmt: skip
    """The TensorRT API calls themselves; only `python -m canary_trt.export.tensorrt` runs this."""
    import tensorrt as trt

    if not str(getattr(trt, "__version__", "")).startswith(TENSORRT_VERSION):
        log(f"WARNING: TensorRT {getattr(trt, '__version__', '?')}; this build is pinned to {TENSORRT_VERSION}")
    if not onnx_path.is_file():
        raise EngineBuildError(f"encoder ONNX {onnx_path} not found: export it first")
    timing_cache = timing_cache or default_timing_cache(engine_path)
    engine_path.unlink(missing_ok=True)  # a failed build leaves no engine of an older ONNX behind to be served
    severity = trt.ILogger.Severity
    logger = trt.Logger(severity.VERBOSE if verbose else severity.WARNING)
    builder = trt.Builder(logger)
    if builder is None:
        raise EngineBuildError("TensorRT could not create a builder (no CUDA device?)")
    network = builder.create_network(0)  # EXPLICIT_BATCH is ignored since 10.0, networks always are (NvInfer.h)
    parser = _parse(trt, network, logger, onnx_path)
    layers = describe_network(trt, network)
    pins = select_fp32_layers(layers, preset.encoder_precision)
    apply_pins(trt, network, pins)
    log(pins.summary())
    config = _configure(trt, builder, network, preset, timing_cache.read_bytes() if timing_cache.is_file() else b"")
    plan = builder.build_serialized_network(network, config)
    del parser
    if plan is None:
        raise EngineBuildError("TensorRT could not build the engine (see its log above; under obey precision "
                               "constraints a pinned layer without an FP32 implementation fails here)")  # fmt: skip
    _write(timing_cache, config.get_timing_cache().serialize())
    if precision_check != "off":
        _check(trt, logger, plan, layers, pins, precision_check, log)
    _write(engine_path, plan)
    log(f"wrote {engine_path} ({plan.nbytes / 2**20:.1f} MiB)")
    return engine_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description="encoder ONNX -> TensorRT plan")
    parser.add_argument("--onnx", required=True, type=Path)
    parser.add_argument("--engine", required=True, type=Path)
    parser.add_argument("--preset", required=True, choices=PRESETS)
    parser.add_argument("--precision", required=True, choices=ENCODER_PRECISIONS)
    parser.add_argument("--timing-cache", type=Path, help="default: the engine path with .timing.cache")
    parser.add_argument("--precision-check", choices=("error", "warn", "off"), default="error",
                        help="what a dropped FP32 pin in the built engine does (default: fail the build)")  # fmt: skip
    parser.add_argument("--verbose", action="store_true", help="TensorRT's verbose log")
    args = parser.parse_args(argv)
    try:
        require_module("tensorrt")
    except MissingToolError as e:
        parser.error(str(e))
    preset = get_preset(args.preset, encoder_precision=args.precision)
    try:
        build_engine(args.onnx, args.engine, preset, args.timing_cache, args.precision_check, args.verbose)
    except EngineBuildError as e:
        parser.exit(1, f"{parser.prog}: error: {e}\n")


if __name__ == "__main__":
    main()
