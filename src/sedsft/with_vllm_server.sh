#!/usr/bin/env bash
# Run a GRPO command with a `trl vllm-serve` rollout server on GPUs of its own.
# usage: with_vllm_server.sh MODEL TENSOR_PARALLEL PORT TRAIN_PROCESSES -- COMMAND...
# Training gets the first TRAIN_PROCESSES visible GPUs, the server the next TENSOR_PARALLEL.
# TRL's client waits for the server (vllm_server_timeout), so no polling is needed here.
set -euo pipefail
model=$1 tp=$2 port=$3 train=$4
shift 4
[ "$1" = "--" ] && shift
visible=${CUDA_VISIBLE_DEVICES:-$(seq -s, 0 $(( $(nvidia-smi -L | wc -l) - 1 )))}
IFS=, read -r -a gpus <<< "$visible"
if (( ${#gpus[@]} < train + tp )); then
  echo "with_vllm_server: need $train training + $tp server GPUs, have ${#gpus[@]} ($visible)" >&2
  exit 2
fi
train_gpus=$(IFS=,; echo "${gpus[*]:0:train}")
server_gpus=$(IFS=,; echo "${gpus[*]:train:tp}")
CUDA_VISIBLE_DEVICES=$server_gpus trl vllm-serve --model "$model" --tensor_parallel_size "$tp" \
  --port "$port" --host 127.0.0.1 &
server=$!
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true' EXIT
CUDA_VISIBLE_DEVICES=$train_gpus "$@"
