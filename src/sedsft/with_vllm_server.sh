#!/usr/bin/env bash
# Run a GRPO command with a `trl vllm-serve` rollout server on GPUs of its own.
# usage: with_vllm_server.sh MODEL TENSOR_PARALLEL PORT TRAIN_PROCESSES [OPTIONS] -- COMMAND...
#   PORT                  the server's HTTP port on 127.0.0.1, or auto: a free one, chosen now
#   --group-port P|auto   the NCCL weight-sync group's port (TRL's vllm_group_port); default auto
#   --max-model-len N     passed as `trl vllm-serve --max_model_len N` (longest prompt + completion)
#   --trust-remote-code   passed as `trl vllm-serve --trust_remote_code`
# Training gets the first TRAIN_PROCESSES visible GPUs, the server the next TENSOR_PARALLEL.
# The command starts only once the server answers http://127.0.0.1:PORT/health (vLLM's route,
# the one TRL's VLLMClient.check_server polls), and gets both ports in its environment:
# SEDSFT_VLLM_SERVER_PORT and SEDSFT_VLLM_GROUP_PORT (sedsft.rl puts them into GRPOConfig).
# A server that exits first, or does not answer within SEDSFT_VLLM_SERVER_TIMEOUT seconds
# (default 1800: loading and compiling a large model takes minutes), stops the job (exit 1).
set -euo pipefail
usage="usage: with_vllm_server.sh MODEL TENSOR_PARALLEL PORT TRAIN_PROCESSES [--group-port P|auto] [--max-model-len N] [--trust-remote-code] -- COMMAND..."
(( $# >= 5 )) || { echo "with_vllm_server: $usage" >&2; exit 2; }
model=$1 tp=$2 port=$3 train=$4
shift 4
group_port=auto max_model_len="" trust_remote_code=false
while (( $# )) && [ "$1" != "--" ]; do
  case $1 in
    --group-port) group_port=${2:?--group-port needs a value}; shift 2 ;;
    --max-model-len) max_model_len=${2:?--max-model-len needs a value}; shift 2 ;;
    --trust-remote-code) trust_remote_code=true; shift ;;
    *) echo "with_vllm_server: unknown option $1; $usage" >&2; exit 2 ;;
  esac
done
[ "${1:-}" = "--" ] && shift
(( $# )) || { echo "with_vllm_server: no command after --; $usage" >&2; exit 2; }
timeout=${SEDSFT_VLLM_SERVER_TIMEOUT:-1800}

visible=${CUDA_VISIBLE_DEVICES:-$(seq -s, 0 $(( $(nvidia-smi -L | wc -l) - 1 )))}
IFS=, read -r -a gpus <<< "$visible"
if (( ${#gpus[@]} < train + tp )); then
  echo "with_vllm_server: need $train training + $tp server GPUs, have ${#gpus[@]} ($visible)" >&2
  exit 2
fi
train_gpus=$(IFS=,; echo "${gpus[*]:0:train}")
server_gpus=$(IFS=,; echo "${gpus[*]:train:tp}")

# auto: the kernel's choice of a free port (bind to port 0; both sockets stay open until both are
# chosen, so the two differ); a pinned port must be free now, or another job's server could answer
ports=$(python3 - "$port" "$group_port" <<'EOF'
import socket, sys
held, chosen = [], []
for name, wanted in zip(("server port", "group port"), sys.argv[1:]):
    s = socket.socket()
    try:
        s.bind(("", 0 if wanted == "auto" else int(wanted)))
    except (OSError, ValueError) as e:
        sys.exit(f"with_vllm_server: {name} {wanted} is not free ({e})")
    held.append(s)
    chosen.append(str(s.getsockname()[1]))
print(*chosen)
EOF
)
read -r port group_port <<< "$ports"

serve=(trl vllm-serve --model "$model" --tensor_parallel_size "$tp" --port "$port" --host 127.0.0.1)
[ -n "$max_model_len" ] && serve+=(--max_model_len "$max_model_len")
[ "$trust_remote_code" = true ] && serve+=(--trust_remote_code)
echo "with_vllm_server: GPUs $train_gpus train, $server_gpus serve; server port $port, group port $group_port" >&2
CUDA_VISIBLE_DEVICES=$server_gpus "${serve[@]}" &
server=$!
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true' EXIT

health=http://127.0.0.1:$port/health
deadline=$(( SECONDS + timeout ))
until python3 -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)" "$health" 2>/dev/null; do
  if ! kill -0 "$server" 2>/dev/null; then
    code=0; wait "$server" || code=$?
    echo "with_vllm_server: the vLLM server (${serve[*]}) exited with code $code before answering $health" >&2
    exit 1
  fi
  if (( SECONDS >= deadline )); then
    echo "with_vllm_server: the vLLM server did not answer $health within $timeout s (SEDSFT_VLLM_SERVER_TIMEOUT)" >&2
    exit 1
  fi
  sleep 1
done
echo "with_vllm_server: the server answers $health; training starts" >&2
CUDA_VISIBLE_DEVICES=$train_gpus SEDSFT_VLLM_SERVER_PORT=$port SEDSFT_VLLM_GROUP_PORT=$group_port "$@"
