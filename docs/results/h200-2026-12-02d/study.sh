#!/usr/bin/env bash
# One H200, run through bench/device_run.sh after the ferry (2026-12-02, fourth run of the day), twice:
#   REPO=$PWD bash bench/device_run.sh start bash docs/results/h200-2026-12-02d/study.sh study r128 lr1e-3
#   REPO=$PWD bash bench/device_run.sh start bash docs/results/h200-2026-12-02d/study.sh study2 lr1.5e-3 dropout0
# (A) the named training levers at once (bench/training_levers.sh, PARALLEL=2); an earlier call's runs
#     move to runs/levers_before/,
# (C) then each adapter alone on dev-972: greedy and voted k=16 with majority_rows (the default
#     pick), batch 8192, shared prefix KV, cuda_graph_rows=512 (the 27.7 s settings).
# Results in /tmp/NAME/, the timeline in /tmp/NAME.log.
set -uo pipefail
name=$1; shift; levers=("$@")
mkdir -p /tmp/bin; printf '#!/bin/sh\nexec python3 "$@"\n' > /tmp/bin/python; chmod +x /tmp/bin/python; export PATH=/tmp/bin:$PATH
cd "$REPO"
. /tmp/ferry/env.sh > /dev/null
export RAY_SPIDER_GGUF="$FERRY_MODEL" SPIDER_DIR="$FERRY_SPIDER" RAY_SPIDER_CACHE=/tmp/rs_cache HF_HUB_OFFLINE=1
export PYTHONPATH="$REPO:$PYTHONPATH" PYTHONUNBUFFERED=1 RAY_ADDRESS=local CUDA_VISIBLE_DEVICES=0
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 RAY_memory_monitor_refresh_ms=0
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S=300
S=/tmp/$name; mkdir -p $S/A $S/C; T0=$SECONDS
step() { echo "=== $(date +%T) +$((SECONDS - T0))s $*"; }
{
step "start"
python3 -c "import ray_spider.cli, sqlglot, llguidance, liger_kernel; print('imports ok')" || { step "IMPORTS FAILED"; exit 1; }
step "A levers ${levers[*]}, 2 at once"
[[ -d runs/levers ]] && { mkdir -p runs/levers_before; mv runs/levers "runs/levers_before/$(date +%s)"; }
PARALLEL=2 bash bench/training_levers.sh "${levers[@]}" > $S/A/levers.txt 2>&1
step "A done"
for lever in "${levers[@]}"; do
  run=$(ls -td runs/levers/lever-$lever-*/ | head -1)
  mkdir -p $S/A/$lever; cp runs/levers/$lever.log $S/A/$lever/; (cd "$run" && cp -r *.json *.md *.yaml *.png $S/A/$lever/ 2>/dev/null)
  step "C $lever on $run (alone)"
  python3 bench/decoding_ablation.py --config "$run/config.yaml" --adapter "$run/adapter" --out $S/C/$lever \
    --rows greedy,voted_rows --candidates 16 --batch-size 8192 \
    --set generation.share_prefix_kv=true --set generation.cuda_graph_rows=512 > $S/C/$lever.txt 2>&1
  step "C $lever done"
done
step "STUDY DONE"
} > /tmp/$name.log 2>&1
