#!/usr/bin/env bash
# Training levers on SmolLM2-135M: the sweep winner's config with one change each, trained with
# `ray-spider train` (dev EX on the config's 200-question subset during training, as the winner was).
#
#   bench/training_levers.sh                       # every lever below, PARALLEL at a time on one GPU
#   bench/training_levers.sh train_others epochs3  # the named ones only
#   PARALLEL=2 EXTRA="generation.constrained=true" bench/training_levers.sh r128
#   bench/training_levers.sh lr1.5e-3 lr1.5e-3+seed43   # a lever again with train.seed=43 (its own log and run)
#
# `python` on PATH must be the project's environment (e.g. PATH=.venv/bin:$PATH).
# Cost: on one H200 the winner trains in ~9 min alone, and trials sharing a GPU split its training
# throughput (54k tokens/s alone, ~52k for 3 at once, docs/benchmarks.md): GPU time is the sum of
# the runs' sizes, not their maximum. Relative to the winner (1.0): train_others 1.19 (1,659 more
# examples than train's 8,659), epochs3 1.5, r128 ~1.05, sample_values 1.2-1.4 (longer prompts),
# the others 1.0. At 16-row micro-batches a run peaks at 32-34 GB: at most 3 per H200.
# Each run's folder is printed at its end (exit status 1 when any run failed; the others still run); its report.md holds the best dev EX, its config.yaml the change.
# Measured (docs/results.md, "Training levers", "Four more levers"): lr1.5e-3 and lr1e-3 pay, lr2e-3
# less than 1.5e-3, r128 barely; dropout0, train_others, epochs3, alpha_r and sample_values do not
# (sample_values drops the 12% of train's examples whose prompt outgrows max_length 2048).
# Two at a time took 582-634 s on one H200, three at a time 556-868 s.
set -euo pipefail
cd "$(dirname "$0")/.."

WINNER=docs/results/sweep-h200-attempt4/best-dev972/config.yaml
PARALLEL=${PARALLEL:-3}
EXTRA=${EXTRA:-}
declare -A LEVERS=(
  [winner]=""                                        # the control: today's best (r 64, alpha 128, lr 6e-4, 2 epochs)
  [train_others]="data.include_train_others=true"    # + train_others.json: more schemas to link questions to
  [epochs3]="train.epochs=3"                         # beyond the sweep's {1, 2}
  [r128]="lora.r=128 lora.alpha=256"                 # beyond attempt 4's {8, 16, 32, 64}, the playbook's alpha = 2 r
  [alpha_r]="lora.alpha=64"                          # alpha = r: half the LoRA scale
  [dropout0]="lora.dropout=0.0"
  [dropout0.1]="lora.dropout=0.1"
  [lr1e-3]="train.learning_rate=1e-3"                # attempt 4's upper bound
  [lr1.5e-3]="train.learning_rate=1.5e-3"            # beyond it (the best measured)
  [lr2e-3]="train.learning_rate=2e-3"                # further: where the learning rate stops paying
  [sample_values]="prompt.sample_values=3"           # 3 distinct values per column in the schema prompt
)
names=("$@")
if [ ${#names[@]} -eq 0 ]; then names=(winner train_others epochs3 r128 alpha_r dropout0 dropout0.1 lr1e-3 lr1.5e-3 lr2e-3 sample_values); fi
lever_of() { echo "${1%+seed*}"; }       # lr1.5e-3+seed43 -> lr1.5e-3
seed_of() { [[ $1 == *+seed* ]] && echo "train.seed=${1##*+seed}"; }  # -> train.seed=43 (none: the config's)
[[ $PARALLEL =~ ^[1-9][0-9]*$ ]] || { echo "error: PARALLEL=$PARALLEL must be a whole number of runs at once, e.g. PARALLEL=2" >&2; exit 2; }
[[ -z $(printf '%s\n' "${names[@]}" | sort | uniq -d) ]] || { echo "error: a lever is named twice: $(printf '%s\n' "${names[@]}" | sort | uniq -d | paste -sd ' '); its runs would share a log" >&2; exit 2; }
for name in "${names[@]}"; do
  lever=$(lever_of "$name")
  [[ -n $lever && -n "${LEVERS[$lever]+set}" ]] || { echo "error: unknown lever '$lever'; valid: $(printf '%s\n' "${!LEVERS[@]}" | sort | paste -sd ' ') (each may end in +seedN)" >&2; exit 2; }
  [[ $name != *+seed* || ${name##*+seed} =~ ^[0-9]+$ ]] || { echo "error: $name: the seed after +seed must be a whole number, e.g. $lever+seed43" >&2; exit 2; }
done

mkdir -p runs/levers
failed=0
running=0
for name in "${names[@]}"; do
  # shellcheck disable=SC2086  # the overrides are words
  python -m ray_spider train "$WINNER" name="lever-${name/+/-}" output_dir=runs/levers ${LEVERS[$(lever_of "$name")]} $(seed_of "$name") $EXTRA \
    > "runs/levers/$name.log" 2>&1 &
  echo "started $name (log runs/levers/$name.log)"
  running=$((running + 1))
  if [ "$running" -ge "$PARALLEL" ]; then wait -n || failed=1; running=$((running - 1)); fi  # a failed run does not stop the others
done
while [ "$running" -gt 0 ]; do wait -n || failed=1; running=$((running - 1)); done
for name in "${names[@]}"; do
  echo "== $name: $(grep -m1 -o 'run folder:.*' "runs/levers/$name.log" || echo 'no run folder (see its log)')"
  grep -m3 -iE 'best|dev_ex|error' -A1 "runs/levers/$name.log" || true  # an error's next line says what is wrong
done
exit "$failed"  # 1 when any run failed
