#!/usr/bin/env bash
# Creates .venv at the project root and installs wattpool into it (idempotent).
# The first run compiles llama.cpp (llama-cpp-python) from source: several minutes on
# 2 cores, with progress shown. pip keeps the built wheel in its cache, so later runs
# (and fresh clones on the same machine) reuse it in seconds.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
STAMP="$VENV/.wattpool-install-stamp"

"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || {
  echo "wattpool needs Python 3.11 or newer (found: $("$PY" --version 2>&1))" >&2; exit 1; }

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
fi

want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi

install_llama() {  # $1: extra pip options
  echo "==> installing llama-cpp-python (compiles llama.cpp on first install; cached afterwards)"
  # Trim the build: no tests, examples, tools, multimodal or curl. Portable AVX2 kernels
  # rather than -march=native: the AVX-512/AMX kernels a native build picks crash on some
  # CPUs (seen here: a segfault in ggml_backend_amx_mul_mat), and a portable wheel in
  # pip's cache serves every x86-64 machine with AVX2.
  export CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_CURL=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON}"
  export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
  spec="$(grep -o '"llama-cpp-python\[server\][^"]*"' "$ROOT/pyproject.toml" | tr -d '"')"
  log="$VENV/llama-cpp-build.log"
  # pip -v prints each compile step as [N/M]; show those as one progress line.
  set +e
  "$VENV/bin/python" -m pip install -v $1 "$spec" 2>&1 | tee "$log" | while IFS= read -r line; do
    case "$line" in
      *"Using cached"*|*"Created wheel"*|*"Successfully installed"*) printf '\n    %s\n' "${line:0:100}" ;;
      *"Building wheel for llama-cpp-python"*) printf '    compiling llama.cpp (several minutes)…\n' ;;
      *) step="$(printf '%s' "$line" | grep -o '^ *\[[0-9]*/[0-9]*\]' | tr -d ' ')"
         [ -n "$step" ] && printf '\r    compile step %s ' "$step" ;;
    esac
  done
  status=${PIPESTATUS[0]}
  set -e
  if [ "$status" -ne 0 ]; then
    echo "llama-cpp-python failed to install; the last lines of $log:" >&2
    tail -n 30 "$log" >&2
    exit "$status"
  fi
}

if ! "$VENV/bin/python" -c 'import llama_cpp' 2>/dev/null; then
  install_llama ""
fi

echo "==> installing wattpool and its dependencies into .venv"
"$VENV/bin/python" -m pip install --quiet -e "$ROOT[dev]" 2>&1 | grep -v '^WARNING: Location' || true
"$VENV/bin/python" -c 'import wattpool, llama_cpp, openai' # fail loudly if anything is missing
# A build that imports can still crash on this CPU: generate one token with the shipped
# model, and rebuild from source (not from pip's cache) once if that fails.
if ! "$VENV/bin/python" -m wattpool.engines.smoke; then
  echo "==> llama.cpp crashed on this machine; rebuilding it from source" >&2
  "$VENV/bin/python" -m pip cache remove llama_cpp_python >/dev/null 2>&1 || true
  install_llama "--force-reinstall --no-deps --no-cache-dir"
  "$VENV/bin/python" -m wattpool.engines.smoke
fi
echo "$want" > "$STAMP"
