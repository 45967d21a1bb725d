#!/usr/bin/env bash
# One H200: (A) winner retrain (135M, seed 42) -> sampled candidates: guided / voted / constrained+voted, k=8 and 16;
# (B) after A, alone: 8B bench (padding-free product vs plain TRL, 30 steps), 8B predict greedy and voted.
set -uo pipefail
mkdir -p /tmp/bin; printf '#!/bin/sh\nexec python3 "$@"\n' > /tmp/bin/python; chmod +x /tmp/bin/python; export PATH=/tmp/bin:$PATH
cd "$REPO"
. /tmp/ferry/env.sh > /dev/null
export RAY_SPIDER_GGUF="$FERRY_MODEL" SPIDER_DIR="$FERRY_SPIDER" RAY_SPIDER_CACHE=/tmp/rs_cache HF_HUB_OFFLINE=1
export PYTHONPATH="$REPO:$PYTHONPATH" PYTHONUNBUFFERED=1 RAY_ADDRESS=local CUDA_VISIBLE_DEVICES=0
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 RAY_memory_monitor_refresh_ms=0
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S=300
S=/tmp/study; mkdir -p $S/A $S/B; T0=$SECONDS
step() { echo "=== $(date +%T) +$((SECONDS - T0))s $*"; }
M=/tmp/llama31-8b-shape
{
step "start $(cat .devpack/REVISION 2>/dev/null)"
rm -rf runs/levers
step "A winner (B: make 8B + GPU tests meanwhile)"
PARALLEL=1 bash bench/training_levers.sh winner > $S/A/levers.txt 2>&1 &
trainer=$!
python3 bench/make_shape_model.py --shape llama-3.1-8b --out $M > $S/B/make.txt 2>&1
python3 -m pytest -q -m gpu tests/test_candidates.py tests/test_constrained.py -p no:cacheprovider > $S/B/gpu_tests.txt 2>&1
step "B gpu tests: $(tail -1 $S/B/gpu_tests.txt)"
wait $trainer
run=$(ls -td runs/levers/lever-winner-*/ | head -1)
mkdir -p $S/A/winner; cp runs/levers/*.log $S/A/winner/; (cd "$run" && cp -r *.json *.md *.yaml $S/A/winner/ 2>/dev/null)
step "A ablation on $run"
python3 bench/decoding_ablation.py --config "$run/config.yaml" --adapter "$run/adapter" --out $S/A/greedy --rows greedy > $S/A/greedy.txt 2>&1
python3 bench/decoding_ablation.py --config "$run/config.yaml" --adapter "$run/adapter" --out $S/A/k8 \
  --rows voted,guided,constrained+voted --candidates 8 --batch-size 2048 > $S/A/k8.txt 2>&1
step "A k16"
python3 bench/decoding_ablation.py --config "$run/config.yaml" --adapter "$run/adapter" --out $S/A/k16 \
  --rows voted --candidates 16 --batch-size 4096 > $S/A/k16.txt 2>&1
step "B predict 8B"
python3 -m ray_spider predict --model $M --out $S/B/predict8b_greedy model.quantization=none data.dev_subset=null \
  generation.max_new_tokens=48 generation.batch_size=256 > $S/B/predict8b_greedy.txt 2>&1
python3 -m ray_spider predict --model $M --out $S/B/predict8b_graph256 model.quantization=none data.dev_subset=null \
  generation.max_new_tokens=48 generation.batch_size=256 generation.cuda_graph_rows=256 > $S/B/predict8b_graph256.txt 2>&1
step "B predict 8B voted (dev 200)"
python3 -m ray_spider predict --model $M --out $S/B/predict8b_voted8 model.quantization=none data.dev_subset=200 \
  generation.max_new_tokens=48 generation.batch_size=512 generation.candidates=8 generation.pick=majority > $S/B/predict8b_voted8.txt 2>&1
python3 -m ray_spider predict --model $M --out $S/B/predict8b_greedy200 model.quantization=none data.dev_subset=200 \
  generation.max_new_tokens=48 generation.batch_size=256 > $S/B/predict8b_greedy200.txt 2>&1
step "STUDY5 DONE"
} > /tmp/study5.log 2>&1
