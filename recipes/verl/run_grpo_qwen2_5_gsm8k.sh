#!/usr/bin/env bash
# GRPO on GSM8K with Qwen2.5 through rollout_len's LengthAwareRollout (config: grpo_qwen2_5_gsm8k.yaml).
#
#   bash recipes/verl/run_grpo_qwen2_5_gsm8k.sh [hydra overrides]
#   DATA_DIR=/data/gsm8k bash recipes/verl/run_grpo_qwen2_5_gsm8k.sh actor_rollout_ref.model.path=Qwen/Qwen2.5-1.5B-Instruct
#
# DATA_DIR (default ~/data/gsm8k) gets train.parquet and test.parquet from the Hugging Face hub on first use.
set -euo pipefail

RECIPE_DIR=$(cd "$(dirname "$0")" && pwd)
DATA_DIR=${DATA_DIR:-$HOME/data/gsm8k}
PYTHON=${PYTHON:-python}

if [ ! -f "$DATA_DIR/train.parquet" ] || [ ! -f "$DATA_DIR/test.parquet" ]; then
    "$PYTHON" -m rollout_len.verl.gsm8k "$DATA_DIR"
fi

exec "$PYTHON" -m verl.trainer.main_ppo \
    --config-path="$RECIPE_DIR" --config-name=grpo_qwen2_5_gsm8k \
    data.train_files="$DATA_DIR/train.parquet" \
    data.val_files="$DATA_DIR/test.parquet" \
    "$@"
