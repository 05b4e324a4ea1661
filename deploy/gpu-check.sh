#!/usr/bin/env bash
# The GPU self-check in one command: run it first on a GPU host (Docker + the NVIDIA container toolkit).
#
#   deploy/gpu-check.sh [--preset P] [--dir DIR] [--cpu-image I] [--gpu-image I] [--build-images] [--reuse]
#                       [-- RUN-OPTIONS]
#
#   stage 1, CPU image (NeMo):  canary-trt gpu-check prepare --out DIR --preset P
#            a random tiny checkpoint, its GPU build's prepare stage, a CPU fp32 build, ONNX Runtime references
#   stage 2, GPU image:         canary-trt gpu-check run DIR [RUN-OPTIONS]
#            versions, TensorRT/TensorRT-LLM engines, tritonserver on 127.0.0.1 inside the container (no port
#            is published), the encoder and the canary_qwen tokens compared with ONNX Runtime
#
# --preset     GPU preset: rtx5090, rtx-pro-6000, l40s, a100, h100 (default h100)
# --dir        the host folder both stages share (default ./gpu-check); mounted at the same path in both
#              containers, because the builds record absolute paths
# --cpu-image  default canary-trt-cpu:0.1.0 (deploy/Dockerfile.cpu)
# --gpu-image  default canary-trt-gpu:0.1.0 (deploy/Dockerfile.gpu)
# --build-images  docker build the images that are missing, from this repository
# --reuse      skip stage 1 when DIR/check.json exists (e.g. with `-- --skip-engines` to rerun only the server)
# RUN-OPTIONS  go to `gpu-check run`: --skip-engines, --exact, --ready-timeout S
#
# Both containers run as the calling user, so every file in DIR stays theirs. Exit status: stage 2's
# (0: every check passed; 1: the last line names the first failure), or stage 1's if it failed.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
PRESET=h100
DIR=./gpu-check
CPU_IMAGE=canary-trt-cpu:0.1.0
GPU_IMAGE=canary-trt-gpu:0.1.0
BUILD_IMAGES=0
REUSE=0
RUN_ARGS=()

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "gpu-check.sh: $*" >&2; exit 2; }
value() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --preset) value "$@"; PRESET=$2; shift 2 ;;
        --dir) value "$@"; DIR=$2; shift 2 ;;
        --cpu-image) value "$@"; CPU_IMAGE=$2; shift 2 ;;
        --gpu-image) value "$@"; GPU_IMAGE=$2; shift 2 ;;
        --build-images) BUILD_IMAGES=1; shift ;;
        --reuse) REUSE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; RUN_ARGS=("$@"); break ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

command -v docker >/dev/null || die "docker not found: this script runs both stages in containers"

image() {  # image dockerfile: make sure it exists locally
    if docker image inspect "$1" >/dev/null 2>&1; then
        return
    fi
    if [ "$BUILD_IMAGES" -eq 1 ]; then
        echo "== docker build -f $2 -t $1 $REPO"
        docker build -f "$REPO/$2" -t "$1" "$REPO"
    else
        die "image $1 not found: docker build -f $2 -t $1 . (from $REPO), or pass --build-images"
    fi
}
image "$CPU_IMAGE" deploy/Dockerfile.cpu
image "$GPU_IMAGE" deploy/Dockerfile.gpu

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
# HOME: the calling user has none in the images; PYTHONUNBUFFERED: progress as it happens, not at exit.
COMMON=(--rm --init --user "$(id -u):$(id -g)" -e HOME=/tmp -e HF_HUB_OFFLINE=1 -e PYTHONUNBUFFERED=1
        -v "$DIR:$DIR" -w "$DIR")

if [ "$REUSE" -eq 1 ] && [ -f "$DIR/check.json" ]; then
    echo "== stage 1 skipped (--reuse): $DIR/check.json exists"
else
    echo "== stage 1 (CPU image $CPU_IMAGE): canary-trt gpu-check prepare --out $DIR --preset $PRESET"
    status=0
    docker run "${COMMON[@]}" "$CPU_IMAGE" canary-trt gpu-check prepare --out "$DIR" --preset "$PRESET" || status=$?
    if [ "$status" -ne 0 ]; then
        echo "gpu-check.sh: stage 1 (prepare, CPU image $CPU_IMAGE) failed with exit status $status" >&2
        exit "$status"
    fi
fi

echo "== stage 2 (GPU image $GPU_IMAGE): canary-trt gpu-check run $DIR ${RUN_ARGS[*]:-}"
# --shm-size: the python backend passes tensors through /dev/shm (Docker's 64 MB default is too small);
# memlock/stack: what NVIDIA's TensorRT-LLM containers ask for.
status=0
docker run "${COMMON[@]}" --gpus all --shm-size=2g --ulimit memlock=-1 --ulimit stack=67108864 \
    "$GPU_IMAGE" canary-trt gpu-check run "$DIR" ${RUN_ARGS[@]+"${RUN_ARGS[@]}"} || status=$?
exit "$status"
