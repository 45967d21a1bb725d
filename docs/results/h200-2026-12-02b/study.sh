#!/usr/bin/env bash
# One H200, run through bench/device_run.sh after the ferry (2026-12-02, second run of the day):
# (B) alone: the 8B shape made, dev-972 greedy (48 new tokens) with prefix caching, shared prefix KV,
#     and shared prefix KV decoded as one CUDA graph for all rows (batch 256 and 512).
# (A) the training lever data.include_train_others (135M, the sweep winner's config + train_others)
#     beside the 8B padding-free bench (bench/llama8b.sh benchpf): both contended, the bench's two
#     sides alike.
# (C) alone: the lever's adapter on dev-972: greedy, then voted k=16 with CUDA graph decoding for
#     more rows (generation.cuda_graph_rows), with and without shared prefix KV, then the default.
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
S=/tmp/study; mkdir -p $S/A $S/B $S/C $S/L; T0=$SECONDS
step() { echo "=== $(date +%T) +$((SECONDS - T0))s $*"; }
M=/tmp/llama31-8b-shape
P8="--model $M --quantization none --questions 972 --max-new-tokens 48"
{
step "start"
python3 -c "import ray_spider.cli, sqlglot, llguidance; print('imports ok')" || { step "IMPORTS FAILED"; exit 1; }
python3 -c "import liger_kernel" 2>&1 | tail -1
step "B make 8B"
python3 bench/make_shape_model.py --shape llama-3.1-8b --out $M > $S/B/make.txt 2>&1
step "B 8B generation, alone"
python3 bench/bench_generate.py --device cuda $P8 \
  --sides pruned:256+prefix,pruned:256+shared,pruned:256+graph256+shared,pruned:512+graph512+shared > $S/B/bench_generate_8b.txt 2>&1
step "A lever train_others beside benchpf"
rm -rf runs/levers
PARALLEL=1 bash bench/training_levers.sh train_others > $S/A/levers.txt 2>&1 &
trainer=$!
OUT=$S/L bash bench/llama8b.sh benchpf > $S/L/parts.txt 2>&1
step "A benchpf done"
wait $trainer
run=$(ls -td runs/levers/lever-train_others-*/ | head -1)
mkdir -p $S/A/train_others; cp runs/levers/*.log $S/A/train_others/; (cd "$run" && cp -r *.json *.md *.yaml $S/A/train_others/ 2>/dev/null)
step "C greedy on $run (alone)"
ab() { local name=$1; shift; python3 bench/decoding_ablation.py --config "$run/config.yaml" --adapter "$run/adapter" --out $S/C/$name "$@" > $S/C/$name.txt 2>&1; step "C $name done"; }
ab greedy --rows greedy
ab greedy_shared_graph256 --rows greedy --set generation.share_prefix_kv=true --set generation.cuda_graph_rows=256 --batch-size 256
K16="--rows voted --candidates 16 --batch-size 4096"
ab k16_shared_graph4096 $K16 --set generation.share_prefix_kv=true --set generation.cuda_graph_rows=4096
ab k16_shared_graph1024 $K16 --set generation.share_prefix_kv=true --set generation.cuda_graph_rows=1024
ab k16_graph1024 $K16 --set generation.cuda_graph_rows=1024
ab k16 $K16
ab k16_constrained_shared_graph4096 --rows constrained+voted --candidates 16 --batch-size 4096 --set generation.share_prefix_kv=true --set generation.cuda_graph_rows=4096
step "STUDY DONE"
} > /tmp/study.log 2>&1
# (E) after the study, alone, in three more calls on the same machine and environment (results in
#     decoding/k16_*shared_graph{512,2048}, k16_b8192_*, k16_b16384_*):
#   for g in 512 2048; do python3 bench/decoding_ablation.py --config $run/config.yaml --adapter $run/adapter \
#     --out $S/k16_shared_graph$g --rows voted --candidates 16 --batch-size 4096 \
#     --set generation.share_prefix_kv=true --set generation.cuda_graph_rows=$g; done
#   the same with --batch-size 8192 and cuda_graph_rows=512; --batch-size 16384 and 1024;
#   --batch-size 8192, cuda_graph_rows=512 and --set generation.max_new_tokens=128
