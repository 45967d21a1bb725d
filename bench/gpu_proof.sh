#!/usr/bin/env bash
# The GPU proof (issue 6) on the H200 device machine, after the ferry is received there:
#   shared/device/pack --out .devpack --spider ../shared/spider      (here; then the `run` calls it prints)
#   OUT=$OUT bash bench/gpu_proof.sh STAGE                            (there; STAGE below)
# Stages that fit one 10-minute call (run them back to back while the machine stays warm):
#   speed     train tokens/s: ray-spider train's settings against the plain TRL reference shape
#   controls  baseline and QLoRA r=16 on dev-972 (+ fast vs slow predictions on a sample)
#   r32       QLoRA r=32
# The sweep and what follows it take longer than one call, so they run as a background pipeline:
#   follow [SECONDS]  start the pipeline in its own session (it outlives the call) unless it already
#                     runs, wait up to SECONDS (default 540), print a short status, pack its small
#                     results into $OUT/proof.tgz + $OUT/pipeline.log. Call it again at once (the
#                     machine is given back 30 s after a call; a long pause loses everything)
#                     until it prints PIPELINE DONE.
#   pipeline          (what `follow` starts) the parts named in PARTS, in order; "a+b" runs parts a and b
#                     side by side (on two GPUs: determinism on the first, bench on BENCH_GPU=1):
#                     sweep   the Optuna sweep (sweeps/sweep_smollm2.yaml, 3 trials per GPU, cut at
#                             SWEEP_DEADLINE_S), `trials`, `best`, then side by side: the best adapter
#                             on all of dev-972 and the slow path on a 100-question sample
#                     reruns  the winning config (the sweep's, else BEST_CONFIG) trained again, 3 side by
#                             side: twice with its seed, once with seed 7, each scored on dev-972;
#                             then the two same-seed runs compared (and the sweep's winner, if it ran)
#                     ddp     (2+ GPUs) the r=16 control with DDP over 2 GPUs, for issue 5
#                     determinism  the winner's first 50 steps 3 times on the first GPU: twice with
#                             deterministic kernels (bit-equal adapters?), once without (tokens/s cost)
#                     winner  the winning config trained once more with its seed on the first GPU, on dev-972
#                     gputests  the tests marked gpu (a failure turns CUDA graph decoding off for the runs after)
#                     bench   the generation benchmark (profiled) on a quiet GPU: the pruned engine at batch 1024
#                             without and with CUDA graph decoding; then `predict` on dev-972 at batch 1024 with
#                             the same adapter (its summary: generate_s + score_s): with graphs, without, with again
#                     bench_train  the training benchmark on the first GPU: ray-spider train against plain
#                             TRL, 100 steps after an untimed 2-step warm-up (BENCH_TRAIN_EXTRA appended)
#                     prefix  generation.prefix_cache off and on, dev-972 at max_new_tokens 48: SmolLM2's base
#                             (bf16) at batch 1024 and 256; then, when MODEL_8B names a folder (made by
#                             bench/make_shape_model.py when missing), an 8B shape at batch 256 and 512 (~5-8 min)
# Budget (docs/results.md): on one H200 the sweep needs ~20 min, the re-runs ~14 (three side by side), the
# bench ~2, bench_train ~6, determinism ~4, the ferry and setup ~1.5: one 30-minute session fits PARTS="sweep bench"
# or PARTS="reruns bench". Start `follow` in the call that sends the last ferry part. With two GPUs
# (nvidia-h200-x2) the same sweep file runs 6 trials at once (~11 min): PARTS="sweep ddp
# determinism+bench" SWEEP_DEADLINE_S=900 fitted one session (session 7), and PARTS="reruns bench_train+bench"
# BENCH_GPU=1 took 21.7 min with the ferry (session 8: re-runs 12 min, then bench_train 8 beside bench 7);
# PARTS="sweep reruns" should fit too (the re-runs spread over both GPUs). On one H200, PARTS="gputests
# winner bench" took 16.6 min with the ferry (session 9: setup 0.6, tests 0.5, winner 10, bench 4.5).
# Results (small files) land in $OUT; docs/results.md quotes them with these commands.
# A dry run of the pipeline on a CPU machine, with a tiny sweep (minutes, catches mistakes first; after
# the sweep it kills every Ray process on the machine, so run nothing else with Ray meanwhile):
#   FERRY_ENV=my_env.sh SWEEP_EXTRA="..." RUN_EXTRA="..." BENCH_EXTRA="--device cpu ..." bash bench/gpu_proof.sh pipeline
set -euo pipefail
stage=${1:?stage: speed | controls | r32 | follow | pipeline}
. "${FERRY_ENV:-/tmp/ferry/env.sh}" > /dev/null  # PYTHONPATH, FERRY_MODEL, FERRY_SPIDER
SWEEP_EXTRA=${SWEEP_EXTRA:-} RUN_EXTRA=${RUN_EXTRA:-} BENCH_EXTRA=${BENCH_EXTRA:-} BENCH_TRAIN_EXTRA=${BENCH_TRAIN_EXTRA:-}  # appended to the pipeline's commands
PARTS=${PARTS:-sweep reruns bench}  # what the pipeline runs, in order (part_* below); one 30-minute session fits "sweep" or "reruns bench"
BEST_CONFIG=${BEST_CONFIG:-docs/results/sweep-h200-attempt4/best-dev972/config.yaml}  # the winner to re-run; part_sweep sets its own
BENCH_ADAPTER=${BENCH_ADAPTER:-}  # the adapter part_bench decodes with (merged): the sweep's best or the same-seed re-run's; none = the base model
SWEEP_DEADLINE_S=${SWEEP_DEADLINE_S:-1320}  # past it the sweep is interrupted (Ctrl-C) and the pipeline goes on with the trials so far
export PYTHONPATH="$PWD:$PYTHONPATH" RAY_SPIDER_GGUF="$FERRY_MODEL" SPIDER_DIR="$FERRY_SPIDER"
export RAY_SPIDER_CACHE=/tmp/rs_cache PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S=300  # trials start side by side
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # NVLink multicast off (device KINDS.md)
# The multi-GPU kinds' memory grows as it is used (MemTotal starts at 31 GiB of 256): Ray's memory
# monitor would read that as nearly full and kill trials. Off here; the machine's limit still holds.
export RAY_memory_monitor_refresh_ms=0
OUT=${OUT:-/tmp/proof_out}
RUNS=${RUNS:-/tmp/proof_runs}
LOG=$RUNS/pipeline.log
mkdir -p "$OUT" "$RUNS"

latest_run() {  # latest_run NAME: the newest run folder NAME-<timestamp> under $RUNS (empty if none)
  ls -td "$RUNS/$1"-* 2>/dev/null | head -1 || true
}

keep_run() {  # copy a run folder's small files to $OUT/<name>/
  local run; run=$(latest_run "$1")
  mkdir -p "$OUT/$1"
  cp "$run"/{config.yaml,manifest.json,report.md,metrics.parquet,curves.png} "$OUT/$1/" 2>/dev/null || true
  cp "$run"/dev_eval/summary.json "$OUT/$1/dev_summary.json" 2>/dev/null || true
  echo "$run"
}

step() {  # step NAME COMMAND...: run it, log its time and exit status, go on either way
  local name=$1 started=$SECONDS; shift
  echo "=== $(date +%T) step $name: $*"
  "$@" 2>&1 | grep -v -e PlacementGroupCleaner -e "it/s]" || echo "!!! step $name failed"
  echo "=== $(date +%T) step $name took $((SECONDS - started)) s"
}

train_winner() {  # train_winner GPU NAME [OVERRIDES]: train the winning config again on that GPU (own local Ray)
  local name=$2
  export CUDA_VISIBLE_DEVICES=$1; shift 2
  env RAY_ADDRESS=local python3 -m ray_spider train "$BEST_CONFIG" output_dir=$RUNS name=$name "$@" $RUN_EXTRA
}

rerun() {  # rerun GPU NAME [OVERRIDES]: train the winning config again, score its best adapter on dev-972
  local run
  train_winner "$@"
  run=$(latest_run "$2")
  dev972 "$run/config.yaml" "$run/adapter" "$run/dev972"
}

dev972() {  # dev972 CONFIG ADAPTER OUT [OVERRIDES]: generate and score all of dev-972 with that adapter
  python3 -m ray_spider predict --config "$1" --adapter "$2" --out "$3" data.dev_subset=null generation.batch_size=512 "${@:4}" $RUN_EXTRA
}

part_sweep() {  # the Optuna sweep, `best`, then side by side: the best adapter on dev-972 and the slow path on a sample
  local sweep=$RUNS/sweeps/sweep-smollm2 best=$RUNS/best
  step sweep timeout -s INT -k 60 "$SWEEP_DEADLINE_S" python3 -m ray_spider sweep sweeps/sweep_smollm2.yaml storage=$RUNS/sweeps $SWEEP_EXTRA
  pkill -9 -f -e "ray::|/raylet|gcs_server" || true  # what an interrupted sweep's local Ray may leave holding the GPU
  step trials python3 -m ray_spider trials "$sweep"  # the trials table, also of an interrupted sweep
  step best python3 -m ray_spider best "$sweep" --out "$best"
  step best-dev972 dev972 "$best/config.yaml" "$best" "$RUNS/best_dev972" > "$RUNS/best-dev972.log" &
  step slow-sample python3 -m ray_spider predict --config "$best/config.yaml" --adapter "$best" --out "$RUNS/slow_sample" \
    generation.merge_adapter=false generation.engine=hf generation.batch_size=100 data.dev_subset=100 $RUN_EXTRA
  wait
  step fast-vs-slow python3 bench/compare_predictions.py "$RUNS/best_dev972" "$RUNS/slow_sample"
  BEST_CONFIG=$best/config.yaml BENCH_ADAPTER=$best
}

part_reruns() {  # the winning config trained 3 times side by side (spread over the GPUs): twice with its seed, once with seed 7
  local gpus; gpus=$(nvidia-smi -L 2>/dev/null | wc -l || true)
  step rerun-seed42-a rerun 0 best-seed42-a > "$RUNS/rerun-seed42-a.log" &
  step rerun-seed42-b rerun $((gpus > 1 ? 1 : 0)) best-seed42-b > "$RUNS/rerun-seed42-b.log" &
  step rerun-seed7 rerun 0 best-seed7 train.seed=7 > "$RUNS/rerun-seed7.log" &
  wait
  side_by_side_status
  local a b; a=$(latest_run best-seed42-a) b=$(latest_run best-seed42-b)
  step same-seed python3 bench/compare_predictions.py "$a/dev972" "$b/dev972"
  if [[ -d $RUNS/best_dev972 ]]; then  # after a sweep in this pipeline: its winning trial against the re-run
    step trial-vs-rerun python3 bench/compare_predictions.py "$RUNS/best_dev972" "$a/dev972"
  fi
  BENCH_ADAPTER=${BENCH_ADAPTER:-${a:+$a/adapter}}
}

part_winner() {  # the winning config trained once more with its seed, alone on the first GPU, scored on dev-972
  step winner-seed42 rerun 0 best-seed42
  local run; run=$(latest_run best-seed42)
  BENCH_ADAPTER=${BENCH_ADAPTER:-${run:+$run/adapter}}
}

part_gputests() {  # the tests marked gpu; if they fail, the pipeline's runs decode without CUDA graphs
  echo "=== $(date +%T) step gpu-tests"
  if ! python3 -m pytest -m gpu -q -p no:cacheprovider tests/ 2>&1 | tail -25; then
    echo "!!! step gpu-tests failed: the runs below get generation.cuda_graph_rows=0"
    RUN_EXTRA="$RUN_EXTRA generation.cuda_graph_rows=0"
  fi
}

probe() {  # probe GPU NAME [OVERRIDES]: the winning config's first 50 steps, scored on the dev subset at step 50
  step "probe-$2" train_winner "$@" train.max_steps=50 > "$RUNS/probe-$2.log"
}

same_run() {  # same_run A B: two runs' adapters bit-equal? their dev predictions, tokens/s and kernels
  local a b; a=$(latest_run "$1") b=$(latest_run "$2")
  sha256sum "$a/adapter/adapter_model.safetensors" "$b/adapter/adapter_model.safetensors"
  python3 bench/compare_predictions.py "$a/dev_eval" "$b/dev_eval"
  grep -H -o -e '"train_tokens_per_s": [0-9.]*' -e '"deterministic_kernels": [a-z]*' "$a/manifest.json" "$b/manifest.json"
}

part_determinism() {  # the winner's first 50 steps 3 times side by side on the first GPU: twice deterministic, once not
  probe 0 det-a train.deterministic=true &
  probe 0 det-b train.deterministic=true &
  probe 0 nondet train.deterministic=false &
  wait
  side_by_side_status
  step det-same-seed same_run det-a det-b
  step det-vs-nondet same_run det-a nondet
}

part_ddp() {  # issue 5: the r=16 control trained with DDP on 2 GPUs (2 Ray Train workers), against the 1-GPU run in docs/results
  step r16-ddp2 env RAY_ADDRESS=local python3 -m ray_spider train sweeps/qlora_r16.yaml output_dir=$RUNS name=qlora-r16-ddp2 \
    train.num_workers=2 train.per_device_batch_size=32 $RUN_EXTRA
}

part_bench() {  # dev-972 on a quiet GPU (BENCH_GPU picks it): the generation benchmark, then `predict` itself (the <15 s target)
  local -x CUDA_VISIBLE_DEVICES=${BENCH_GPU:-0}
  step bench-generate python3 bench/bench_generate.py --device cuda --questions 972 --quantization nf4 ${BENCH_ADAPTER:+--adapter "$BENCH_ADAPTER" --merge} \
    --max-new-tokens 256 --sides pruned:1024+graph0,pruned:1024 --repeats 2 --profile $BENCH_EXTRA
  if [[ -n $BENCH_ADAPTER ]]; then  # the product's own command, alone on the GPU: generate_s + score_s in its summary
    local run
    for run in default graph0 again; do
      step "bench-predict-$run" dev972 "$BEST_CONFIG" "$BENCH_ADAPTER" "$RUNS/bench_dev972_$run" generation.batch_size=1024 \
        $([[ $run == graph0 ]] && echo generation.cuda_graph_rows=0)
      echo "timing $run: $(grep -h -o -e '"generate_s": [0-9.]*' -e '"score_s": [0-9.]*' "$RUNS/bench_dev972_$run/summary.json" | tr '\n' ' ')"
    done
    step graph-vs-eager python3 bench/compare_predictions.py "$RUNS/bench_dev972_graph0" "$RUNS/bench_dev972_default"
  fi
}

part_bench_train() {  # the training benchmark on the first GPU: ray-spider train's settings against the plain TRL script, one run
  CUDA_VISIBLE_DEVICES=0 step bench-train python3 bench/bench_train.py --device cuda --steps 100 --batch-size 16 --accumulation 4 \
    --max-length 1536 --threads 4 --ray-batch-size 64 --ray-accumulation 1 --ray-group-by-length --warmup-steps 2 $BENCH_TRAIN_EXTRA
}

part_prefix() {  # prefix caching A/B (generation.prefix_cache): SmolLM2's base, then an 8B shape model if MODEL_8B is set
  local -x CUDA_VISIBLE_DEVICES=${BENCH_GPU:-0}
  step prefix-135m python3 bench/bench_generate.py --device cuda --questions 972 --quantization none --max-new-tokens 48 \
    --sides pruned:1024+noprefix,pruned:1024+prefix,pruned:256+noprefix,pruned:256+prefix --repeats 2 $BENCH_EXTRA
  if [[ -n ${MODEL_8B:-} ]]; then
    [[ -d $MODEL_8B ]] || step make-8b python3 bench/make_shape_model.py --shape llama-3.1-8b --out "$MODEL_8B"
    step prefix-8b python3 bench/bench_generate.py --device cuda --questions 972 --model "$MODEL_8B" --quantization none \
      --max-new-tokens 48 --sides pruned:256+noprefix,pruned:256+prefix,pruned:512+prefix $BENCH_EXTRA
  fi
}

pipeline() {
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
  step setup python3 -m ray_spider setup-model
  local parts part
  for parts in $PARTS; do
    if [[ $parts == *+* ]]; then  # "a+b": side by side, in subshells (what a part sets is lost)
      for part in ${parts//+/ }; do "part_$part" & done
      wait
    else
      "part_$parts"  # in this shell: part_sweep sets BEST_CONFIG and BENCH_ADAPTER for the parts after it
    fi
  done
  echo "PIPELINE DONE"
}

side_by_side_status() {  # the steps that run side by side log to their own files: last line, or last dev round
  local log round
  for log in "$RUNS"/best-dev972.log "$RUNS"/rerun-*.log "$RUNS"/probe-*.log; do
    [[ -f $log ]] || continue
    round=$(grep -a -o -e "'step': [0-9]*, 'epoch': [0-9.]*, 'dev_ex': [0-9.]*, 'dev_em': [0-9.]*" -e "│ all .*" "$log" | tail -1)
    echo "$(basename "$log"): ${round:-$(tr '\r' '\n' < "$log" | grep -a -v -e '^\s*$' -e PlacementGroupCleaner | tail -1 | cut -c1-150)}"
  done
}

sweep_status() {  # the sweep's latest trial table from Tune's progress output: status and dev EX of each trial
  local last; last=$(grep -a -n "^Trial status" "$LOG" | tail -1 | cut -d: -f1 || true)
  [[ -n $last ]] || return 0
  tail -n +"$last" "$LOG" | grep -a -e "^Trial status" -e "run_trial_" | head -n 13 | cut -c1-150 || true
  grep -a "Current best trial" "$LOG" | tail -n 1 || true
}

pack_results() {  # the small files of every run so far, for $OUT (8 files at most come back)
  (cd "$RUNS" && find . \( -name '*.safetensors' -o -name '*.pt' -o -name '*.bin' -o -path '*/train_runs/*' -o -path '*/ray/*' -o -name 'events.out*' \) -prune -o \
    -type f \( -name '*.json' -o -name '*.jsonl' -o -name '*.yaml' -o -name '*.parquet' -o -name '*.png' -o -name '*.md' -o -name '*.log' -o -name '*.csv' \) -print0 \
    | tar czf "$OUT/proof.tgz" --null -T -)
  cp "$LOG" "$OUT/pipeline.log" 2>/dev/null || true
}

case "$stage" in
  speed)
    python3 bench/bench_train.py --device cuda --steps 30 --batch-size 16 --accumulation 4 --max-length 1536 --threads 4 \
      --ray-batch-size 64 --ray-accumulation 1 --ray-group-by-length 2>&1 | tail -25 | tee "$OUT/bench_train.txt"
    ;;
  controls)
    python3 -m ray_spider setup-model
    python3 -m ray_spider baseline sweeps/baseline.yaml output_dir=$RUNS 2>&1 | tail -30
    keep_run baseline
    python3 -m ray_spider train sweeps/qlora_r16.yaml output_dir=$RUNS 2>&1 | grep -v PlacementGroupCleaner | tail -40
    r16=$(keep_run qlora-r16)
    python3 -m ray_spider predict --config sweeps/qlora_r16.yaml --adapter "$r16/adapter" --out "$RUNS/slow_sample" \
      generation.merge_adapter=false generation.batch_size=100 data.dev_subset=100 2>&1 | tail -12
    python3 bench/compare_predictions.py "$r16/dev_eval" "$RUNS/slow_sample" | tee "$OUT/fast_vs_slow.txt"
    ;;
  r32)
    python3 -m ray_spider setup-model
    python3 -m ray_spider train sweeps/qlora_r32.yaml output_dir=$RUNS 2>&1 | grep -v PlacementGroupCleaner | tail -30
    keep_run qlora-r32
    ;;
  pipeline)
    pipeline
    ;;
  follow)
    seconds=${2:-540}
    if ! pgrep -f "gpu_proof.sh pipeline" > /dev/null && ! grep -q "PIPELINE DONE" "$LOG" 2>/dev/null; then
      : > "$LOG"
      setsid nohup bash bench/gpu_proof.sh pipeline >> "$LOG" 2>&1 < /dev/null &
      echo "pipeline started"
      sleep 5  # so that pgrep below finds it
    fi
    deadline=$((SECONDS + seconds))
    while ((SECONDS < deadline)) && ! grep -q "^PIPELINE DONE" "$LOG" 2>/dev/null && pgrep -f "gpu_proof.sh pipeline" > /dev/null; do
      sleep 5
    done
    grep -a -e "^=== " -e "questions in both" -e "x [0-9]* of" -e "^  hf:\|^  pruned:" -e "ratio Ray / plain" -e "safetensors$" -e "GPU kernels [0-9]" -e "^timing " "$LOG" | tail -n 16 || true
    sweep_status
    side_by_side_status
    pack_results
    nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader || true
    if grep -q "^PIPELINE DONE" "$LOG"; then echo "PIPELINE DONE"
    else echo "pipeline still running: call follow again now"; fi
    ;;
esac
