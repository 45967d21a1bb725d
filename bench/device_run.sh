#!/usr/bin/env bash
# Plumbing for a GPU machine reached through short calls (each call a few minutes at most, results
# coming back through one size-limited folder): run a long command in the background, follow it
# from call to call, and pack the small result files. The experiment itself is bench/reproduce.sh.
#
#   bash bench/device_run.sh start bash bench/reproduce.sh sweep best predict   # returns at once
#   bash bench/device_run.sh follow 540   # wait up to 540 s; print the log's tail; pack results into $OUT
#   bash bench/device_run.sh stop         # stop what `start` started (its process group), nothing else
#
# STATE (default /tmp/device_run) holds the pid, the log and the exit status; RUNS is where the
# command writes its runs (bench/reproduce.sh's default, runs/study); OUT receives results.tgz
# (every run's records, no adapters or checkpoints) and the log. DEVICE_ENV names a file to source
# first (the machine's PYTHONPATH, SPIDER_DIR, RAY_SPIDER_GGUF).
set -euo pipefail
STATE=${STATE:-/tmp/device_run}
RUNS=${RUNS:-runs/study}
OUT=${OUT:-$STATE/out}
PID=$STATE/pid LOG=$STATE/log RC=$STATE/rc
mkdir -p "$STATE" "$OUT"
# shellcheck source=/dev/null
[[ -z ${DEVICE_ENV:-} ]] || . "$DEVICE_ENV"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
# Multi-GPU machines whose memory grows as it is used (MemTotal starts far below the limit) look
# nearly full to Ray's memory monitor, which then kills trials. Off; the machine's own limit holds.
export RAY_memory_monitor_refresh_ms=${RAY_memory_monitor_refresh_ms:-0}

running() {
  [[ -f $PID ]] && kill -0 "$(cat "$PID")" 2> /dev/null
}

start() {  # start COMMAND...: in its own session (it outlives the call), logging to $LOG
  if running; then echo "already running: pid $(cat "$PID")"; return; fi
  rm -f "$RC"
  setsid nohup bash -c '"$@"; echo $? > "'"$RC"'"' bash "$@" > "$LOG" 2>&1 < /dev/null &
  echo $! > "$PID"
  echo "started pid $!: $*"
}

pack() {  # the runs' small files (records, summaries, tables, plots) into $OUT/results.tgz
  [[ -d $RUNS ]] || return 0
  (cd "$RUNS" && find . \( -name adapter -o -name 'checkpoint_*' -o -name '*.safetensors' -o -name '*.pt' -o -name 'events.out*' \) -prune -o \
    -type f \( -name '*.json' -o -name '*.jsonl' -o -name '*.yaml' -o -name '*.parquet' -o -name '*.png' -o -name '*.md' -o -name '*.csv' -o -name '*.sql' \) -print0 \
    | tar czf "$OUT/results.tgz" --null -T -)
  cp "$LOG" "$OUT/log.txt"
  du -h "$OUT/results.tgz" | cut -f1 | sed 's/^/results.tgz: /'
}

follow() {  # follow [SECONDS]: wait until the command ends or SECONDS pass, then report and pack
  local deadline=$((SECONDS + ${1:-540}))
  while running && ((SECONDS < deadline)); do sleep 2; done
  grep -a -v -e PlacementGroupCleaner -e 'it/s]' "$LOG" | tail -n 25 | cut -c1-200 || true
  pack
  if [[ -f $RC ]]; then echo "DONE, exit status $(cat "$RC")"
  elif running; then echo "still running: call follow again"
  else echo "ended without an exit status (killed?)"; fi
}

stop() {  # the process group `start` created: the command, its children, the Ray cluster it started
  running || { echo "not running"; return; }
  kill -- -"$(cat "$PID")" && echo "stopped process group $(cat "$PID")"
}

case ${1:-} in
  start | follow | stop | pack) "$@" ;;
  *) echo "usage: device_run.sh start COMMAND... | follow [SECONDS] | stop | pack" >&2; exit 2 ;;
esac
