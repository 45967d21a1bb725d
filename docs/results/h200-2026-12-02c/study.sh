#!/usr/bin/env bash
# One H200, run through bench/device_run.sh after the ferry (2026-12-02, third run of the day):
# (A) the winner's config retrained, seed 42 (the same-seed control of the 0.389 voted k=16 run of
#     2026-12-01), beside making the 8B shape.
# (C) alone: its adapter on dev-972: voted k=16 with the faster settings (batch 8192, shared prefix
#     KV, cuda_graph_rows=512; selection now in processes), voted k=16 with the defaults of the
#     0.389 run (batch 4096), greedy.
# (L) alone: the padding-free 8B training bench (bench/llama8b.sh benchpf).
# (G) alone: 8B dev-round decoding on the 4-bit base + a LoRA adapter (not merged), shared prefix
#     KV with and without a CUDA graph for every row.
set -uo pipefail
mkdir -p /tmp/bin; printf '#!/bin/sh\nexec python3 "$@"\n' > /tmp/bin/python; chmod +x /tmp/bin/python; export PATH=/tmp/bin:$PATH
cd "$REPO"
. /tmp/ferry/env.sh > /dev/null
export RAY_SPIDER_GGUF="$FERRY_MODEL" SPIDER_DIR="$FERRY_SPIDER" RAY_SPIDER_CACHE=/tmp/rs_cache HF_HUB_OFFLINE=1
export PYTHONPATH="$REPO:$PYTHONPATH" PYTHONUNBUFFERED=1 RAY_ADDRESS=local CUDA_VISIBLE_DEVICES=0
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 RAY_memory_monitor_refresh_ms=0
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S=300
S=/tmp/study; mkdir -p $S/A $S/C $S/L $S/G; T0=$SECONDS
step() { echo "=== $(date +%T) +$((SECONDS - T0))s $*"; }
M=/tmp/llama31-8b-shape
{
step "start"
python3 -c "import ray_spider.cli, sqlglot, llguidance, liger_kernel; print('imports ok')" || { step "IMPORTS FAILED"; exit 1; }
step "A winner seed 42 beside make 8B"
rm -rf runs/levers
PARALLEL=1 bash bench/training_levers.sh winner > $S/A/levers.txt 2>&1 &
trainer=$!
python3 bench/make_shape_model.py --shape llama-3.1-8b --out $M > $S/L/make.txt 2>&1
step "A make done"
wait $trainer
run=$(ls -td runs/levers/lever-winner-*/ | head -1)
mkdir -p $S/A/winner; cp runs/levers/*.log $S/A/winner/; (cd "$run" && cp -r *.json *.md *.yaml *.png $S/A/winner/ 2>/dev/null)
step "C decoding on $run (alone)"
ab() { local name=$1; shift; python3 bench/decoding_ablation.py --config "$run/config.yaml" --adapter "$run/adapter" --out $S/C/$name "$@" > $S/C/$name.txt 2>&1; step "C $name done"; }
ab k16_b8192_shared_graph512 --rows voted --candidates 16 --batch-size 8192 --set generation.share_prefix_kv=true --set generation.cuda_graph_rows=512
ab k16 --rows voted --candidates 16 --batch-size 4096
ab greedy --rows greedy
step "L benchpf (alone)"
OUT=$S/L bash bench/llama8b.sh benchpf > $S/L/parts.txt 2>&1
step "L benchpf done"
step "G 8B 4-bit + adapter decoding (alone)"
python3 - $M /tmp/l8b_adapter > $S/G/adapter.txt 2>&1 <<'PY'
import sys, torch
from peft import LoraConfig, get_peft_model
from ray_spider.config import ModelConfig
from ray_spider.model import load_for_inference
model, _ = load_for_inference(ModelConfig(name=sys.argv[1], quantization="nf4"), None, merge=False, device="cuda")
targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=targets, init_lora_weights="gaussian"))
peft_model.save_pretrained(sys.argv[2])
print("adapter saved", sys.argv[2])
PY
python3 bench/bench_generate.py --device cuda --model $M --quantization nf4 --adapter /tmp/l8b_adapter --questions 972 --max-new-tokens 48 \
  --sides pruned:256+shared,pruned:256+graph256+shared > $S/G/bench_generate_8b_nf4_adapter.txt 2>&1
step "STUDY DONE"
} > /tmp/study.log 2>&1
