#!/usr/bin/env bash
# RTFx of the PyTorch reference (bf16) on an NVIDIA GPU machine that has PyTorch but no TensorRT, no NeMo
# and no network. Run from the repository root, with the wheelhouse .whl/ beside it (benchmarks/README.md):
#
#   PYTHONUNBUFFERED=1 bash benchmarks/gpu_check.sh            # results also in $OUT/gpu_check.json
#
# Steps: install the carried wheels into /tmp/site, check the imports, write a full-size random
# checkpoint to /tmp/ckpt (kept if already there), then benchmarks/gpu_check.py at batch 1, 32 and 192.
# Extra arguments go to gpu_check.py (e.g. --batch-sizes 1,32 --new-tokens 16).
#
# On a machine WITH PyPI (this repo's dev machine), build that wheelhouse first (about 42 MB):
#
#   bash benchmarks/gpu_check.sh --wheelhouse                 # -> .whl/ (git-ignored: add /.whl/ to .git/info/exclude)
set -euo pipefail
cd "$(dirname "$0")/.."

# What the GPU image (Python 3.12, torch 2.11, transformers 5.17, numpy 2.5, lightning 2.6) lacks for
# `import nemo.collections.speechlm2.modules.perception`, SALM's placeholder splice, NeMo's mel front end
# and canary_trt's reference/tokenizer/audio at run time; found by iterating on ImportErrors in a venv
# holding only the image's packages (benchmarks/README.md). lightning is pinned down to 2.4.0 because
# nemo-toolkit 3.0.0 requires lightning<=2.4.0 and nv-one-logger's trainer fails to define on 2.6.
WHEELS=(
    nemo-toolkit==3.0.0 lightning==2.4.0 omegaconf==2.3.0 hydra-core==1.3.2
    nv-one-logger-core==2.3.1 nv-one-logger-training-telemetry==2.3.1 nv-one-logger-pytorch-lightning-integration==2.3.1
    overrides==7.7.0 StrEnum==0.4.15 toml==0.10.2 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
    typing-inspection==0.4.5 lhotse==1.33.0 intervaltree==3.2.1 cytoolz==1.2.0 kaldialign==0.12.0 librosa==0.11.0
    decorator==5.3.1 pooch==1.9.0 platformdirs==4.14.8 braceexpand==0.1.7 webdataset==1.0.2 datasets==4.4.1
    dill==0.4.0 multiprocess==0.70.18 wandb==0.31.0 opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2
    opentelemetry-proto==1.45.2 opentelemetry-semantic-conventions==0.66b2 opentelemetry-exporter-otlp-proto-http==1.45.2
    opentelemetry-exporter-otlp-proto-common==1.45.2 opentelemetry-exporter-otlp-common==0.66b2
    opentelemetry-exporter-http-transport==0.66b2 whisper-normalizer==0.1.15 more-itertools==11.2.1
    soundfile==0.14.0 soxr==1.1.0 cffi==2.1.1 qwen-agent==0.0.34
)
if [ "${1:-}" = "--wheelhouse" ]; then
    HOST_PY=${PYTHON:-python3}
    mkdir -p .whl/librivox
    plat=()
    for tag in manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
        plat+=(--platform "${tag}_x86_64")
    done
    "$HOST_PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${plat[@]}" -d .whl "${WHEELS[@]}"
    # omegaconf 2.3 needs antlr4 4.9.*, published as an sdist only: build its pure-Python wheel here.
    "$HOST_PY" -m pip wheel -q --no-deps --no-binary=:all: -w .whl antlr4-python3-runtime==4.9.3
    cp /usr/share/pocketsphinx/test/data/librivox/*.wav /usr/share/pocketsphinx/test/data/librivox/transcription .whl/librivox/
    du -sh .whl
    exit 0
fi

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
export PYTHONWARNINGS=ignore::SyntaxWarning  # NeMo 3.0.0 and whisper_normalizer sources, compiled on first import
PY=${PYTHON:-python3}
CKPT=${CANARY_GPU_CHECK_CKPT:-/tmp/ckpt}
RESULTS=${OUT:-/tmp}/gpu_check.json
t0=$SECONDS
stamp() { echo "[gpu_check.sh +$((SECONDS - t0))s] $*"; }

stamp "host $(hostname), $(nproc) cores, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || stamp "nvidia-smi failed"
"$PY" -c 'import sys, torch; print(sys.executable, sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())'

# 1. The packages the machine lacks (NeMo and the part of its import chain that is missing there).
if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "no wheels in .whl/: build the wheelhouse first (benchmarks/README.md) and carry it" >&2
    exit 1
fi
stamp "installing $(ls .whl/*.whl | wc -l) wheels into /tmp/site"
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD

# 2. Fail fast, with the name of what is missing, before minutes of checkpoint writing.
stamp "checking imports"
"$PY" - <<'EOF'
import nemo.collections.speechlm2.modules.perception
from nemo.collections.speechlm2.models.salm import replace_placeholders_and_build_targets
from nemo.collections.asr.modules import AudioToMelSpectrogramPreprocessor
import canary_trt.audio, canary_trt.tokenizer, canary_trt.tokenizer_build, canary_trt.reference, canary_trt.transcribe
import canary_trt.random_checkpoint, soundfile, soxr, nemo, lightning, transformers, numpy
from canary_trt.tokenizer_build import qwen_vocab_file
print("imports ok: nemo", nemo.__version__, "| lightning", lightning.__version__, "| transformers",
      transformers.__version__, "| numpy", numpy.__version__, "| vocab", qwen_vocab_file())
EOF

# 3. A full-size random checkpoint (2.56 B parameters, 5.12 GB bf16), written here by the package's CLI.
if [ ! -f "$CKPT/model.safetensors" ]; then
    stamp "writing full-size random checkpoint to $CKPT"
    "$PY" -m canary_trt.cli make-checkpoint --size full --out "$CKPT"
fi

# 4. The measurement.
stamp "benchmark"
"$PY" benchmarks/gpu_check.py --checkpoint "$CKPT" --json "$RESULTS" "$@"
stamp "done"
