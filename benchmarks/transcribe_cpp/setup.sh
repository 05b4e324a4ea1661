#!/usr/bin/env bash
# transcribe.cpp 0.2.1 (C++/ggml port of Canary-Qwen) for compare_backends.py's opt-in `tcpp` rows.
#
#   bash benchmarks/transcribe_cpp/setup.sh [CHECKPOINT] [--out build/tcpp] [--venv build/tcpp-venv] \
#       [--src URL|GIT_DIR|SOURCE_DIR|ARCHIVE] [--wheels DIR] [--tokens 32] [--jobs N] [--keep-bf16]
#
# Steps, each skipped when its output is already there (so pointing it at a finished setup does nothing):
#   1. venv: its own (--venv), with transcribe-cpp's Python bindings and the converter's gguf + numpy. Separate
#      from the project venv: transcribe-cpp-native ships its own ggml build, and gguf is only needed here;
#      compare_backends runs the rows in a child process of this venv (rows.py).
#   2. source: v0.2.1 into OUT/src: git clone (default: upstream on GitHub; or a local repo/mirror), an
#      existing source tree (used in place), or a .tar/.tar.gz archive (e.g. `git archive v0.2.1`).
#   3. patch: canary_qwen caps new tokens at a compile-time `constexpr int k_max_new = 256;` (upstream
#      src/arch/canary_qwen/model.cpp line 129 at commit ea077b87590bcfb090d7c38c03ab36cd1c7005d3, tag v0.2.1),
#      with no run-time knob in the CLI or the library. The benchmark decodes exactly --tokens (32) per clip, so
#      that line becomes a macro (default still 256) and the build sets it.
#   4. build: OUT/src/build<TOKENS> (cmake Release, the library and transcribe-quantize only).
#   5. GGUFs: CHECKPOINT -> OUT/canary-qwen-2.5b-BF16.gguf (convert_local.py, which imports upstream's
#      scripts/convert-canary-qwen.py from OUT/src), then -F16 and -Q8_0 with transcribe-quantize; the BF16
#      file this run wrote is deleted afterwards unless --keep-bf16. CHECKPOINT is needed only for this step.
#   6. OUT/setup.json: the paths rows.py and compare_backends.py read.
# Offline (no GitHub, no PyPI for transcribe-cpp): --src a local clone/archive, --wheels a directory holding
# transcribe_cpp-0.2.1 and transcribe_cpp_native-0.2.1 wheels (pip --find-links). A mirror that lacks large
# blobs cannot be cloned; archive it without them: git -C MIRROR archive -o src.tar v0.2.1 -- . ':!samples'
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TAG=v0.2.1
VERSION=0.2.1
CAP_LINE='constexpr int k_max_new = 256;'
UPSTREAM=https://github.com/handy-computer/transcribe.cpp
PINS=("transcribe-cpp==$VERSION" "transcribe-cpp-native==$VERSION.*" "gguf==0.19.0" "numpy")

CHECKPOINT="" OUT=build/tcpp VENV=build/tcpp-venv SRC="$UPSTREAM" WHEELS="" TOKENS=32 JOBS="$(nproc)" KEEP_BF16=0
while (($#)); do
    case "$1" in
        --out) OUT="$2"; shift 2 ;;
        --venv) VENV="$2"; shift 2 ;;
        --src) SRC="$2"; shift 2 ;;
        --wheels) WHEELS="$2"; shift 2 ;;
        --tokens) TOKENS="$2"; shift 2 ;;
        --jobs) JOBS="$2"; shift 2 ;;
        --keep-bf16) KEEP_BF16=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) echo "setup.sh: unknown option $1" >&2; exit 2 ;;
        *) CHECKPOINT="$1"; shift ;;
    esac
done
die() { echo "setup.sh: $*" >&2; exit 1; }
step() { echo "== $*"; }
OUT="$(realpath -m "$OUT")" VENV="$(realpath -m "$VENV")"
[[ -n "$CHECKPOINT" ]] && CHECKPOINT="$(realpath "$CHECKPOINT")"
[[ -e "$SRC" ]] && SRC="$(realpath "$SRC")"
mkdir -p "$OUT"
PY="$VENV/bin/python"

# 1. venv
if [[ -x "$PY" ]] && "$PY" - "$VERSION" <<'EOF' 2>/dev/null; then
import sys
from importlib.metadata import version
import numpy  # noqa: F401
assert version("transcribe-cpp") == sys.argv[1] and version("gguf") == "0.19.0"
EOF
    step "venv: $VENV has transcribe-cpp $VERSION (skipped)"
else
    step "venv: $VENV"
    [[ -x "$PY" ]] || "${PYTHON:-python3}" -m venv "$VENV"
    "$PY" -m pip install -q ${WHEELS:+--find-links "$WHEELS"} "${PINS[@]}"
fi

# 2. source
if [[ -f "$SRC/CMakeLists.txt" ]]; then
    SRC_DIR="$SRC"
    step "source: $SRC_DIR (in place)"
elif [[ -f "$OUT/src/CMakeLists.txt" ]]; then
    SRC_DIR="$OUT/src"
    step "source: $SRC_DIR (skipped)"
else
    SRC_DIR="$OUT/src"
    tmp="$OUT/partial-src"
    rm -rf "$tmp"
    if [[ -f "$SRC" ]]; then
        step "source: extracting $SRC"
        mkdir -p "$tmp/x" && tar -xf "$SRC" -C "$tmp/x"
        # `git archive` has no top directory, a GitHub release tarball has one
        top=("$tmp/x"/*)
        if [[ ${#top[@]} == 1 && -f "${top[0]}/CMakeLists.txt" ]]; then mv "${top[0]}" "$tmp/src"; else mv "$tmp/x" "$tmp/src"; fi
    else
        [[ -d "$SRC" ]] && SRC="file://$SRC"  # a local repository or mirror: --depth needs file://
        step "source: git clone --depth 1 --branch $TAG $SRC"
        git -c advice.detachedHead=false clone -q --depth 1 --branch "$TAG" "$SRC" "$tmp/src"
    fi
    [[ -f "$tmp/src/CMakeLists.txt" ]] || die "no CMakeLists.txt in the source from $SRC"
    mv "$tmp/src" "$SRC_DIR" && rm -rf "$tmp"
fi
header="$SRC_DIR/include/transcribe.h"
found="$(sed -n 's/^#define TRANSCRIBE_VERSION_\(MAJOR\|MINOR\|PATCH\) \+\([0-9]\+\).*/\2/p' "$header" | paste -sd.)"
[[ "$found" == "$VERSION" ]] || die "$SRC_DIR is transcribe.cpp '$found', not $VERSION"

# 3. patch
model_cpp="$SRC_DIR/src/arch/canary_qwen/model.cpp"
if grep -q 'TRANSCRIBE_CANARY_QWEN_MAX_NEW' "$model_cpp"; then
    step "patch: $model_cpp already takes TRANSCRIBE_CANARY_QWEN_MAX_NEW (skipped)"
else
    grep -qxF "$CAP_LINE" "$model_cpp" || die "'$CAP_LINE' not found in $model_cpp: not the v0.2.1 source?"
    step "patch: $model_cpp"
    sed -i "s/^${CAP_LINE}\$/#ifndef TRANSCRIBE_CANARY_QWEN_MAX_NEW\n#define TRANSCRIBE_CANARY_QWEN_MAX_NEW 256  \/\/ upstream value\n#endif\nconstexpr int k_max_new = TRANSCRIBE_CANARY_QWEN_MAX_NEW;  \/\/ local patch (benchmarks\/transcribe_cpp\/setup.sh)/" "$model_cpp"
    grep -q '^constexpr int k_max_new = TRANSCRIBE_CANARY_QWEN_MAX_NEW;' "$model_cpp" || die "patch did not apply"
fi

# 4. build
BUILD="$SRC_DIR/build$TOKENS"
LIBRARY="$BUILD/src/libtranscribe.so"
QUANTIZE="$BUILD/bin/transcribe-quantize"
FLAG="-DTRANSCRIBE_CANARY_QWEN_MAX_NEW=$TOKENS"
if [[ -f "$LIBRARY" && -x "$QUANTIZE" ]]; then
    grep -qF "CMAKE_CXX_FLAGS:STRING=$FLAG" "$BUILD/CMakeCache.txt" || die "$BUILD was not configured with $FLAG"
    step "build: $BUILD (skipped)"
else
    step "build: $BUILD ($FLAG)"
    cmake -S "$SRC_DIR" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS="$FLAG" -DTRANSCRIBE_BUILD_TESTS=OFF
    cmake --build "$BUILD" -j "$JOBS" --target transcribe transcribe-quantize
fi

# 5. GGUFs (written under a temporary name, renamed when complete)
gguf() { echo "$OUT/canary-qwen-2.5b-$1.gguf"; }
converted=0
if [[ -f "$(gguf F16)" && -f "$(gguf Q8_0)" ]]; then
    step "GGUFs: $(gguf F16), $(gguf Q8_0) (skipped)"
else
    if [[ ! -f "$(gguf BF16)" ]]; then
        [[ -n "$CHECKPOINT" ]] || die "no GGUFs in $OUT yet: give the CHECKPOINT directory to convert"
        step "convert: $CHECKPOINT -> $(gguf BF16)"
        "$PY" "$HERE/convert_local.py" "$CHECKPOINT" "$OUT/partial-BF16.gguf" --src "$SRC_DIR"
        mv "$OUT/partial-BF16.gguf" "$(gguf BF16)"
        converted=1
    fi
    for quant in F16 Q8_0; do
        [[ -f "$(gguf $quant)" ]] && continue
        step "quantize: $(gguf $quant)"
        "$QUANTIZE" "$(gguf BF16)" "$OUT/partial-$quant.gguf" --quant "$quant"
        mv "$OUT/partial-$quant.gguf" "$(gguf $quant)"
    done
    if ((converted && !KEEP_BF16)); then rm -f "$(gguf BF16)"; fi
fi

# 6. setup.json; GGUFs found (not converted here) keep the checkpoint an earlier run recorded for them
"$PY" - "$OUT" "$PY" "$LIBRARY" "$SRC_DIR" "$TOKENS" "$VERSION" "$TAG" "$CHECKPOINT" "$converted" <<'EOF'
import json, sys
from pathlib import Path
out, python, library, src, tokens, version, tag, checkpoint, converted = sys.argv[1:]
path = Path(out) / "setup.json"
old = json.loads(path.read_text()) if path.is_file() else {}
if converted == "0" and checkpoint and old.get("checkpoint") not in (None, checkpoint):
    sys.exit(f"setup.sh: the GGUFs in {out} are from {old['checkpoint']}, not {checkpoint}: use another --out")
setup = {"version": version, "upstream": f"https://github.com/handy-computer/transcribe.cpp {tag}",
         "max_new_tokens": int(tokens), "python": python, "library": library, "src": src,
         "checkpoint": checkpoint if converted == "1" else old.get("checkpoint") or checkpoint or None,
         "gguf": {q: str(Path(out) / f"canary-qwen-2.5b-{q}.gguf") for q in ("F16", "Q8_0")}}
path.write_text(json.dumps(setup, indent=2) + "\n")
print(f"== {path}: {'unchanged' if setup == old else 'written'}")
EOF
