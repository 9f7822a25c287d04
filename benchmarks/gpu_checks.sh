#!/usr/bin/env bash
# The GPU checks of issue 11, in one call on a lent CUDA machine (a bare image with torch 2.11 and transformers 5,
# no network): the CUDA-graph update's test, its speed against SB3's SAC, and the full-size latency / memory of
# steering SmolVLA, X-VLA and pi0.5 (then pi0). Every step has its own time limit and writes into $OUT as it goes,
# so a step that fails or runs out of time still leaves the earlier results.
#
#   benchmarks/gpu_checks.sh updates      # the CUDA-graph test and update speed (about 2 min with the install)
#   benchmarks/gpu_checks.sh latency      # SmolVLA, X-VLA, pi0.5 latency + memory (about 10 min: a call of its own)
#
# from the repo root, with the wheels below carried in .whl and .whl_pi. Measured on an H100 (2026-11-27): the
# install takes 20 s, each full-size policy 1.5-3 min (three fresh processes, each building the model on the CPU).
#
# Wheels (python 3.12, manylinux x86_64, downloaded with `pip download --no-deps`): .whl holds lerobot 0.4.4 and
# the packages its policies import that the image lacks or has in other versions (transformers 4.57.6,
# tokenizers 0.22.2, huggingface-hub 0.35.3, datasets, diffusers, draccus, ...), plus stable-baselines3 and
# gymnasium; .whl_pi holds the openpi-patched transformers 4.53.3 that LeRobot's pi0 / pi0.5 need
# (scripts/make_pi_env.sh builds the same overlay locally).
set -u
part=${1:-updates}
OUT=${OUT:-/tmp/gpu_checks_out}
mkdir -p "$OUT"
log="$OUT/gpu_checks.log"
exec > >(tee -a "$log") 2>&1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
step() { echo; echo "=== $1 ($(date +%T))"; }

step "install"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
if [ "$part" = latency ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site_pi_a .whl_pi/transformers-4.53.3*.whl .whl_pi/tokenizers-*.whl || exit 1
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site_pi_b .whl_pi/transformers_openpi-*.whl || exit 1
  # The overlay as make_pi_env.sh builds it: regular transformers' dist-info (LeRobot detects it by that name), the
  # fork's package files over it.
  mkdir -p /tmp/site_pi && cp -r /tmp/site_pi_a/. /tmp/site_pi/ && cp -r /tmp/site_pi_b/. /tmp/site_pi/
fi
# PyAV is imported when lerobot.datasets.video_utils loads (reached through lerobot.policies -> groot) and read for
# one default argument (av.logging.WARNING). Nothing here decodes video, and its 40 MB wheel does not fit the
# 64 MiB transfer beside the rest, so a stand-in with that constant takes its place on this machine only.
mkdir -p /tmp/stubs/av && echo "from . import logging" > /tmp/stubs/av/__init__.py && echo "WARNING = 30" > /tmp/stubs/av/logging.py
export PYTHONPATH=/tmp/site:/tmp/stubs:$PWD
PI_PATH=/tmp/site_pi:$PYTHONPATH
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, transformers, lerobot; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"

if [ "$part" = updates ]; then
step "CUDA-graph update test"
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_graph.py 2>&1 | tail -40

step "update speed: SB3 SAC vs vla_steer eager / CUDA graph"
timeout 120 python3 benchmarks/gpu_update_speed.py --device cuda --updates 1500 --output "$OUT/gpu_update_speed.json"
fi
if [ "$part" = latency ]; then

for policy in smolvla xvla; do
  step "latency + memory: $policy full size, bf16"
  timeout 170 python3 benchmarks/vla_latency.py --policy $policy --device cuda --dtype bfloat16 --rounds 10 --warmup 2 \
    --output "$OUT/${policy}_latency_cuda.json" 2>&1 | grep -v "^  round"
done
step "latency + memory: pi05 full size, bf16"
PYTHONPATH=$PI_PATH timeout 230 python3 benchmarks/vla_latency.py --policy pi05 --device cuda --dtype bfloat16 \
  --rounds 10 --warmup 2 --output "$OUT/pi05_latency_cuda.json" 2>&1 | grep -v "^  round"
fi
step "done"
