"""The encoder engine build without a GPU: the FP32 layer selection on plain data and on a model of the network
TensorRT's parser makes of our real encoder ONNX, the engine precision check, the command line, and the build
function run against a fake `tensorrt` (tests/fake_tensorrt) whose every used name must be a name of the real
10.14.1 bindings (tests/data/tensorrt-bindings-10.14.1.48.post1.txt, recorded from the PyPI wheel and the
NVIDIA/TensorRT v10.14 sources by running this file: `python tests/test_tensorrt_engine.py --help`)."""

import importlib
import importlib.util
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from canary_trt.export import tensorrt
from canary_trt.export.presets import TENSORRT_VERSION, TRITON_CONTAINER, get_preset
from canary_trt.export.tensorrt import EngineBuildError, LayerInfo

HERE = Path(__file__).parent
FAKE = HERE / "fake_tensorrt"
BINDINGS = HERE / "data" / "tensorrt-bindings-10.14.1.48.post1.txt"
WHEEL = "tensorrt_cu12_bindings-10.14.1.48.post1-cp311-none-manylinux_2_28_x86_64.whl"
TENSORRT_COMMIT = "3b4ddc1d45f11167f2ea53dc6046bba8df800e2d"  # NVIDIA/TensorRT tag v10.14, VERSION 10.14.1.48


# -- the fake bindings -------------------------------------------------------------------------------------------


@pytest.fixture
def fake_trt(monkeypatch):
    """The fake `tensorrt`, freshly imported, its record empty."""
    monkeypatch.syspath_prepend(str(FAKE))
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    module = importlib.import_module("tensorrt")
    assert module.__file__.startswith(str(FAKE))
    yield module
    sys.modules.pop("tensorrt", None)


def small_encoder_onnx(path: Path) -> Path:
    """A graph with the encoder's contract and the node kinds that matter: the front end's length mask (int
    arithmetic, a Cast BOOL -> FLOAT), an int -> float Cast, scalar constants, the mel weight as an initializer,
    a Where; then a LayerNormalization, a Softmax, a MatMul and an Add."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper
    import numpy as np

    def const(name, value, dtype):
        value = numpy_helper.from_array(np.array(value, dtype=dtype))
        return h.make_node("Constant", [], [name], value=value, name=name.removesuffix("_output_0"))

    f = "/frontend/"
    nodes = [
        const(f + "Constant_output_0", 1, np.int64), const(f + "Constant_1_output_0", 0, np.int64),
        const(f + "Constant_2_output_0", [1], np.int64), const(f + "Constant_3_output_0", 0.97, np.float32),
        const(f + "Constant_4_output_0", 1.0, np.float32), const(f + "Constant_5_output_0", 0.0, np.float32),
        h.make_node("Cast", ["WAV_LENS"], ["lens"], to=T.INT64, name=f + "Cast"),
        h.make_node("Shape", ["WAV"], ["shape"], name=f + "Shape"),
        h.make_node("Gather", ["shape", f + "Constant_output_0"], ["n"], axis=0, name=f + "Gather"),
        h.make_node("Range", [f + "Constant_1_output_0", "n", f + "Constant_output_0"], ["idx"], name=f + "Range"),
        h.make_node("Unsqueeze", ["lens", f + "Constant_2_output_0"], ["lens2"], name=f + "Unsqueeze"),
        h.make_node("Less", ["idx", "lens2"], ["mask"], name=f + "Less"),
        h.make_node("Cast", ["mask"], ["maskf"], to=T.FLOAT, name=f + "Cast_1"),
        h.make_node("Mul", ["WAV", "maskf"], ["masked"], name=f + "Mul"),
        h.make_node("Mul", ["masked", f + "Constant_3_output_0"], ["scaled"], name=f + "Mul_1"),
        h.make_node("MatMul", ["scaled", "frontend.fb"], ["mel"], name=f + "MatMul"),
        h.make_node("Log", ["mel"], ["logmel"], name=f + "Log"),
        h.make_node("Cast", ["lens2"], ["count"], to=T.FLOAT, name=f + "Cast_2"),
        h.make_node("Div", ["logmel", "count"], ["normed"], name=f + "Div"),
        h.make_node("Greater", ["count", f + "Constant_4_output_0"], ["many"], name=f + "Greater"),
        h.make_node("Where", ["many", "normed", f + "Constant_5_output_0"], ["features"], name=f + "Where"),
        h.make_node("LayerNormalization", ["features", "encoder.norm.weight", "encoder.norm.bias"], ["h1"], axis=-1,
                    name="/encoder/layers.0/norm/LayerNormalization"),
        h.make_node("Softmax", ["h1"], ["p"], axis=-1, name="/encoder/layers.0/self_attn/Softmax"),
        h.make_node("MatMul", ["p", "encoder.w"], ["h2"], name="/encoder/layers.0/self_attn/MatMul"),
        h.make_node("Add", ["h2", "h1"], ["audio_embeddings"], name="/encoder/layers.0/Add"),
        h.make_node("Cast", ["lens"], ["audio_lengths"], to=T.INT32, name="/encoder/Cast"),
    ]  # fmt: skip
    weights = [numpy_helper.from_array(np.full(shape, 0.5, np.float32), name)
               for name, shape in (("frontend.fb", (4, 3)), ("encoder.norm.weight", (3,)), ("encoder.norm.bias", (3,)),
                                   ("encoder.w", (3, 3)))]  # fmt: skip
    graph = h.make_graph(
        nodes, "encoder",
        [h.make_tensor_value_info("WAV", T.FLOAT, ["batch", 4]), h.make_tensor_value_info("WAV_LENS", T.INT32, ["batch"])],
        [h.make_tensor_value_info("audio_embeddings", T.FLOAT, ["batch", 3]),
         h.make_tensor_value_info("audio_lengths", T.INT32, ["batch"])],
        weights,
    )  # fmt: skip
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]), str(path))
    return path


def _network(trt, onnx_path):
    network = trt.Builder(trt.Logger()).create_network(0)
    assert trt.OnnxParser(network, None).parse_from_file(str(onnx_path))
    return network


# -- the selection on plain data ---------------------------------------------------------------------------------


def _layer(index, name, layer_type, inputs, outputs, node=None, **kw):
    return LayerInfo(index, name, layer_type, tuple(inputs), tuple(outputs),
                     node=name if node is None and not name.startswith("(") else node or "", **kw)  # fmt: skip


F, H, I64, B = "FLOAT", "HALF", "INT64", "BOOL"
PLAIN = [
    _layer(0, "/frontend/Cast_1", "CAST", [B], [F]),  # the #3570 case
    _layer(1, "/frontend/Cast_2", "CAST", [I64], [F]),  # the frame count: output type only
    _layer(2, "/frontend/Identity", "IDENTITY", [F], [F]),  # float -> float: pinned
    _layer(3, "/frontend/Less", "ELEMENTWISE", [I64, I64], [B]),
    _layer(4, "/frontend/Where", "SELECT", [B, F, F], [F]),
    _layer(5, "/frontend/Shape", "SHAPE", [F], [I64], shape_tensor=True),
    _layer(6, "/frontend/Reshape", "SHUFFLE", [F], [F], shape_tensor=True),  # a float shape tensor
    _layer(7, "/frontend/ConstantOfShape", "FILL", [I64], [F]),
    _layer(8, "frontend.fb", "CONSTANT", [], [F], node=""),
    _layer(9, "(Unnamed Layer* 9) [Shuffle]", "SHUFFLE", [F], [F], input_tensors=("c",), output_tensors=("s9",)),
    _layer(10, "/frontend/Mul", "ELEMENTWISE", [F, F], [F], input_tensors=("x", "s9"), output_tensors=("m",)),
    _layer(11, "(Unnamed Layer* 11) [Shuffle]", "SHUFFLE", [F], [F], input_tensors=("c2",), output_tensors=("s11",)),
    _layer(12, "/encoder/norm/LayerNormalization", "NORMALIZATION", [F, F, F], [F], input_tensors=("m", "s11")),
    _layer(13, "/encoder/att/Softmax", "SHUFFLE", [F], [F]),  # the parser's reshape for the Softmax node
    _layer(14, "/encoder/att/Softmax_1", "SOFTMAX", [F], [F], node="/encoder/att/Softmax"),
    _layer(15, "/encoder/att/Softmax_2", "SHAPE", [F], [I64], node="/encoder/att/Softmax", shape_tensor=True),
    _layer(16, "/encoder/att/MatMul", "MATRIX_MULTIPLY", [F, F], [F]),
]  # fmt: skip


def test_selection_pins_float_compute_only():
    pins = tensorrt.select_fp32_layers(PLAIN, "fp16")
    pinned = {layer.index for layer in pins.precision}
    assert pinned == {2, 4, 8, 9, 10, 12, 13, 14}
    assert [layer.index for layer in pins.output_only] == [1]
    assert pins.counts == Counter({"front end": 5, "LayerNorm": 1, "Softmax": 2, tensorrt.CAST_OUTPUTS: 1})
    assert pins.frontend_left == Counter({"conversion from bool/int": 1, "non-float output": 1, "shape tensor": 1,
                                          "shape, control or quantize layer": 1, "no float input": 1})  # fmt: skip
    # the unnamed shuffle feeding the encoder's LayerNorm is not the front end's
    assert 11 not in tensorrt.frontend_layers(PLAIN) and 9 in tensorrt.frontend_layers(PLAIN)
    assert "front end 5, LayerNorm 1, Softmax 2" in pins.summary()

    bf16 = tensorrt.select_fp32_layers(PLAIN, "bf16")
    assert {layer.index for layer in bf16.precision} == {2, 4, 8, 9, 10}


def test_selection_fails_loudly():
    without = [layer for layer in PLAIN if layer.type != "NORMALIZATION"]
    with pytest.raises(EngineBuildError, match="no NORMALIZATION layer"):
        tensorrt.select_fp32_layers(without, "fp16")
    assert tensorrt.select_fp32_layers(without, "bf16").counts["front end"] == 5  # bf16 pins no LayerNorm
    encoder_only = [layer for layer in PLAIN if layer.index >= 11]
    with pytest.raises(EngineBuildError, match="no front-end layer"):
        tensorrt.select_fp32_layers(encoder_only, "fp16")
    int_softmax = PLAIN + [_layer(17, "/encoder/x/Softmax", "SOFTMAX", [I64], [I64])]
    with pytest.raises(EngineBuildError, match="Softmax.*does not compute in float"):
        tensorrt.select_fp32_layers(int_softmax, "fp16")
    with pytest.raises(ValueError, match="fp16"):
        tensorrt.select_fp32_layers(PLAIN, "fp32")


def test_onnx_node_from_metadata():
    assert tensorrt.onnx_node("[ONNX Layer: /frontend/Mul]") == "/frontend/Mul"
    assert tensorrt.onnx_node("[ONNX Layer: /a/b | Local Function: f]") == "/a/b"
    assert tensorrt.onnx_node("") == tensorrt.onnx_node(None) == ""


# -- the selection on the real encoder graph ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_encoder_onnx(tiny_checkpoint, tmp_path_factory):
    from canary_trt.export.encoder_onnx import export_encoder_onnx

    return export_encoder_onnx(tiny_checkpoint, tmp_path_factory.mktemp("encoder"))


def _onnx_types(path):
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path), load_external_data=False))
    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    types.update({init.name: init.data_type for init in graph.initializer})
    for node in graph.node:
        if node.op_type == "Constant":
            types[node.output[0]] = next(a.t.data_type for a in node.attribute if a.name == "value")
    return graph, types


@pytest.mark.slow
def test_selection_on_the_real_encoder_graph(real_encoder_onnx, tiny_checkpoint, fake_trt):
    from onnx import TensorProto

    graph, types = _onnx_types(real_encoder_onnx)
    layers = tensorrt.describe_network(fake_trt, _network(fake_trt, real_encoder_onnx))
    pins = tensorrt.select_fp32_layers(layers, "fp16")
    pinned = {layer.index for layer in pins.precision}
    print(pins.summary())

    for layer in pins.precision:  # nothing that converts from, or computes in, bool or int
        assert layer.type not in ("CAST", "SHAPE", "ASSERTION") and not layer.shape_tensor, layer
        assert all(t in tensorrt.FLOAT_TYPES for t in layer.outputs), layer
        if layer.type == "IDENTITY":
            assert all(t in tensorrt.FLOAT_TYPES for t in layer.inputs), layer
    for layer in pins.output_only:
        assert layer.type == "CAST" and layer.outputs == ("FLOAT",) and layer.inputs[0] in ("INT32", "INT64")

    # every front-end node that computes in float is pinned (float outputs; float inputs but for constant
    # parameters such as ReduceSum's axes), and so is its Where (a computed bool condition)
    floats = {TensorProto.FLOAT}
    weights = {init.name for init in graph.initializer} | {n.output[0] for n in graph.node if n.op_type == "Constant"}
    by_node = {}
    for layer in layers:
        by_node.setdefault(layer.node, []).append(layer)
    front = [node for node in graph.node if node.name.startswith("/frontend/") and node.op_type != "Constant"]
    compute = [node for node in front if all(types[t] in floats for t in node.output)
               and all(types[t] in floats or t in weights for t in node.input if t)]  # fmt: skip
    assert {node.op_type for node in compute} >= {"Conv", "MatMul", "Log", "Mul", "Sub", "Div", "Sqrt", "ReduceSum"}
    for node in compute + [node for node in front if node.op_type == "Where"]:
        assert {layer.index for layer in by_node[node.name]} <= pinned, node.name
    constants = {layer.name: layer for layer in layers if layer.type == "CONSTANT"}
    assert constants["frontend.fb"].index in pinned  # the mel filterbank stays FP32 (the DFT is the Conv's kernel)
    # the casts from bool exist and are left alone (NVIDIA/TensorRT#3570); the frame count keeps FP32 outputs
    from_bool = [node.name for node in front if node.op_type == "Cast" and types[node.input[0]] == TensorProto.BOOL]
    assert from_bool and not {layer.index for name in from_bool for layer in by_node[name]} & pinned
    assert [layer.node for layer in pins.output_only] == [node.name for node in front if node.op_type == "Cast"
                                                          and types[node.input[0]] == TensorProto.INT64
                                                          and types[node.output[0]] == TensorProto.FLOAT]  # fmt: skip
    # unnamed broadcast helpers: pinned in the front end only
    helpers = [layer for layer in layers if layer.name.startswith(tensorrt.UNNAMED) and layer.outputs == ("FLOAT",)]
    frontend = tensorrt.frontend_layers(layers)
    assert any(h.index in frontend for h in helpers) and any(h.index not in frontend for h in helpers)
    assert all((h.index in pinned) == (h.index in frontend) for h in helpers)

    n_layers = tiny_checkpoint.config["perception"]["encoder"]["n_layers"]
    assert pins.counts["LayerNorm"] == n_layers * 5 == sum(n.op_type == "LayerNormalization" for n in graph.node)
    assert pins.counts["Softmax"] == n_layers == sum(n.op_type == "Softmax" for n in graph.node)
    outside = [layer for layer in pins.precision if layer.index not in frontend]
    assert {layer.type for layer in outside} == {"NORMALIZATION", "SOFTMAX"}

    bf16 = tensorrt.select_fp32_layers(layers, "bf16")
    assert {layer.index for layer in bf16.precision} == {layer.index for layer in pins.precision if layer.index in frontend}


# -- the engine check --------------------------------------------------------------------------------------------


def _engine_layer(name, formats, metadata=None, parameter_type=None):
    layer = {"Name": name, "LayerType": "x", "Inputs": [{"Format/Datatype": f} for f in formats[:1]],
             "Outputs": [{"Format/Datatype": f} for f in formats[1:]]}  # fmt: skip
    if metadata is not None:
        layer["Metadata"] = "\x1e".join(f"[ONNX Layer: {n}]" for n in metadata)
    if parameter_type:
        layer["ParameterType"] = parameter_type
    return layer


FP32, FP16 = "Row major linear FP32", "Channel major FP16 format where channel % 8 == 0"


def test_engine_check_names_dropped_pins():
    info = {"Layers": [
        _engine_layer("/frontend/Mul + /frontend/Add", [FP32, FP32], ["/frontend/Mul", "/frontend/Add"]),
        _engine_layer("{ForeignNode[/enc/norm/LayerNormalization.../enc/att/Softmax]}", [FP16, FP16],
                      ["/enc/norm/LayerNormalization", "/enc/att/Softmax"]),  # pinned only, yet FP16: #3889
        _engine_layer("{ForeignNode[/enc/norm2/LayerNormalization.../enc/ff/MatMul]}", [FP16, FP16],
                      ["/enc/norm2/LayerNormalization", "/enc/ff/MatMul"]),  # fused with an unpinned MatMul
        _engine_layer("Reformatting CopyNode", [FP16, FP32], ["/frontend/Mul"], parameter_type="Reformat"),
        _engine_layer("/frontend/Log", ["Row major linear Int32", "Float"]),  # no metadata: matched by name
    ]}  # fmt: skip
    pinned = {"/frontend/Mul", "/frontend/Add", "/frontend/Log", "/enc/norm/LayerNormalization", "/enc/att/Softmax",
              "/enc/norm2/LayerNormalization", "/frontend/Sqrt"}  # fmt: skip
    check = tensorrt.check_engine_precisions(info, pinned, {"/enc/ff/MatMul"})
    assert check.verified == {"/frontend/Mul", "/frontend/Add", "/frontend/Log"}
    assert set(check.dropped) == {"/enc/norm/LayerNormalization", "/enc/att/Softmax"}
    assert check.unverifiable == {
        "/enc/norm2/LayerNormalization": "{ForeignNode[/enc/norm2/LayerNormalization.../enc/ff/MatMul]}"}
    assert check.not_found == {"/frontend/Sqrt"}
    assert "2 dropped" in check.summary()
    with pytest.raises(ValueError, match="DETAILED"):
        tensorrt.check_engine_precisions({"Layers": ["name only"]}, pinned, set())


def test_tensor_precision_strings():
    # the Format/Datatype strings trt-engine-explorer knows (activations.py @3b4ddc1d)
    assert [tensorrt.tensor_precision(s) for s in ("Row major linear FP32", "Float", "Half", "BFloat16",
            "Row major linear BFloat16 format", "Row major linear FP16 format", "Row major linear Int32", "Bool")] == [
        "FLOAT", "FLOAT", "HALF", "BF16", "BF16", "HALF", None, None]  # fmt: skip


# -- the command line --------------------------------------------------------------------------------------------


def test_build_command(tmp_path):
    p = get_preset("h100")
    command = tensorrt.build_command(tmp_path / "encoder.onnx", tmp_path / "encoder.plan", p, tmp_path / "t.cache")
    assert command == [sys.executable, "-m", "canary_trt.export.tensorrt", "--onnx", str(tmp_path / "encoder.onnx"),
                       "--engine", str(tmp_path / "encoder.plan"), "--preset", "h100", "--precision", "fp16",
                       "--timing-cache", str(tmp_path / "t.cache")]  # fmt: skip
    bf16 = tensorrt.build_command(tmp_path / "e.onnx", tmp_path / "e.plan", get_preset("l40s", encoder_precision="bf16"))
    assert bf16[-5:] == ["l40s", "--precision", "bf16", "--timing-cache", str(tmp_path / "e.timing.cache")]
    # the LLM's budgets do not change the encoder; its own shapes cannot cross the command line
    tensorrt.build_command(tmp_path / "e.onnx", tmp_path / "e.plan", get_preset("h100", max_new_tokens=64))
    with pytest.raises(ValueError, match="encoder overrides"):
        tensorrt.build_command(tmp_path / "e.onnx", tmp_path / "e.plan", get_preset("h100", opt_seconds=10))


def test_dry_run_prints_the_build_command(tiny_checkpoint, tmp_path):
    import shlex

    from canary_trt.export.build import export

    lines = []
    export(tiny_checkpoint.path, tmp_path, "gpu", stage="engines", dry_run=True, log=lines.append)
    out = tmp_path.resolve()
    expected = shlex.join(tensorrt.build_command(out / "encoder.onnx", out / "encoder.plan", get_preset("h100"),
                                                 out / "timing.cache"))  # fmt: skip
    assert "      $ " + expected in lines


def test_entry_point_names_the_missing_module(tmp_path):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    command = tensorrt.build_command(tmp_path / "e.onnx", tmp_path / "e.plan", get_preset("h100"))
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode != 0 and "`tensorrt`" in result.stderr and TRITON_CONTAINER in result.stderr


# -- the build against the fake bindings -------------------------------------------------------------------------


def test_build_in_a_child_process(tmp_path):
    """The command the export runs, end to end on the fake bindings: the builder settings and the pins."""
    onnx_path = small_encoder_onnx(tmp_path / "encoder.onnx")
    p = get_preset("a100")
    command = tensorrt.build_command(onnx_path, tmp_path / "out" / "encoder.plan", p, tmp_path / "timing.cache")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(FAKE), os.environ.get("PYTHONPATH", "")]),
           "FAKE_TENSORRT_RECORD": str(tmp_path / "names.json")}  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    print(result.stdout)
    assert "FP32 pins: front end" in result.stdout and "0 dropped" in result.stdout
    plan = (tmp_path / "out" / "encoder.plan").read_bytes()
    settings = json.loads(plan[len(b"FAKEPLAN"):])["settings"]
    assert settings["flags"] == ["BuilderFlag.FP16", "BuilderFlag.OBEY_PRECISION_CONSTRAINTS"]  # TF32 cleared
    assert settings["pools"] == {"MemoryPoolType.WORKSPACE": p.workspace_mib << 20}
    assert settings["builder_optimization_level"] == 3 and settings["profiling_verbosity"] == "ProfilingVerbosity.DETAILED"
    assert settings["profiles"] == [{name: [list(s) for s in shapes] for name, shapes in p.encoder_shapes().items()}]
    f = "/frontend/"
    assert settings["pinned"] == sorted([
        f + "Mul", f + "Mul_1", f + "MatMul", f + "Log", f + "Div", f + "Where", "frontend.fb",
        f + "Constant_3_output_0", f + "Constant_4_output_0", f + "Constant_5_output_0",
        "(Unnamed Layer* 12) [Shuffle]", "(Unnamed Layer* 20) [Shuffle]",  # the scalars' broadcasts
        "/encoder/layers.0/norm/LayerNormalization", "/encoder/layers.0/self_attn/Softmax"])  # fmt: skip
    assert set(settings["output_types"]) - set(settings["pinned"]) == {f + "Cast_2"}
    assert (tmp_path / "timing.cache").is_file()
    assert "tensorrt" not in sys.modules or not sys.modules["tensorrt"].__file__.startswith(str(FAKE))
    assert set(json.loads((tmp_path / "names.json").read_text())) <= _recorded_names()


def _build(trt, tmp_path, precision="fp16", **kw):
    onnx_path = kw.pop("onnx_path", None) or small_encoder_onnx(tmp_path / "encoder.onnx")
    lines = []
    engine = tmp_path / "encoder.plan"
    tensorrt.build_engine(onnx_path, engine, get_preset("h100", encoder_precision=precision), log=lines.append, **kw)
    return engine, lines


def test_build_failures_are_named(fake_trt, tmp_path, monkeypatch):
    import onnx

    model = onnx.load(str(small_encoder_onnx(tmp_path / "ok.onnx")))
    model.graph.node[-1].op_type = "STFT"  # no importer
    onnx.save(model, str(tmp_path / "bad.onnx"))
    with pytest.raises(EngineBuildError, match=r"(?s)parser rejected .*node '/encoder/Cast' \(STFT\): no importer"):
        _build(fake_trt, tmp_path, onnx_path=tmp_path / "bad.onnx")
    with pytest.raises(EngineBuildError, match="not found"):
        _build(fake_trt, tmp_path, onnx_path=tmp_path / "missing.onnx")

    (tmp_path / "encoder.timing.cache").write_bytes(b"other device")
    with pytest.raises(EngineBuildError, match="timing cache does not fit"):
        _build(fake_trt, tmp_path)
    (tmp_path / "encoder.timing.cache").unlink()

    monkeypatch.setenv("FAKE_TENSORRT_FAIL", "build")
    with pytest.raises(EngineBuildError, match="could not build the engine"):
        _build(fake_trt, tmp_path)
    monkeypatch.delenv("FAKE_TENSORRT_FAIL")

    _build(fake_trt, tmp_path)  # a good engine, which a failed build must not leave behind
    monkeypatch.setenv("FAKE_TENSORRT_DROP", "/encoder/layers.0/self_attn/Softmax")
    with pytest.raises(EngineBuildError, match=r"1 FP32-pinned nodes run in FP16.*\n  /encoder/layers.0/self_attn/Softmax"):
        _build(fake_trt, tmp_path)
    assert not (tmp_path / "encoder.plan").exists()  # nothing half-checked is left to serve
    engine, lines = _build(fake_trt, tmp_path, precision_check="warn")
    assert engine.is_file() and any(line.startswith("WARNING: 1 FP32-pinned") for line in lines)


def test_build_pins_what_the_selection_chose(fake_trt, tmp_path):
    engine, lines = _build(fake_trt, tmp_path, precision="bf16")
    settings = json.loads(engine.read_bytes()[len(b"FAKEPLAN"):])["settings"]
    assert "BuilderFlag.BF16" in settings["flags"] and "BuilderFlag.FP16" not in settings["flags"]
    assert not [name for name in settings["pinned"] if name.startswith("/encoder/")]  # bf16: the front end only
    assert lines[0].startswith("FP32 pins: front end 12;") and "engine check of FP32 pins: 6 nodes kept FP32" in lines[1]


# -- the names against the real bindings -------------------------------------------------------------------------


def used_names(tmp_path: Path) -> set[str]:
    """Every name of the bindings the build touches: fp16 and bf16 builds, a parse failure, a failed build."""
    sys.path.insert(0, str(FAKE))
    sys.modules.pop("tensorrt", None)
    try:
        trt = importlib.import_module("tensorrt")
        onnx_path = small_encoder_onnx(tmp_path / "names.onnx")
        for precision, verbose in (("fp16", False), ("bf16", True)):
            _build(trt, tmp_path, precision, onnx_path=onnx_path, verbose=verbose)
        import onnx

        model = onnx.load(str(onnx_path))
        model.graph.node[-1].op_type = "STFT"
        onnx.save(model, str(tmp_path / "bad.onnx"))
        with pytest.raises(EngineBuildError):
            _build(trt, tmp_path, onnx_path=tmp_path / "bad.onnx")
        os.environ["FAKE_TENSORRT_FAIL"] = "build"
        try:
            with pytest.raises(EngineBuildError):
                _build(trt, tmp_path, onnx_path=onnx_path)
        finally:
            del os.environ["FAKE_TENSORRT_FAIL"]
        return set(trt._RECORD)
    finally:
        sys.path.remove(str(FAKE))
        sys.modules.pop("tensorrt", None)


def _recorded_names() -> set[str]:
    lines = [line for line in BINDINGS.read_text().splitlines() if line and not line.startswith("#")]
    return {line.split("\t")[0] for line in lines}


def test_the_build_uses_only_names_of_the_real_bindings(tmp_path):
    header = BINDINGS.read_text().splitlines()[:6]
    assert any(WHEEL in line for line in header) and any(TENSORRT_COMMIT in line for line in header)
    assert WHEEL.split("-")[1].startswith(TENSORRT_VERSION)  # the container's pin
    used = used_names(tmp_path)
    assert {"Builder.build_serialized_network", "BuilderFlag.OBEY_PRECISION_CONSTRAINTS", "ParserError.node_name",
            "ILayer.set_output_type", "MemoryPoolType.WORKSPACE", "ICudaEngine.create_engine_inspector"} <= used
    missing = sorted(used - _recorded_names())
    assert not missing, f"not checked against the 10.14.1 bindings (record them: python {__file__} --help): {missing}"


# -- recording the names from the wheel (not a test) -------------------------------------------------------------


def _source_declarations(git_dir: str, commit: str) -> dict[str, str]:
    """"Class.member" -> "file:line" of the pybind11 declarations under python/src at `commit`."""
    import re

    def git(*args):
        return subprocess.run(["git", "-C", git_dir, *args], capture_output=True, text=True, check=True).stdout

    declaration = re.compile(r'py::(?:class_|enum_)<[^;{]*?>\s*(\w*)\s*[({]\s*(\w+)\s*,\s*"(\w+)"')
    member = re.compile(r'\.(?:def|def_property|def_property_readonly|def_readwrite|def_readonly|def_static|value)'
                        r'\(\s*"(\w+)"')  # fmt: skip
    attribute = re.compile(r'\bm\.attr\(\s*"(\w+)"\s*\)')
    found = {}
    for path in git("ls-tree", "-r", "--name-only", commit, "python/src").split():
        if not path.endswith(".cpp"):
            continue
        text = git("show", f"{commit}:{path}")
        events = sorted([(m.start(), "class", m.groups()) for m in declaration.finditer(text)]
                        + [(m.start(), "member", m.group(1)) for m in member.finditer(text)]
                        + [(m.start(), "attr", m.group(1)) for m in attribute.finditer(text)])  # fmt: skip
        variables, current = {}, None
        for position, kind, value in events:
            where = f"{path}:{text.count(chr(10), 0, position) + 1}"
            if kind == "class":
                variable, scope, name = value
                current = name if scope == "m" else f"{variables.get(scope, scope)}.{name}"
                if variable:
                    variables[variable] = name
                found.setdefault(current, where)
                found.setdefault(name, where)  # an enum's own members are written Enum.MEMBER
            elif kind == "attr":
                found.setdefault(value, where)
            elif current:
                found.setdefault(f"{current.rsplit('.', 1)[-1]}.{value}", where)
    return found


def record(wheel: Path, git_dir: str, out: Path = BINDINGS) -> None:
    import hashlib
    import tempfile
    import zipfile

    with zipfile.ZipFile(wheel) as z:
        so_name = next(n for n in z.namelist() if n.endswith("/tensorrt.so"))
        so = z.read(so_name)
    declarations = _source_declarations(git_dir, TENSORRT_COMMIT)

    def in_binary(word):  # a NUL-terminated string; the linker may store it as the tail of a longer one
        needle, found, start = word.encode() + b"\0", [], 0
        while (at := so.find(needle, start)) >= 0:
            begin = at
            while begin > 0 and (chr(so[begin - 1]).isalnum() or so[begin - 1] == ord("_")):
                begin -= 1
            found.append(so[begin:at].decode())
            start = at + 1
        if "" in found:
            return word
        return f"~{min(found, key=len)}{word}" if found else None

    rows, problems = [], []
    with tempfile.TemporaryDirectory() as scratch:
        names = sorted(used_names(Path(scratch)))
    for name in names:
        evidence = [in_binary(part) for part in name.split(".")]
        if None in evidence or name not in declarations:
            problems.append(name)
        rows.append(f"{name}\t{declarations.get(name)}\t{' '.join(map(str, evidence))}")
    if problems:
        raise SystemExit(f"not in the 10.14.1 bindings: {problems}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join([
        "# The TensorRT Python names canary_trt/export/tensorrt.py uses, each found in the 10.14.1 bindings:",
        f"# {wheel.name} (PyPI; sha256 {hashlib.sha256(wheel.read_bytes()).hexdigest()}), its {so_name},",
        f"# and the pybind11 declaration in NVIDIA/TensorRT python/src at {TENSORRT_COMMIT} (v10.14, 10.14.1.48).",
        "# Columns: name, declaration (file:line), each dotted part in tensorrt.so's strings",
        "# ('~longer': stored as the tail of a longer string by the linker's string merging).",
        "# Regenerate: python tests/test_tensorrt_engine.py --wheel WHEEL --tensorrt-git DIR",
        *rows,
    ]) + "\n")  # fmt: skip
    print(f"wrote {out}: {len(rows)} names")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=f"record {BINDINGS.name} from the bindings wheel and the sources")
    parser.add_argument("--wheel", type=Path, required=True, help=f"{WHEEL} (pip download --no-deps "
                        "tensorrt-cu12-bindings==10.14.1.48.post1)")  # fmt: skip
    parser.add_argument("--tensorrt-git", required=True, help=f"a git clone of NVIDIA/TensorRT holding {TENSORRT_COMMIT}")
    args = parser.parse_args()
    record(args.wheel, args.tensorrt_git)
