"""canary-trt: serve NVIDIA Canary-Qwen-2.5B on Triton (TensorRT / TensorRT-LLM on GPU, ONNX Runtime on CPU)."""

__version__ = "0.1.0"
