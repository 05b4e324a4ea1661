#!/usr/bin/env bash
# canary-trt in one command.
#   ./build.sh --setup                 create .venv and install everything (idempotent)
#   ./build.sh --demo [--checkpoint D] the main job: export, serve on Triton, transcribe LibriVox speech
#                                      over gRPC (a random tiny checkpoint unless D is a real one)
#   ./build.sh --test [pytest args]    run the test suite
#   ./build.sh --checkpoint D --out B [--target cpu|gpu] [--preset P] [--precision X] [--dry-run]
#                                      export a build (any other arguments go to `canary-trt export`)
set -euo pipefail
cd "$(dirname "$0")"

VENV=${CANARY_TRT_VENV:-.venv}
PY="$VENV/bin/python"
LIBRIVOX=/usr/share/pocketsphinx/test/data/librivox

setup() {
    # Debian packages: real speech for the tests and demo; the shared libpython that Triton's python stub links.
    if [ ! -d "$LIBRIVOX" ] || ! ldconfig -p | grep -q "libpython3.11.so.1.0"; then
        if [ "$(id -u)" -ne 0 ]; then
            echo "missing packages: run 'sudo apt-get install pocketsphinx-testdata libpython3.11' first" >&2
            exit 1
        fi
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pocketsphinx-testdata libpython3.11 >/dev/null
    fi
    [ -x "$PY" ] || python3.11 -m venv "$VENV"
    local stamp="$VENV/.installed"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        echo "== installing canary-trt and its pinned dependencies into $VENV (several minutes the first time)"
        "$PY" -m pip install -q --upgrade pip
        "$PY" -m pip install -q -e ".[full,client,api,test]"
        # Data-only wheels, without their dependencies (pins: pyproject.toml, extras "vocab" and "vad"): the Qwen
        # vocabulary (its agent framework unneeded) and Silero VAD's ONNX graph (its torch code unused).
        "$PY" -m pip install -q --no-deps $("$PY" -c \
            'import tomllib; x = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]; print(*x["vocab"], *x["vad"])')
        touch "$stamp"
    fi
}

demo() {
    # The random checkpoint needs no Hub; a real one may fetch Qwen3's config/tokenizer once.
    [ $# -gt 0 ] || export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
    exec "$VENV/bin/canary-trt" demo "$@"
}

case "${1:---demo}" in
    --setup) setup ;;
    --demo) shift || true; setup; demo "$@" ;;
    --test) shift; setup; export HF_HUB_OFFLINE=1; exec "$PY" -m pytest -q "$@" ;;
    --help|-h) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' ;;
    *) setup; exec "$VENV/bin/canary-trt" export "$@" ;;
esac
