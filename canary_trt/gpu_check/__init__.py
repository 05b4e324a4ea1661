"""`canary-trt gpu-check`: the first thing to run on a GPU host. Does the GPU build work on this card,
and does it compute what ONNX Runtime computes on CPU?

One command on the host (Docker with the NVIDIA container toolkit; both images built from this repository):

    deploy/gpu-check.sh [--preset h100] [--dir ./gpu-check] [--cpu-image I] [--gpu-image I] [--build-images]

runs the two stages on one host folder, mounted at the same path in both containers (the builds record
absolute paths):

    canary-trt gpu-check prepare --out DIR [--preset P]   # CPU image (NeMo): checkpoint, builds, references
    canary-trt gpu-check run DIR                          # GPU image: versions, engines, server, comparisons
    canary-trt gpu-check run DIR --url 127.0.0.1:8000     # only the comparisons, against a running server

`prepare` writes a random tiny checkpoint, the GPU build's `prepare` stage, a CPU fp32 build and the ONNX
Runtime references (references.py). `run` prints the versions (GPU, driver, CUDA, TensorRT,
TensorRT-LLM, Triton, Python) and tools found, builds the engines (`export --stage engines`), starts the
container's `tritonserver` on 127.0.0.1, compares the `encoder` model's output (1 s, 20 s, 40 s, and 1 s
zero-padded) and the `canary_qwen` tokens with the references (checks.py: thresholds and the token
policy), and exits 0, or 1 naming the first failure, e.g.

    gpu-check: FAIL: tensorrt: not importable: ModuleNotFoundError: No module named 'tensorrt'
    gpu-check: FAIL: engines stage: failed (exit code 1): ... (log DIR/logs/engines.log)
    gpu-check: FAIL: server: did not become ready: ...
    gpu-check: FAIL: encoder 40 s: cosine 0.91 < 0.999
    gpu-check: FAIL: canary_qwen 0870: token 3 differs: server 1234, ONNX Runtime 5678 (its top-2 gap 0.21 >= 0.03, ...)

`--url` takes Triton's HTTP endpoint (port 8000 by default): the check speaks Triton's HTTP protocol with
the standard library, since the GPU image has no tritonclient.
"""
