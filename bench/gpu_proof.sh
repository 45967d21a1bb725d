#!/usr/bin/env bash
# The GPU proof (issue 6) on the H200 device machine, after the ferry is received there:
#   shared/device/pack --out .devpack --spider ../shared/spider      (here; then the `run` calls it prints)
#   OUT=$OUT bash bench/gpu_proof.sh STAGE                            (there; STAGE below)
# Stages (each fits one 10-minute call; run them back to back while the machine stays warm):
#   speed     train tokens/s: ray-spider train's settings against the plain TRL reference shape
#   controls  baseline and QLoRA r=16 on dev-972 (+ fast vs slow predictions on a sample)
#   r32       QLoRA r=32
#   sweep     the Optuna sweep (sweeps/sweep_smollm2.yaml), trials table, best adapter
# Results (small files) land in $OUT; docs/results.md quotes them with these commands.
set -euo pipefail
stage=${1:?stage: speed | controls | r32 | sweep}
. /tmp/ferry/env.sh > /dev/null
export PYTHONPATH="$PWD:$PYTHONPATH" RAY_SPIDER_GGUF="$FERRY_MODEL" SPIDER_DIR="$FERRY_SPIDER"
export RAY_SPIDER_CACHE=/tmp/rs_cache PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/proof_out}
RUNS=/tmp/proof_runs
mkdir -p "$OUT" "$RUNS"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$OUT/gpu.txt"
python3 -m ray_spider setup-model

keep_run() {  # copy a run folder's small files to $OUT/<name>/
  local run; run=$(ls -td "$RUNS"/"$1"-* | head -1)
  mkdir -p "$OUT/$1"
  cp "$run"/{config.yaml,manifest.json,report.md,metrics.parquet,curves.png} "$OUT/$1/" 2>/dev/null || true
  cp "$run"/dev_eval/summary.json "$OUT/$1/dev_summary.json" 2>/dev/null || true
  echo "$run"
}

case "$stage" in
  speed)
    python3 bench/bench_train.py --device cuda --steps 30 --batch-size 16 --accumulation 4 --max-length 1536 --threads 4 \
      --ray-batch-size 64 --ray-accumulation 1 --ray-group-by-length 2>&1 | tail -25 | tee "$OUT/bench_train.txt"
    ;;
  controls)
    python3 -m ray_spider baseline sweeps/baseline.yaml output_dir=$RUNS 2>&1 | tail -30
    keep_run baseline
    python3 -m ray_spider train sweeps/qlora_r16.yaml output_dir=$RUNS 2>&1 | grep -v PlacementGroupCleaner | tail -40
    r16=$(keep_run qlora-r16)
    python3 -m ray_spider predict --config sweeps/qlora_r16.yaml --adapter "$r16/adapter" --out "$RUNS/slow_sample" \
      generation.merge_adapter=false generation.batch_size=100 data.dev_subset=100 2>&1 | tail -12
    python3 bench/compare_predictions.py "$r16/dev_eval" "$RUNS/slow_sample" | tee "$OUT/fast_vs_slow.txt"
    ;;
  r32)
    python3 -m ray_spider train sweeps/qlora_r32.yaml output_dir=$RUNS 2>&1 | grep -v PlacementGroupCleaner | tail -30
    keep_run qlora-r32
    ;;
  sweep)
    python3 -m ray_spider sweep sweeps/sweep_smollm2.yaml storage=$RUNS/sweeps 2>&1 | grep -v PlacementGroupCleaner | tail -40
    cp $RUNS/sweeps/sweep-smollm2/{trials.parquet,trials.png,sweep.yaml} "$OUT/"
    python3 -m ray_spider best $RUNS/sweeps/sweep-smollm2 --out $RUNS/best_adapter 2>&1 | tail -20
    ;;
esac
