#!/usr/bin/env bash
# One H200, run through bench/device_run.sh after the ferry (2026-12-02):
# (A) the sweep winner's config retrained with train.seed=43; beside it (C1) the 8B shape made and its
#     dev-972 with and without generation.share_prefix_kv in one process, profiled (contended by A).
# (D) alone: the seed-43 adapter greedy, voted k=16, voted k=16 with share_prefix_kv.
# (C2) alone: the 8B A/B again, unprofiled (cut off on 2026-12-02: the device time ran out).
set -uo pipefail
mkdir -p /tmp/bin; printf '#!/bin/sh\nexec python3 "$@"\n' > /tmp/bin/python; chmod +x /tmp/bin/python; export PATH=/tmp/bin:$PATH
cd "$REPO"
. /tmp/ferry/env.sh > /dev/null
# the ferry lacks sqlglot and llguidance: wheels carried in .whl/
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export RAY_SPIDER_GGUF="$FERRY_MODEL" SPIDER_DIR="$FERRY_SPIDER" RAY_SPIDER_CACHE=/tmp/rs_cache HF_HUB_OFFLINE=1
export PYTHONPATH="$REPO:$PYTHONPATH" PYTHONUNBUFFERED=1 RAY_ADDRESS=local CUDA_VISIBLE_DEVICES=0
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 RAY_memory_monitor_refresh_ms=0
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S=300
S=/tmp/study; mkdir -p $S/A $S/B $S/C $S/D; T0=$SECONDS
step() { echo "=== $(date +%T) +$((SECONDS - T0))s $*"; }
M=/tmp/llama31-8b-shape
P8="--model $M --quantization none --questions 972 --max-new-tokens 48"
{
step "start"
rm -rf runs/levers
step "A winner seed 43; C1 make 8B + A/B beside it"
EXTRA="train.seed=43" PARALLEL=1 bash bench/training_levers.sh winner > $S/A/levers.txt 2>&1 &
trainer=$!
ls $M/*.safetensors > /dev/null 2>&1 || python3 bench/make_shape_model.py --shape llama-3.1-8b --out $M > $S/B/make.txt 2>&1
step "C1 8B A/B in one process, profiled (beside A)"
python3 bench/bench_generate.py --device cuda $P8 --sides pruned:256+prefix,pruned:256+shared --profile > $S/C/bench_generate_8b_contended.txt 2>&1
step "C1 done"
wait $trainer
run=$(ls -td runs/levers/lever-winner-*/ | head -1)
mkdir -p $S/A/winner; cp runs/levers/*.log $S/A/winner/; (cd "$run" && cp -r *.json *.md *.yaml $S/A/winner/ 2>/dev/null)
step "D seed-43 ablation on $run (alone)"
python3 bench/decoding_ablation.py --config "$run/config.yaml" --adapter "$run/adapter" --out $S/D/k16shared \
  --rows voted --candidates 16 --batch-size 4096 --set generation.share_prefix_kv=true > $S/D/k16shared.txt 2>&1
step "D k16 plain"
python3 bench/decoding_ablation.py --config "$run/config.yaml" --adapter "$run/adapter" --out $S/D/k16 \
  --rows voted --candidates 16 --batch-size 4096 > $S/D/k16.txt 2>&1
step "D greedy"
python3 bench/decoding_ablation.py --config "$run/config.yaml" --adapter "$run/adapter" --out $S/D/greedy --rows greedy > $S/D/greedy.txt 2>&1
step "C2 8B A/B alone"
python3 bench/bench_generate.py --device cuda $P8 --sides pruned:256+prefix,pruned:256+shared > $S/C/bench_generate_8b.txt 2>&1
step "STUDY DONE"
} > /tmp/study.log 2>&1
