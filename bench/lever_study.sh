#!/usr/bin/env bash
# Training levers, then each adapter decoded alone on dev-972: one study on a GPU machine after the
# ferry, started and followed through bench/device_run.sh:
#   REPO=$PWD bash bench/device_run.sh start bash bench/lever_study.sh NAME LEVER...
#   VARIANTS="generation.candidates=12 generation.max_new_tokens=192" REPO=$PWD bash bench/device_run.sh start ...
# (A) bench/training_levers.sh LEVER... (PARALLEL at a time, default all at once; a lever may end in
#     +seedN); an earlier study's runs move to runs/levers_before/,
# (C) each adapter alone on dev-972: greedy and voted k=16 with majority_rows (the default pick),
#     batch 8192, shared prefix KV, cuda_graph_rows=512 (the settings of docs/benchmarks.md),
# (D) each of VARIANTS (space-separated; commas join overrides of one variant) as another voted row
#     of the first lever's adapter: what voting costs and scores with it.
# STAGES (default ACD) picks the stages: STAGES=CD decodes the levers' latest runs in runs/levers again.
# Results in /tmp/NAME/ (A: logs and records, C and D: decoding_ablation.py outputs), the timeline in /tmp/NAME.log.
set -uo pipefail
name=$1; shift; levers=("$@")
read -ra variants <<< "${VARIANTS:-}"
STAGES=${STAGES:-ACD}
mkdir -p /tmp/bin; printf '#!/bin/sh\nexec python3 "$@"\n' > /tmp/bin/python; chmod +x /tmp/bin/python; export PATH=/tmp/bin:$PATH
cd "$REPO"
. "${FERRY_ENV:-/tmp/ferry/env.sh}" > /dev/null  # PYTHONPATH, FERRY_MODEL, FERRY_SPIDER
export RAY_SPIDER_GGUF="$FERRY_MODEL" SPIDER_DIR="$FERRY_SPIDER" RAY_SPIDER_CACHE=/tmp/rs_cache HF_HUB_OFFLINE=1
export PYTHONPATH="$REPO:$PYTHONPATH" PYTHONUNBUFFERED=1 RAY_ADDRESS=local CUDA_VISIBLE_DEVICES=0
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 RAY_memory_monitor_refresh_ms=0
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S=300
S=/tmp/$name; mkdir -p $S/A $S/C $S/D; T0=$SECONDS
step() { echo "=== $(date +%T) +$((SECONDS - T0))s $*"; }
decode() {  # decode OUT RUN ARGS...: decoding_ablation.py of RUN's adapter on dev-972, shared KV, graphs of 512 rows
  local out=$1 run=$2; shift 2
  python3 bench/decoding_ablation.py --config "$run/config.yaml" --adapter "$run/adapter" --out "$out" \
    --candidates 16 --batch-size 8192 --set generation.share_prefix_kv=true --set generation.cuda_graph_rows=512 "$@" > "$out.txt" 2>&1
}
{
step "start"
python3 -c "import ray_spider.cli, sqlglot, llguidance, liger_kernel; print('imports ok')" || { step "IMPORTS FAILED"; exit 1; }
if [[ $STAGES == *A* ]]; then
  step "A levers ${levers[*]}, ${PARALLEL:=${#levers[@]}} at once"
  [[ -d runs/levers ]] && { mkdir -p runs/levers_before; mv runs/levers "runs/levers_before/$(date +%s)"; }
  PARALLEL=$PARALLEL bash bench/training_levers.sh "${levers[@]}" > $S/A/levers.txt 2>&1
  step "A done"
fi
runs=()
for lever in "${levers[@]}"; do
  run=$(ls -td runs/levers/lever-"${lever/+/-}"-*/ 2> /dev/null | head -1); runs+=("$run")
  mkdir -p "$S/A/$lever"; cp "runs/levers/$lever.log" "$S/A/$lever/" 2> /dev/null
  [[ -n $run ]] || { step "$lever: no run folder (its log: runs/levers/$lever.log)"; continue; }
  (cd "$run" && cp -r *.json *.md *.yaml *.png "$S/A/$lever/" 2> /dev/null)
  [[ $STAGES == *C* ]] || continue
  step "C $lever on $run (alone)"
  decode "$S/C/$lever" "$run" --rows greedy,voted_rows
  step "C $lever done"
done
[[ $STAGES == *D* && -n ${runs[0]} ]] || variants=()
for variant in "${variants[@]}"; do
  sets=(); for item in ${variant//,/ }; do sets+=(--set "$item"); done
  step "D ${levers[0]} voted with $variant"
  decode "$S/D/$variant" "${runs[0]}" --rows voted_rows "${sets[@]}"
  step "D $variant done"
done
step "STUDY DONE"
} > /tmp/$name.log 2>&1
