#!/usr/bin/env bash
# canary-trt in one command.
#   ./build.sh --setup                 create .venv and install everything (idempotent)
#   ./build.sh --demo [--checkpoint D] the main job: transcribe the bundled LibriVox speech
#                                      (a random tiny checkpoint unless D is a real one)
#   ./build.sh --test [pytest args]    run the test suite
#   ./build.sh --checkpoint D --out B [--target cpu|gpu] [--preset P] [--precision X] [--dry-run]
#                                      export a build (any other arguments go to `canary-trt export`)
set -euo pipefail
cd "$(dirname "$0")"

VENV=${CANARY_TRT_VENV:-.venv}
PY="$VENV/bin/python"
LIBRIVOX=/usr/share/pocketsphinx/test/data/librivox

setup() {
    # Debian packages: real speech for the tests and demo.
    if [ ! -d "$LIBRIVOX" ]; then
        if [ "$(id -u)" -ne 0 ]; then
            echo "missing $LIBRIVOX: run 'sudo apt-get install pocketsphinx-testdata' first" >&2
            exit 1
        fi
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pocketsphinx-testdata >/dev/null
    fi
    [ -x "$PY" ] || python3.11 -m venv "$VENV"
    local stamp="$VENV/.installed"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        echo "== installing canary-trt and its pinned dependencies into $VENV (several minutes the first time)"
        "$PY" -m pip install -q --upgrade pip
        "$PY" -m pip install -q -e ".[full,client,test]"
        # The Qwen vocabulary wheel, without its agent-framework dependencies (pin: pyproject.toml, extra "vocab").
        "$PY" -m pip install -q --no-deps $("$PY" -c \
            'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["vocab"])')
        touch "$stamp"
    fi
}

demo() {
    local checkpoint=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --checkpoint) checkpoint="$2"; shift 2 ;;
            *) echo "unknown demo option: $1" >&2; exit 2 ;;
        esac
    done
    export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
    if [ -z "$checkpoint" ]; then
        checkpoint=build/demo/tiny-checkpoint
        [ -f "$checkpoint/model.safetensors" ] || "$VENV/bin/canary-trt" make-checkpoint --size tiny --out "$checkpoint"
        echo "== NOTE: random weights. The transcripts below are meaningless text; they prove the pipeline runs."
    fi
    echo "== transcribing the 5 LibriVox clips with the PyTorch reference (NeMo + transformers)"
    "$VENV/bin/canary-trt" transcribe --checkpoint "$checkpoint" --batch-size 5 --max-new-tokens 32 "$LIBRIVOX"/*.wav
}

case "${1:---demo}" in
    --setup) setup ;;
    --demo) shift || true; setup; demo "$@" ;;
    --test) shift; setup; export HF_HUB_OFFLINE=1; exec "$PY" -m pytest -q "$@" ;;
    --help|-h) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' ;;
    *) setup; exec "$VENV/bin/canary-trt" export "$@" ;;
esac
