"""A stand-in for TensorRT's Python bindings, for tests on machines without a GPU (tests/test_tensorrt_engine.py).

It records every public name the code under test touches on the module, its classes, their instances and
enums, as "Class.member" (module attributes as bare names), so a test can hold them against the names the real
10.14.1 bindings define. Its OnnxParser builds the network a model of TensorRT's ONNX parser would: one layer per
node, of the type the parser's importer adds (onnx/onnx-tensorrt onnxOpImporters.cpp, branch 10.1-GA @96e78110),
named after the node and carrying "[ONNX Layer: <node>]" metadata; one CONSTANT layer per weight used as a tensor,
named after the weight; an unnamed SHUFFLE broadcasting a weight of lower rank into an elementwise layer; tensor
types from ONNX shape inference. Not modelled: the parser's exact helper layers, shape-tensor analysis beyond
SHAPE layers, and any build: the "engine" lists one layer per network layer, FP32 where pinned, FP16 elsewhere.

Environment: FAKE_TENSORRT_RECORD=<file> writes the recorded names there at exit (for a child process);
FAKE_TENSORRT_DROP=<node> makes that node's engine layer FP16 although pinned (a dropped pin);
FAKE_TENSORRT_FAIL=build makes build_serialized_network return None.
"""

import atexit
import json
import os
import sys
import types

from canary_trt.export.tensorrt import DATA_TYPES, LAYER_TYPES

__version__ = "10.14.1.48.post1"  # the version the recorded names were checked against

_RECORD = set()


def _record(name):
    _RECORD.add(name)


@atexit.register
def _dump():
    path = os.environ.get("FAKE_TENSORRT_RECORD")
    if path:
        with open(path, "w") as f:
            json.dump(sorted(_RECORD), f)


class _Meta(type):
    """Records class-level access (enum members, nested classes) as "Class.name"."""

    def __getattribute__(cls, name):
        if not name.startswith("_"):
            _record(f"{type.__getattribute__(cls, '__name__')}.{name}")
        return type.__getattribute__(cls, name)


class _Recorded(metaclass=_Meta):
    """Records instance access and assignment as "Class.name"."""

    def __getattribute__(self, name):
        if not name.startswith("_"):
            _record(f"{type(self).__name__}.{name}")
        return object.__getattribute__(self, name)

    def __setattr__(self, name, value):
        if not name.startswith("_"):
            _record(f"{type(self).__name__}.{name}")
        object.__setattr__(self, name, value)


class _Value:
    def __init__(self, enum, name):
        self._enum, self._name = enum, name

    def __repr__(self):
        return f"{self._enum}.{self._name}"

    __str__ = __repr__


def _enum(name, members):
    cls = _Meta(name, (), {"_members": members})
    for member in members:
        type.__setattr__(cls, member, _Value(name, member))
    return cls


# Member names as in the 10.14 bindings (python/src/infer/*.cpp, python/src/parsers/pyOnnx.cpp @3b4ddc1d); the two
# long enums are the code's own lists, which tests/test_tensorrt_engine.py holds against the recorded bindings.
DataType = _enum("DataType", DATA_TYPES)
float32, float16, bfloat16 = (type.__getattribute__(DataType, n) for n in ("FLOAT", "HALF", "BF16"))
LayerType = _enum("LayerType", LAYER_TYPES)
BuilderFlag = _enum("BuilderFlag", ["FP16", "BF16", "INT8", "TF32", "OBEY_PRECISION_CONSTRAINTS",
                                    "PREFER_PRECISION_CONSTRAINTS", "REFIT"])  # fmt: skip
MemoryPoolType = _enum("MemoryPoolType", ["WORKSPACE", "TACTIC_SHARED_MEMORY"])
ProfilingVerbosity = _enum("ProfilingVerbosity", ["LAYER_NAMES_ONLY", "DETAILED", "NONE"])
LayerInformationFormat = _enum("LayerInformationFormat", ["ONELINE", "JSON"])
NetworkDefinitionCreationFlag = _enum("NetworkDefinitionCreationFlag", ["EXPLICIT_BATCH", "STRONGLY_TYPED"])
ErrorCode = _enum("ErrorCode", ["SUCCESS", "INTERNAL_ERROR", "INVALID_GRAPH", "INVALID_NODE", "UNSUPPORTED_NODE",
                                "MODEL_DESERIALIZE_FAILED"])  # fmt: skip


class ILogger(_Recorded):
    Severity = _enum("Severity", ["INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"])


class Logger(ILogger):
    def __init__(self, min_severity=None):
        self._severity = min_severity


class ITensor(_Recorded):
    def __init__(self, name, dtype, shape_tensor=False):
        self._name, self._dtype, self._shape_tensor = name, dtype, shape_tensor

    name = property(lambda self: self._name)
    dtype = property(lambda self: self._dtype)
    is_shape_tensor = property(lambda self: self._shape_tensor)


class ILayer(_Recorded):
    def __init__(self, name, layer_type, inputs, outputs, metadata=""):
        self._name, self._type, self._inputs, self._outputs = name, layer_type, inputs, outputs
        self._metadata, self._precision, self._output_types = metadata, None, {}

    name = property(lambda self: self._name)
    type = property(lambda self: self._type)
    metadata = property(lambda self: self._metadata)
    num_inputs = property(lambda self: len(self._inputs))
    num_outputs = property(lambda self: len(self._outputs))

    def get_input(self, index):
        return self._inputs[index]

    def get_output(self, index):
        return self._outputs[index]

    @property
    def precision(self):
        return self._precision or float32

    @precision.setter
    def precision(self, dtype):
        import warnings

        warnings.warn("Use Deprecated in TensorRT 10.12. Superseded by strong typing. instead.", DeprecationWarning)
        self._precision = dtype

    def set_output_type(self, index, dtype):
        self._outputs[index]  # IndexError for a bad index, as TensorRT reports one
        self._output_types[index] = dtype

    def get_output_type(self, index):
        return self._output_types.get(index, self._outputs[index]._dtype)


class INetworkDefinition(_Recorded):
    def __init__(self):
        self._layers, self._inputs = [], []

    num_layers = property(lambda self: len(self._layers))
    num_inputs = property(lambda self: len(self._inputs))

    def get_layer(self, index):
        return self._layers[index]

    def get_input(self, index):
        return self._inputs[index]


class ParserError(_Recorded):
    def __init__(self, desc, node_name="", node_operator="", node=-1, code=None):
        self._desc, self._node_name, self._node_operator, self._node = desc, node_name, node_operator, node
        self._code = code or type.__getattribute__(ErrorCode, "INVALID_GRAPH")

    def code(self):
        return self._code

    def desc(self):
        return self._desc

    def node_name(self):
        return self._node_name

    def node_operator(self):
        return self._node_operator

    def node(self):
        return self._node


class OnnxParser(_Recorded):
    def __init__(self, network, logger):
        self._network, self._errors = network, []

    def parse_from_file(self, path):
        try:
            layers, inputs = onnx_network(path)
        except UnsupportedNode as e:
            self._errors.append(ParserError(str(e), e.node_name, e.op, e.index,
                                            type.__getattribute__(ErrorCode, "UNSUPPORTED_NODE")))  # fmt: skip
            return False
        except Exception as e:  # an unreadable file
            self._errors.append(ParserError(f"failed to parse the ONNX model: {e}"))
            return False
        self._network._layers, self._network._inputs = layers, inputs
        return True

    num_errors = property(lambda self: len(self._errors))

    def get_error(self, index):
        return self._errors[index]


class IOptimizationProfile(_Recorded):
    def __init__(self):
        self._shapes = {}

    def set_shape(self, input, min, opt, max):
        if not all(len(s) == len(min) for s in (opt, max)) or any(a > b for s, t in ((min, opt), (opt, max))
                                                                   for a, b in zip(s, t)):  # fmt: skip
            raise RuntimeError("Shape provided for min is inconsistent with other shapes.")
        self._shapes[input] = (tuple(min), tuple(opt), tuple(max))


class IHostMemory(bytes):
    def __getattribute__(self, name):
        if not name.startswith("_"):
            _record(f"IHostMemory.{name}")
        return bytes.__getattribute__(self, name)

    @property
    def nbytes(self):
        return len(self)


class ITimingCache(_Recorded):
    def __init__(self, data):
        self._data = bytes(data)

    def serialize(self):
        return IHostMemory(self._data or b"fake timing cache")


class IBuilderConfig(_Recorded):
    def __init__(self):
        object.__setattr__(self, "_flags", {type.__getattribute__(BuilderFlag, "TF32")})
        object.__setattr__(self, "_pools", {})
        object.__setattr__(self, "_profiles", [])
        object.__setattr__(self, "_cache", None)
        object.__setattr__(self, "builder_optimization_level", 3)
        object.__setattr__(self, "profiling_verbosity", type.__getattribute__(ProfilingVerbosity, "LAYER_NAMES_ONLY"))

    def set_flag(self, flag):
        self._flags.add(flag)

    def clear_flag(self, flag):
        self._flags.discard(flag)

    def get_flag(self, flag):
        return flag in self._flags

    def set_memory_pool_limit(self, pool, pool_size):
        self._pools[pool] = pool_size

    def add_optimization_profile(self, profile):
        self._profiles.append(profile)
        return len(self._profiles) - 1

    def create_timing_cache(self, serialized_timing_cache):
        return ITimingCache(memoryview(serialized_timing_cache).tobytes())

    def set_timing_cache(self, cache, ignore_mismatch):
        if cache._data.startswith(b"other device"):
            return False
        object.__setattr__(self, "_cache", cache)
        return True

    def get_timing_cache(self):
        return self._cache


class Builder(_Recorded):
    def __init__(self, logger):
        self._logger = logger

    def create_network(self, flags=0):
        return INetworkDefinition()

    def create_optimization_profile(self):
        return IOptimizationProfile()

    def create_builder_config(self):
        return IBuilderConfig()

    def build_serialized_network(self, network, config):
        if os.environ.get("FAKE_TENSORRT_FAIL") == "build":
            return None
        drop = os.environ.get("FAKE_TENSORRT_DROP", "")
        engine_layers = []
        for layer in network._layers:
            if not layer._metadata:
                continue
            pinned = layer._precision is float32 and not layer._metadata.endswith(f" {drop}]")

            def fmt(tensor):
                if tensor is None or tensor._dtype not in (float32, float16, bfloat16):
                    return "Row major linear Int32"
                return "Row major linear FP32" if pinned else "Row major linear FP16 format"

            engine_layers.append({
                "Name": layer._name, "LayerType": "fake", "Metadata": layer._metadata,
                "Inputs": [{"Name": t._name, "Format/Datatype": fmt(t)} for t in layer._inputs if t is not None],
                "Outputs": [{"Name": t._name, "Format/Datatype": fmt(t)} for t in layer._outputs],
            })  # fmt: skip
        settings = {"flags": sorted(map(str, config._flags)), "pools": {str(k): v for k, v in config._pools.items()},
                    "builder_optimization_level": config._get("builder_optimization_level"),
                    "profiling_verbosity": str(config._get("profiling_verbosity")),
                    "profiles": [p._shapes for p in config._profiles],
                    "pinned": sorted(layer._name for layer in network._layers if layer._precision is float32),
                    "output_types": sorted(layer._name for layer in network._layers if layer._output_types)}  # fmt: skip
        return IHostMemory(b"FAKEPLAN" + json.dumps({"Layers": engine_layers, "settings": settings}).encode())


def _get(self, name):
    return object.__getattribute__(self, name)


IBuilderConfig._get = _get


class EngineInspector(_Recorded):
    def __init__(self, info):
        self._info = info

    def get_engine_information(self, format):
        if format is not type.__getattribute__(LayerInformationFormat, "JSON"):
            return "one line per layer"
        return json.dumps({"Layers": self._info["Layers"]})


class ICudaEngine(_Recorded):
    def __init__(self, info):
        self._info = info

    def create_engine_inspector(self):
        return EngineInspector(self._info)


class Runtime(_Recorded):
    def __init__(self, logger):
        self._logger = logger

    def deserialize_cuda_engine(self, serialized_engine):
        data = memoryview(serialized_engine).tobytes()
        return ICudaEngine(json.loads(data[len(b"FAKEPLAN"):])) if data.startswith(b"FAKEPLAN") else None


# -- a model of the ONNX parser ----------------------------------------------------------------------------------

ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual",
               "And", "Or", "Max", "Min"}  # fmt: skip
OP_LAYERS = {  # ONNX op -> the LayerType name of the layer TensorRT's importer adds for it
    **{op: "ELEMENTWISE" for op in ELEMENTWISE},
    **{op: "UNARY" for op in ("Not", "Log", "Sqrt", "Exp", "Abs", "Neg", "Reciprocal", "Erf")},
    **{op: "ACTIVATION" for op in ("Relu", "Sigmoid", "Tanh", "Clip")},
    **{op: "SHUFFLE" for op in ("Reshape", "Unsqueeze", "Squeeze", "Transpose", "Flatten")},
    **{op: "SLICE" for op in ("Slice", "Expand", "Tile", "Split", "Pad")},
    **{op: "REDUCE" for op in ("ReduceSum", "ReduceMean", "ReduceMax")},
    "Cast": "CAST", "Shape": "SHAPE", "ConstantOfShape": "FILL", "Range": "FILL", "Where": "SELECT",
    "Gather": "GATHER", "Concat": "CONCATENATION", "Conv": "CONVOLUTION", "MatMul": "MATRIX_MULTIPLY",
    "Gemm": "MATRIX_MULTIPLY", "LayerNormalization": "NORMALIZATION", "Softmax": "SOFTMAX", "Identity": "IDENTITY",
    "Dropout": "IDENTITY",
}  # fmt: skip
WEIGHTS_INSIDE = {"Conv": (1, 2), "Gemm": (1, 2)}  # kernel/bias weights go into the layer, not into a constant
ONNX_TYPES = {1: "FLOAT", 10: "HALF", 16: "BF16", 11: "FLOAT", 6: "INT32", 7: "INT64", 9: "BOOL", 3: "INT8", 2: "UINT8"}


class UnsupportedNode(Exception):
    def __init__(self, message, node_name, op, index):
        super().__init__(message)
        self.node_name, self.op, self.index = node_name, op, index


def onnx_network(path):
    """The layers and network inputs of the model of TensorRT's parser (module doc) for the ONNX file."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path), load_external_data=False))
    graph = model.graph
    dtypes, ranks, weights = {}, {}, {}
    for info in list(graph.value_info) + list(graph.input) + list(graph.output):
        tensor_type = info.type.tensor_type
        dtypes[info.name] = tensor_type.elem_type
        ranks[info.name] = len(tensor_type.shape.dim) if tensor_type.HasField("shape") else None
    for init in graph.initializer:
        weights[init.name] = (init.data_type, len(init.dims))
    for node in graph.node:
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            weights[node.output[0]] = (value.data_type, len(value.dims)) if value is not None else (1, 0)
    data_type = {name: type.__getattribute__(DataType, ONNX_TYPES.get(code, "FLOAT")) for name, code in dtypes.items()}
    tensors = {}  # ONNX tensor name -> ITensor
    layers, unnamed = [], [0]

    def add(name, layer_type, inputs, outputs, node=""):
        metadata = f"[ONNX Layer: {node}]" if node else ""
        layers.append(ILayer(name, type.__getattribute__(LayerType, layer_type), inputs, outputs, metadata))
        return layers[-1]

    def constant(name):
        if name not in tensors:
            code, _ = weights[name]
            tensors[name] = ITensor(name, type.__getattribute__(DataType, ONNX_TYPES.get(code, "FLOAT")))
            add(name, "CONSTANT", [], [tensors[name]])
        return tensors[name]

    inputs = []
    for info in graph.input:
        if info.name not in weights:
            tensors[info.name] = ITensor(info.name, data_type[info.name])
            inputs.append(tensors[info.name])
    for index, node in enumerate(graph.node):
        if node.op_type == "Constant":
            continue
        if node.op_type not in OP_LAYERS:
            raise UnsupportedNode(f"no importer for {node.op_type}", node.name, node.op_type, index)
        layer_type = OP_LAYERS[node.op_type]
        node_inputs = []
        for position, name in enumerate(node.input):
            if not name:
                node_inputs.append(None)
            elif name in weights:
                if position in WEIGHTS_INSIDE.get(node.op_type, ()):
                    continue
                tensor = constant(name)
                out_rank = ranks.get(node.output[0])
                if node.op_type in ELEMENTWISE and out_rank and weights[name][1] < out_rank:
                    unnamed[0] += 1  # the broadcast reshape of a lower-rank weight
                    shuffled = ITensor(f"(Unnamed Layer* {len(layers)}) [Shuffle]_output", tensor._dtype)
                    add(f"(Unnamed Layer* {len(layers)}) [Shuffle]", "SHUFFLE", [tensor], [shuffled])
                    tensor = shuffled
                node_inputs.append(tensor)
            else:
                node_inputs.append(tensors[name])
        outputs = [ITensor(name, data_type.get(name, float32), shape_tensor=layer_type == "SHAPE")
                   for name in node.output if name]  # fmt: skip
        if node.op_type == "Split":  # one slice per output
            for k, output in enumerate(outputs):
                add(node.name if k == 0 else f"{node.name}_{k}", "SLICE", node_inputs[:1], [output], node.name)
        else:
            add(node.name, layer_type, node_inputs, outputs, node.name)
        for output in outputs:
            tensors[output._name] = output
    return layers, inputs


class _Module(types.ModuleType):
    def __getattribute__(self, name):
        if not name.startswith("_"):
            _record(name)
        return super().__getattribute__(name)


sys.modules[__name__].__class__ = _Module
