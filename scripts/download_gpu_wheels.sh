#!/usr/bin/env bash
# Download, on a machine with internet access, the wheels an offline GPU machine needs to run the
# pipeline and scripts/gpu_check.sh: the packages its image lacks, for CPython 3.12 on
# manylinux x86-64 (an image that already has torch, transformers, accelerate, pandas, pyarrow,
# numpy, sympy, pyyaml, requests, httpx, huggingface-hub, ... but not trl, deepspeed, datasets,
# math-verify or snakemake).
#
#   bash scripts/download_gpu_wheels.sh            # into .whl/ (git-ignored)
#   bash scripts/download_gpu_wheels.sh -d DIR     # elsewhere
#   bash scripts/download_gpu_wheels.sh --no-pulp  # without PuLP (16 MB: snakemake's ILP
#                                                  # scheduler; without it snakemake is greedy)
#
# Then, on the GPU machine: bash scripts/gpu_check.sh --wheels .whl
# Versions equal pyproject.toml's pins (trl, deepspeed, datasets, math-verify, snakemake) and,
# for their dependencies, the versions a `pip install -e .` resolved on the development machine.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
DEST=$REPO/.whl
WITH_PULP=1
PYTHON=${PYTHON:-python3}
while [ $# -gt 0 ]; do
    case "$1" in
        -d|--dest) DEST=$2; shift 2 ;;
        --no-pulp) WITH_PULP=0; shift ;;
        -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
        *) echo "download_gpu_wheels.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)
cd "$REPO"

# The packages missing from the GPU image, with their dependencies that are missing too.
# One version of each: two versions of one package stop the whole offline install.
PACKAGES=(
    # training and evaluation
    trl==1.16.0
    datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
    math-verify==0.9.0 latex2sympy2_extended==1.11.0 antlr4-python3-runtime==4.13.2
    deepspeed==0.19.8 hjson==3.1.0 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0
    typing-inspection==0.4.5
    # the loss perf step's peers (Triton kernels; the image has triton): pure-python wheels
    liger-kernel==0.8.5 cut-cross-entropy==25.1.1
    # training curves (config `tracker`: the Trainer's TensorBoard callback)
    tensorboard==2.21.0 tensorboard-data-server==0.7.2 absl-py==2.5.1 grpcio==1.85.3 Markdown==3.11.3
    Werkzeug==3.1.9 protobuf==7.36.2
    # configuration validation (sedsft.config)
    jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
    # the workflow
    snakemake==9.27.1 snakemake-interface-common==1.23.0 snakemake-interface-executor-plugins==9.4.0
    snakemake-interface-logger-plugins==2.1.0 snakemake-interface-report-plugins==1.3.0
    snakemake-interface-scheduler-plugins==2.0.2 snakemake-interface-storage-plugins==4.4.1
    argparse-dataclass==2.0.0 conda-inject==1.3.2 ConfigArgParse==1.9.0 connection_pool==0.0.3
    docutils==0.22.4 dpath==2.2.0 GitPython==3.2.1 gitdb==4.0.12 smmap==5.0.3 humanfriendly==10.0
    immutables==0.21 nbformat==5.11.1 fastjsonschema==2.22.3 jupyter_core==5.9.1 traitlets==5.16.1
    platformdirs==4.14.8 smart_open==7.7.1 sqlmodel==0.0.37 SQLAlchemy==2.0.58 greenlet==3.5.6
    tenacity==9.2.1 throttler==1.2.3 yte==1.9.4
)
# PuLP is snakemake's ILP scheduler (it bundles the CBC solver, hence its size)
[ "$WITH_PULP" = 1 ] && PACKAGES+=(PuLP==3.3.2)

PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux1_x86_64 --platform any)

for spec in "${PACKAGES[@]}"; do
    name=${spec%%==*}
    version=${spec#*==}
    stem=$(echo "$name" | tr 'A-Z.-' 'a-z__')
    if ls "$DEST" | tr 'A-Z' 'a-z' | grep -q "^${stem}-${version}-.*\.whl$"; then
        continue  # there already
    fi
    if "$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
        --python-version 3.12 --implementation cp "${PLATFORMS[@]}" -d "$DEST" "$spec" 2>/dev/null; then
        continue
    fi
    # only a source distribution (deepspeed, connection_pool): build a pure-python wheel here.
    # DeepSpeed builds no compiled ops by default (it JIT-compiles them on first use if needed).
    echo "$spec: no wheel for Python 3.12 on PyPI; building one from the source distribution"
    "$PYTHON" -m pip wheel -q --disable-pip-version-check --no-deps --no-binary "$name" -w "$DEST" "$spec"
    built=$(ls "$DEST" | grep -i "^${stem}-${version}-.*\.whl$" | grep -v -- '-none-any\.whl$' || true)
    if [ -n "$built" ]; then
        echo "$spec: the wheel built here is not pure-python ($built); it will not run on another machine" >&2
        exit 1
    fi
done

# exactly one file per package (an older download left in DEST would be installed twice)
dupes=$(ls "$DEST"/*.whl | xargs -n1 basename | cut -d- -f1 | tr 'A-Z-.' 'a-z__' | sort | uniq -d)
if [ -n "$dupes" ]; then
    echo "$DEST holds several versions of: $dupes; remove the old ones" >&2
    exit 1
fi
ls -1 "$DEST"/*.whl | xargs -n1 basename
bytes=$(cat "$DEST"/*.whl | wc -c)
echo "$(ls "$DEST"/*.whl | wc -l) wheels, $(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }') MiB in $DEST"
if [ "$bytes" -gt $((40 * 1048576)) ]; then
    echo "warning: over 40 MiB; --no-pulp leaves PuLP out" >&2
fi
