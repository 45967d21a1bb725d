#!/usr/bin/env bash
# Llama-3.1-8B's shape (random weights, SmolLM2's tokenizer) through every command on one or two GPUs.
#   OUT=$OUT bash bench/llama8b.sh PART...        (GPU machine, repo root, after the ferry: FERRY_ENV or /tmp/ferry/env.sh)
#   DRY=1 OUT=/tmp/l8b_out bash bench/llama8b.sh all   (CPU: the same commands on a 2-layer tiny shape, minutes)
# python3 on PATH must be the project's environment (e.g. PATH=.venv/bin:$PATH); the model and the runs
# go to MODEL_DIR and RUNS (defaults below), outside OUT, which holds only the small results.
# Each part prints one line starting with RESULT and keeps its raw output under $OUT/<part>/.
# Parts (GPU minutes on H200s: estimates, none of this has run on a GPU yet):
#   make     the 8B shape model in $MODEL_DIR (init on the GPU in bf16, 16 GB of safetensors)          ~1.5
#   budgets  ray-spider train sweeps/qlora_llama31_8b.yaml at 24 GB and 48 GB budgets (train.gpu_memory_gb,
#            enforced), 3 steps + a 32-question dev round, side by side on GPU0 and GPU1: the auto
#            micro-batch/checkpointing/merged copy, peak train/dev GB against the budget            ~2.5
#   bench    bench_train at 8B on GPU0, alone: the product under a 48 GB budget vs plain TRL (micro-batch
#            4 x 8, 30 steps = 960 examples, max_length 2048, nf4 both)                               ~5
#   benchpf  bench again, the product padding-free (train.padding_free, flex_attention, PF_ROWS=32 rows x 1 by default,
#            deterministic kernels off: flex's backward is unchecked there), after an untimed 2-step
#            product run that compiles flex's kernels into torch's disk caches                        ~7
#   profile  bench/profile_train.py with benchpf's product settings (PF_ROWS rows, flex_attention, 48 GB):
#            each warm-up step's time (PROFILE_WARMUP, 3), then per profiled optimizer step wall against
#            GPU-busy time, kernels by kind, top ops; PROFILE_EXTRA: more overrides; "profile profile":
#            the second run finds the first one's compile caches (profile_again.txt)                   ~2
#   bench135m  bench_train at 135M on GPU1, the ratio as before (100 steps)                            ~2.5
#   ddp      bench's Ray side again with 2 DDP workers (GPU 0+1): tokens/s against bench's 1 GPU      ~2
#   sweep    sweeps/sweep_llama31_8b.yaml in smoke form on 2 GPUs (2 trials at once, 6 steps, 20 dev
#            questions, whole GPUs: no budget), then `best`                                          ~3
#   all      make budgets bench bench135m ddp sweep                                                   ~16
# Calls of at most 10 minutes: "make budgets", then "bench", then "ddp sweep" (the model folder lives in
# /tmp: keep the machine warm between calls, or run make again). BENCH8B_EXTRA is appended to the 8B
# bench (e.g. "--ray-set train.deterministic=false"); STEPS (30) its optimizer steps, for bench and benchpf (the
# bench also reads both sides' tokens/s after the first 2 steps, and with STEPS > 30 over steps 1-30, from their
# per-step clocks).
# RESULT lines: $OUT/RESULTS.txt
set -uo pipefail
DRY=${DRY:-0}
OUT=${OUT:-/tmp/llama8b_out}
RUNS=${RUNS:-/tmp/llama8b_runs}
if [[ $DRY == 1 ]]; then
  SHAPE_ARGS=${SHAPE_ARGS:---shape tiny --device cpu}
  MODEL_DIR=${MODEL_DIR:-/tmp/llama8b_tiny}
  DEVICE=cpu; USE_GPU=false; STEPS=${STEPS:-2}; BUDGET_STEPS=2; BENCH_BATCH="1 --accumulation 2"; THREADS=1
  EXTRA="data.max_train_examples=16 generation.max_new_tokens=8 eval.workers=1 train.cpus_per_worker=1"
else
  . "${FERRY_ENV:-/tmp/ferry/env.sh}" > /dev/null  # PYTHONPATH, FERRY_MODEL, FERRY_SPIDER
  export RAY_SPIDER_GGUF="$FERRY_MODEL" SPIDER_DIR="$FERRY_SPIDER" RAY_SPIDER_CACHE=/tmp/rs_cache HF_HUB_OFFLINE=1
  SHAPE_ARGS=${SHAPE_ARGS:---shape llama-3.1-8b}
  MODEL_DIR=${MODEL_DIR:-/tmp/llama31-8b-shape}
  DEVICE=cuda; USE_GPU=true; STEPS=${STEPS:-30}; BUDGET_STEPS=${BUDGET_STEPS:-3}; BENCH_BATCH="4 --accumulation 8"; THREADS=4
  EXTRA="generation.max_new_tokens=128"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 RAY_memory_monitor_refresh_ms=0
export RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S=300
GPUS=$( (nvidia-smi -L 2>/dev/null || true) | wc -l)
GPU0=${GPU0:-0}                          # GPU0/GPU1: which GPUs the parts use (both 1: leave GPU 0 to other work)
GPU1=${GPU1:-$((GPUS > 1 ? 1 : 0))}

manifest_line() {  # manifest_line LABEL RUN_FOLDER: one RESULT line from a run's manifest.json
  python3 - "$1" "$2"/manifest.json <<'EOF'
import json, sys
label, path = sys.argv[1], sys.argv[2]
m = json.load(open(path))
p = m.get("memory_plan", {})
print(f"RESULT {label}: micro-batch {p.get('micro_batch')} x accumulation {m.get('gradient_accumulation_steps')}, "
      f"checkpointing {p.get('gradient_checkpointing')}, merged copy {p.get('merge_adapter')}, generation batch "
      f"{p.get('generation_batch')}, liger {m.get('liger_kernel')}; peak train {m.get('gpu_peak_gb_train')} GB "
      f"(est. {p.get('estimate_train_gb')}), peak dev {m.get('gpu_peak_gb_dev')} GB (est. {p.get('estimate_dev_gb')}), "
      f"budget {p.get('budget_gb')} GB; {m.get('train_tokens_per_s')} tokens/s, dev EX {m.get('best_dev_ex')}")
EOF
}

latest_run() { ls -td "$1"/*/ 2>/dev/null | head -1; }

part_make() {
  python3 bench/make_shape_model.py $SHAPE_ARGS --out "$MODEL_DIR" | sed 's/^made/RESULT make: made/'
}

budget_run() {  # budget_run GB GPU: a few steps + one small dev round of the 8B run config at that budget
  local dir=$RUNS/budget$1
  rm -rf "$dir"
  CUDA_VISIBLE_DEVICES=$2 RAY_ADDRESS=local python3 -m ray_spider train sweeps/qlora_llama31_8b.yaml output_dir="$dir" \
    model.name="$MODEL_DIR" train.gpu_memory_gb=$1 train.max_steps=$BUDGET_STEPS train.eval_every_steps=1000 \
    train.logging_steps=1 train.use_gpu=$USE_GPU data.dev_subset=32 $EXTRA > "$OUT/budgets/train$1.log" 2>&1 \
    && manifest_line "budgets ${1} GB" "$(latest_run "$dir")" || { echo "RESULT budgets ${1} GB: FAILED (tail below)"; tail -25 "$OUT/budgets/train$1.log"; }
}

part_budgets() {
  budget_run 24 "$GPU0" &
  # two local Ray clusters starting at the same moment can time out waiting for their raylets: stagger them
  if [[ $GPUS -gt 1 || $DRY == 1 ]]; then sleep 20; budget_run 48 "$GPU1" & wait; else wait; budget_run 48 "$GPU0"; fi
}

bench_args() {  # the 8B bench shape: plain TRL at micro-batch 4 x 8 accumulation, the product at auto under 48 GB
  echo --model "$MODEL_DIR" --device $DEVICE --steps $STEPS --batch-size $BENCH_BATCH --max-length 2048 \
    --threads $THREADS --ray-batch-size auto --ray-group-by-length --warmup-steps 1 \
    --ray-set train.gpu_memory_gb=48 --ray-set train.gradient_checkpointing=auto --ray-set generation.merge_adapter=auto \
    ${BENCH8B_EXTRA:-}
}

part_bench() {  # 8B: product vs plain TRL on one GPU, alone
  CUDA_VISIBLE_DEVICES=$GPU0 python3 bench/bench_train.py $(bench_args) > "$OUT/bench/bench_8b.txt" 2>&1
  bench_result 8b bench
}

part_benchpf() {  # 8B: the same bench, the product padding-free with flex_attention, PF_ROWS rows per micro-batch (default: all of the effective batch, 32)
  local attention=flex_attention  # rows: PF_ROWS, checked to divide the plain side's effective batch (kept)
  [[ $DRY == 1 ]] && attention=sdpa  # FlexAttention has no backward on CPU
  CUDA_VISIBLE_DEVICES=$GPU0 python3 bench/bench_train.py $(bench_args | sed "s/--ray-batch-size auto/--ray-batch-size $rows --ray-accumulation $((batch * accumulation / rows))/") \
    --ray-set train.padding_free=true --ray-set model.attn_implementation=$attention --ray-set train.deterministic=false \
    --ray-warmup-steps 2 > "$OUT/benchpf/bench_pf.txt" 2>&1
  bench_result pf benchpf
}

part_profile() {  # where the product's 8B step goes: benchpf's settings (PF_ROWS rows, flex_attention, 48 GB) under torch.profiler
  local attention=flex_attention budget=train.gpu_memory_gb=48 effective=$((batch * accumulation)) text=$OUT/profile/profile.txt
  [[ $DRY == 1 ]] && attention=sdpa budget=  # FlexAttention has no backward on CPU; no GPU memory to budget
  # "profile profile": the second finds the first one's compile caches; each keeps its own output
  [[ -n ${ran[profile]:-} ]] && text=$OUT/profile/profile_again.txt
  # the bench's rows (the first STEPS x effective batch), PROFILE_WARMUP (3) warm-up steps (flex compiles for the
  # first shapes), then 2 profiled; PROFILE_EXTRA: more overrides (e.g. train.compile_layers=true)
  CUDA_VISIBLE_DEVICES=$GPU0 python3 bench/profile_train.py sweeps/smoke_cpu.yaml model.name="$MODEL_DIR" $budget \
    train.max_length=2048 train.effective_batch_size=$effective train.per_device_batch_size=$rows train.group_by_length=true \
    data.max_train_examples=$((effective * STEPS)) train.gradient_checkpointing=auto train.padding_free=true \
    model.attn_implementation=$attention train.deterministic=false train.cpus_per_worker=$THREADS ${PROFILE_EXTRA:-} \
    --warmup "${PROFILE_WARMUP:-3}" --steps 2 > "$text" 2>&1 \
    || { echo "RESULT profile: FAILED (tail of $text below)"; tail -15 "$text"; return 1; }
  echo "RESULT profile ($rows rows${PROFILE_EXTRA:+, $PROFILE_EXTRA}): $(grep -h -e '^Memory per worker' -e '^warm-up steps' -e '^torch.compile' -e '^profiled' -e '^GPU kernels' "$text" | tr '\n' ' ')"
}

part_bench135m() {  # the 135M ratio as before (100 steps), on GPU1
  local small
  if [[ $DRY == 1 ]]; then small="--device cpu --steps 2 --batch-size 1 --accumulation 2 --max-length 1024"
  else small="--device cuda --steps 100 --batch-size 16 --accumulation 4 --max-length 1536 --threads 4 --ray-batch-size 64 --ray-accumulation 1 --ray-group-by-length --warmup-steps 2"; fi
  CUDA_VISIBLE_DEVICES=$GPU1 python3 bench/bench_train.py $small > "$OUT/bench135m/bench_135m.txt" 2>&1
  bench_result 135m bench135m
}

bench_result() {  # bench_result NAME PART: the ratio and tokens/s lines of one bench_train output, or FAILED and its tail
  grep -q 'ratio Ray' "$OUT/$2/bench_$1.txt" || { echo "RESULT bench $1: FAILED (tail of $OUT/$2/bench_$1.txt below)"; tail -15 "$OUT/$2/bench_$1.txt"; return 1; }
  echo "RESULT bench $1: $(grep -h -e 'ratio Ray' "$OUT/$2/bench_$1.txt" | tr -s ' ') | $(grep -h -e 'tokens/s' "$OUT/$2/bench_$1.txt" | grep -v -e ratio -e '^  steps ' | tr -s ' ' | tr '\n' '|') $(grep -h -e '^  steps ' "$OUT/$2/bench_$1.txt" | tr -s ' ' | tr '\n' '|')"
}

part_ddp() {  # bench's Ray side again with 2 workers: same examples, steps, effective batch, budget
  local dir=$RUNS/ddp2 workers=2
  rm -rf "$dir"
  python3 - "$OUT/bench/bench_8b.txt" > "$OUT/ddp/overrides.txt" <<'EOF'
import shlex, sys
line = next(l for l in open(sys.argv[1]) if l.startswith("ray-spider train "))
print(shlex.join(w for w in shlex.split(line)[3:] if not w.startswith(("output_dir=", "train.num_workers="))))
EOF
  [[ $DRY == 1 ]] && workers=2
  RAY_ADDRESS=local python3 -m ray_spider train sweeps/smoke_cpu.yaml $(cat "$OUT/ddp/overrides.txt") output_dir="$dir" \
    train.num_workers=$workers > "$OUT/ddp/train.log" 2>&1 || { echo "RESULT ddp: FAILED"; tail -25 "$OUT/ddp/train.log"; return; }
  python3 - "$(latest_run "$dir")/manifest.json" "$OUT/bench/bench_8b.txt" <<'EOF'
import json, re, sys
ddp = json.load(open(sys.argv[1]))["train_tokens_per_s"]
one = float(re.search(r"ray-spider train \(Ray Train\)\s*:.*?=\s*([0-9.]+) tokens/s", open(sys.argv[2]).read()).group(1))
print(f"RESULT ddp: 2 workers {ddp:.0f} tokens/s vs 1 worker {one:.0f} tokens/s (bench's Ray side) = {ddp / one:.2f}x")
EOF
}

part_sweep() {
  local storage=$RUNS/sweeps
  rm -rf "$storage" "$RUNS/best"
  local steps=6 cpus=4
  [[ $DRY == 1 ]] && steps=2 cpus=1
  RAY_ADDRESS=local python3 -m ray_spider sweep sweeps/sweep_llama31_8b.yaml storage="$storage" num_samples=2 \
    max_concurrent_trials=2 scheduler=null resources.cpus_per_worker=$cpus resources.gpus_per_worker=$([[ $DRY == 1 ]] && echo 0 || echo 1) \
    base.model.name="$MODEL_DIR" base.train.max_steps=$steps base.train.eval_every_steps=$steps base.data.dev_subset=20 \
    base.generation.max_new_tokens=64 $([[ $DRY == 1 ]] && echo base.data.max_train_examples=16 base.eval.workers=1) \
    > "$OUT/sweep/sweep.log" 2>&1 || { echo "RESULT sweep: FAILED"; tail -25 "$OUT/sweep/sweep.log"; return; }
  python3 -m ray_spider best "$storage/sweep-llama31-8b" --out "$RUNS/best" --no-check-load > "$OUT/sweep/best.log" 2>&1 \
    || { echo "RESULT sweep: best FAILED"; tail -25 "$OUT/sweep/best.log"; return; }
  cp "$storage"/sweep-llama31-8b/trials.* "$OUT/sweep/" 2>/dev/null || true
  echo "RESULT sweep: $(grep -c '│ TERMINATED │' "$OUT/sweep/sweep.log" || true) of 2 trials TERMINATED; best: $(tr -d '\n ' < "$OUT/sweep/best.log" | grep -o -e '"trial_id":"[0-9a-f]*"' -e '"best_dev_ex":[0-9.]*' | tr '\n' ' '); in $RUNS/best: $(ls "$RUNS/best" | tr '\n' ' ')"
}

parts=("$@")
[[ ${#parts[@]} -eq 0 || ${parts[0]} == all ]] && parts=(make budgets bench bench135m ddp sweep)
for part in "${parts[@]}"; do
  declare -F "part_$part" > /dev/null || { echo "error: unknown part '$part'; valid: all $(declare -F | sed -n 's/^declare -f part_//p' | tr '\n' ' ')" >&2; exit 2; }
done
read -r batch flag accumulation <<< "$BENCH_BATCH"  # the plain side's micro-batch and accumulation
rows=${PF_ROWS:-$((batch * accumulation))}              # benchpf's padding-free rows per micro-batch
[[ $rows =~ ^[1-9][0-9]*$ && $((batch * accumulation % rows)) -eq 0 ]] \
  || { echo "error: PF_ROWS=$rows must be a positive whole number dividing the effective batch $((batch * accumulation))" >&2; exit 2; }
[[ ${PROFILE_WARMUP:-3} =~ ^[1-9][0-9]*$ ]] || { echo "error: PROFILE_WARMUP=${PROFILE_WARMUP} must be a whole number of steps, at least 1" >&2; exit 2; }
mkdir -p "$OUT" "$RUNS"  # after the checks: a refused call leaves nothing behind
declare -A ran=()  # a part named twice (e.g. "profile profile") adds to its log
for part in "${parts[@]}"; do
  mkdir -p "$OUT/$part"
  started=$SECONDS
  echo "=== $(date +%T) part $part"
  "part_$part" 2>&1 | tee ${ran[$part]:+-a} "$OUT/$part/log.txt" | grep -e '^RESULT' -e FAILED -e Error -e error | head -40
  ran[$part]=1
  echo "=== part $part took $((SECONDS - started)) s" | tee -a "$OUT/$part/log.txt"
done
grep -h '^RESULT' "$OUT"/*/log.txt > "$OUT/RESULTS.txt" 2>/dev/null || true
! grep -q 'FAILED' "$OUT/RESULTS.txt"  # exit status 1 when a part failed
