#!/usr/bin/env bash
# The tutorial in one command: set up, then run the whole flow with the profile that fits this machine
# (gpu where nvidia-smi sees a GPU: Qwen3-0.6B with the tutorial's settings; else cpu: the embedded Gemma 3 270M).
#
#   bash sft.sh                                   # everything, defaults
#   bash sft.sh --profile cpu train.max_steps=20  # any `xtk run` arguments pass through
#
# Teacher labels are used when $DASHSCOPE_API_KEY is set; otherwise the generator's gold labels (the report
# says which). Re-running skips finished stages and resumes an interrupted one.
set -euo pipefail
cd "$(dirname "$0")"
bash setup.sh --flow  # llama.cpp's build (for xtk export) is left to a full `bash setup.sh`

args=("$@")
profile=""
for ((i = 0; i < ${#args[@]}; i++)); do
  [ "${args[$i]}" = "--profile" ] && profile=${args[$((i + 1))]:-}
done
if [ -z "$profile" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then profile=gpu; else profile=cpu; fi
  args=(--profile "$profile" "${args[@]}")
fi
# On CPU one torch thread per process is ~10x faster than two on 2 cores for generation (measured here).
[ "$profile" = cpu ] && export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# xtk run ends by printing where report.md, accuracy.png and loss.png are; the venv is setup.sh's (XTK_VENV too).
"${XTK_VENV:-.venv}/bin/xtk" run recipes/logistics_zh.yaml "${args[@]}"
