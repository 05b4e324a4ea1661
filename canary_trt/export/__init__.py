"""Export: the encoder to ONNX / TensorRT, the Qwen3 decoder to ONNX (CPU) and TensorRT-LLM (GPU)."""
