#!/usr/bin/env bash
# Issue 22's device run as one script, under 8 minutes on one H100/H200: the pack bench (one trial at a time, 4-16
# processes, packs of 4,096 and 16,384 members beside the plain vmap loop), the probe bench (resnet18-like on 2,048
# CIFAR-size inputs against PyHessian and curvlinops + scipy's eigsh) and the GPU correctness checks
# (bench/gpu_correctness.py). Each part has its own time limit, so one slow part cannot starve the others.
#
#   bash bench/gpu_check.sh --prepare   on a machine with the project's .venv: the trial configs as JSON and the
#                                       wheels the device lacks (PyHessian, curvlinops and its dependencies) in
#                                       bench/gpu/ (ignored by git: carry it, with the run tool's `carry`)
#   bash bench/gpu_check.sh --cpu       the same run on the CPU with small sizes, to test the script
#   bash bench/gpu_check.sh             on the device (torch, numpy, scikit-learn): the measurement; output in
#                                       $OUT (default /tmp/gpu_check), one log per part
set -uo pipefail
cd "$(dirname "$0")/.."
HERE=bench/gpu
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python

if [ "${1:-}" = "--prepare" ]; then
    mkdir -p "$HERE/wheels"
    "$PY" bench/pack_bench.py --write-base-config "$HERE/pack_base.json"
    "$PY" bench/gpu_correctness.py --write-configs "$HERE/configs.json"
    "$PY" -m pip download --quiet --no-deps --dest "$HERE/wheels" pyhessian==0.1 curvlinops-for-pytorch==3.0.1 \
        backpack-for-pytorch einconv einops linear_operator opt-einsum unfoldnd jaxtyping wadler-lindig
    du -sh "$HERE"
    exit 0
fi

OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
if [ "${1:-}" = "--cpu" ]; then  # small sizes, every part
    DEVICE=cpu; MEMBERS="64 256"; PROCESSES="2"; STEPS=50; ALONE=2; PROBE=(--model cnn --n 128); LIMIT=600
else
    DEVICE=cuda; MEMBERS="4096 16384"; PROCESSES="4 8 16"; STEPS=300; ALONE=4; PROBE=(--model resnet18-like --n 2048)
    LIMIT=200
fi
if [ -d "$HERE/wheels" ] && ! "$PY" -c "import pyhessian, curvlinops" 2>/dev/null; then
    "$PY" -m pip install --quiet --no-deps --no-index --target /tmp/gpu_deps "$HERE"/wheels/*
    export PYTHONPATH=/tmp/gpu_deps:${PYTHONPATH:-}
fi
export PYTHONPATH=platform:${PYTHONPATH:-}
CONFIGS=(); [ -f "$HERE/configs.json" ] && CONFIGS=(--configs "$HERE/configs.json")
BASE=(); [ -f "$HERE/pack_base.json" ] && BASE=(--base-config "$HERE/pack_base.json")

part() {  # name, then the command: its output to the terminal and to $OUT/name.log, within $LIMIT seconds
    local name=$1; shift
    echo "== $name: $* (limit ${LIMIT}s)"
    local started=$SECONDS
    timeout "$LIMIT" "$@" 2>&1 | tee "$OUT/$name.log"
    echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - started)) s"
}

"$PY" -c "import torch; print('torch', torch.__version__, 'device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
part correctness "$PY" bench/gpu_correctness.py --device "$DEVICE" "${CONFIGS[@]}"
# shellcheck disable=SC2086  # the member and process lists are words
part pack "$PY" bench/pack_bench.py --device "$DEVICE" "${BASE[@]}" --members $MEMBERS --processes $PROCESSES \
    --steps "$STEPS" --alone "$ALONE"
part probe "$PY" bench/probe_bench.py --device "$DEVICE" "${PROBE[@]}"
echo "total ${SECONDS} s"
