"""Other picks from recorded candidates: EX of each pick rule over the first k of every question's
candidates, without generating again.

`ray-spider predict ... generation.candidates=K` records each question's K candidates (best-ranked
first) in predictions.jsonl; this re-runs the selection (``selection.pick_answers``) on their first
k for each k and rule asked, and scores the picks with the evaluator (``evaluation.score``):

    python bench/candidate_picks.py runs/voted16 --k 1,2,4,8,16 --rules executes,majority
    python bench/candidate_picks.py docs/results/h200-2026-12-02c/decoding/k16.predictions.jsonl.gz --k 16

Prints one row per (rule, k): EX, EM, the wrong answers naming an unknown table or column, and how
many right answers are on questions whose gold query returns no rows (any query that returns no
rows matches those, as in the official evaluator). k=1 is the first candidate alone (greedy under
search sample), whatever the rule.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
from pathlib import Path

from ray_spider.evaluation.execution import run_query
from ray_spider.evaluation.extract import extract_sql, one_line
from ray_spider.evaluation.inputs import database_file
from ray_spider.evaluation.score import GoldQuery, score
from ray_spider.selection import PICK_RULES, pick_answers


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("predictions", type=Path, help="a `predict --out` folder, or its predictions.jsonl(.gz), with candidates")
    parser.add_argument("--k", default="1,2,4,8,16", help="comma-separated candidate counts (at most the recorded k)")
    parser.add_argument("--rules", default=",".join(PICK_RULES), help=f"comma-separated, of: {', '.join(PICK_RULES)} (default: all)")
    parser.add_argument("--spider-dir", type=Path, default=os.environ.get("SPIDER_DIR"), help="Spider folder (default $SPIDER_DIR)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per query, as eval.query_timeout_s")
    args = parser.parse_args()
    path = args.predictions / "predictions.jsonl" if args.predictions.is_dir() else args.predictions
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rt") as lines:
            records = [json.loads(line) for line in lines if line.strip()]
    except (OSError, ValueError) as exc:  # missing, not gzip, not JSON lines
        parser.error(f"{path}: not a readable predictions.jsonl(.gz) ({exc})")
    if not records or "candidates" not in records[0]:
        parser.error(f"{path} holds no candidates: predict with generation.candidates > 1")
    if args.spider_dir is None:
        parser.error("give --spider-dir or set SPIDER_DIR")
    recorded = min(len(record["candidates"]) for record in records)
    ks = [int(k) for k in args.k.split(",")]
    if any(k < 1 or k > recorded for k in ks):
        parser.error(f"--k {args.k}: each must be between 1 and the recorded {recorded}")
    rules = args.rules.split(",")
    if set(rules) - set(PICK_RULES):
        parser.error(f"--rules {args.rules}: valid: {', '.join(PICK_RULES)}")
    db_paths = [database_file(args.spider_dir / "database", r["db_id"]) for r in records]
    golds = [GoldQuery(r["gold"], r["db_id"]) for r in records]
    gold_outcomes = [run_query(db_path, gold.sql, timeout_s=args.timeout) for gold, db_path in zip(golds, db_paths)]
    empty_gold = {index for index, outcome in enumerate(gold_outcomes) if outcome.status == "ok" and not outcome.rows}
    print(f"{path}: {len(records)} questions, {recorded} candidates each; {len(empty_gold)} gold queries return no rows")
    print("| rule | k | EX | EM | unknown_table_or_column | right on empty-gold questions |\n| --- | ---: | ---: | ---: | ---: | ---: |")
    for rule in rules:
        for k in ks:
            picks = pick_answers([r["candidates"][:k] for r in records], db_paths, rule, args.timeout)
            sqls = [one_line(sql) if (sql := extract_sql(pick).sql) else "" for pick in picks]
            report = score(golds, sqls, args.spider_dir / "database", args.spider_dir / "tables.json", timeout_s=args.timeout, progress=False)
            summary = report.summary()
            right_on_empty = sum(example.ex for example in report.scores if example.index in empty_gold)
            print(
                f"| {rule} | {k} | {summary.ex:.3f} | {summary.em:.3f} | {summary.error_types.get('unknown_table_or_column', 0)} "
                f"| {right_on_empty} of {len(empty_gold)} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
