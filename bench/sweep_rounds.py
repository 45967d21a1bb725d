"""Every dev round of every trial of a sweep, from the trials' result.json, as a CSV: where a sweep's
time went and how many trials ran at once.

    python bench/sweep_rounds.py runs/sweeps/sweep-smollm2 docs/results/<name>/rounds.csv

Columns: trial, step, dev EX/EM, the round's timing (start_s: launching the trial's Train run to
train_loop, only in its first round; setup_s; train_s; dev_eval_s; round_s; trial_s) and GPU peaks,
then started_s, running_s and ended_s: when the trial started, when its worker got its GPU share and
reached train_loop (started_s + start_s: a trial waits there while the GPUs are full) and when the
round ended, in seconds from the first trial's start. Prints the sweep's span and the most trials
that ran at once.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

COLUMNS = {  # result.json key -> CSV column
    "trial_id": "trial", "step": "step", "dev_ex": "dev_ex", "dev_em": "dev_em",
    "start_s": "start_s", "setup_s": "setup_s", "train_s": "train_s", "dev_eval_s": "dev_eval_s",
    "time_this_iter_s": "round_s", "time_total_s": "trial_s",
    "gpu_peak_gb_train": "gpu_peak_gb_train", "gpu_peak_gb_dev": "gpu_peak_gb_dev", "timestamp": "timestamp",
}


def rounds(experiment: Path) -> pd.DataFrame:
    files = sorted(experiment.glob("trial_*/result.json"))
    if not files:
        raise SystemExit(f"{experiment}: no trial_*/result.json (is it a sweep's experiment folder?)")
    rows = [json.loads(line) for file in files for line in file.read_text().splitlines() if line.strip()]
    table = pd.DataFrame([{column: row.get(key) for key, column in COLUMNS.items()} for row in rows])
    started = table.timestamp - table.trial_s  # each round's trial start (timestamps are whole seconds)
    table["started_s"] = started.groupby(table.trial).transform("min")
    zero = table.started_s.min()
    table["started_s"] = (table.started_s - zero).round()
    table["running_s"] = table.started_s + table.start_s.groupby(table.trial).transform("max")
    table["ended_s"] = (table.timestamp - zero).round()
    return table.drop(columns="timestamp").sort_values(["started_s", "trial", "step"])


def most_at_once(table: pd.DataFrame) -> int:
    spans = table.groupby("trial").agg(start=("running_s", "min"), end=("ended_s", "max"))
    return max(int(((spans.start <= t) & (spans.end > t)).sum()) for t in spans.start)


def main(experiment: str, out: str) -> None:
    table = rounds(Path(experiment))
    table.to_csv(out, index=False, float_format="%.3f")
    print(
        f"{table.trial.nunique()} trials, {len(table)} rounds, {table.ended_s.max():.0f} s from the first trial's "
        f"start to the last round's end, at most {most_at_once(table)} trials at once -> {out}"
    )


if __name__ == "__main__":
    main(*sys.argv[1:3])
