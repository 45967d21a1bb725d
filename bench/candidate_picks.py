"""Other picks from recorded candidates: EX of each pick rule over the first k of every question's
candidates, without generating again.

`ray-spider predict ... generation.candidates=K` records each question's K candidates (best-ranked
first) in predictions.jsonl; this re-runs the selection (``selection.pick_answers``) on their first
k for each k and rule asked, and scores the picks with the evaluator (``evaluation.score``):

    python bench/candidate_picks.py runs/voted16 --k 1,2,4,8,16 --rules executes,majority

Prints one row per (rule, k): EX, EM and the wrong answers naming an unknown table or column.
k=1 is the first candidate alone (greedy under search sample), whatever the rule.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ray_spider.evaluation.extract import extract_sql, one_line
from ray_spider.evaluation.inputs import database_file
from ray_spider.evaluation.score import GoldQuery, score
from ray_spider.selection import PICK_RULES, pick_answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("predictions", type=Path, help="a `predict --out` folder whose predictions.jsonl has candidates")
    parser.add_argument("--k", default="1,2,4,8,16", help="comma-separated candidate counts (at most the recorded k)")
    parser.add_argument("--rules", default="executes,majority", help=f"comma-separated, of: {', '.join(PICK_RULES)}")
    parser.add_argument("--spider-dir", type=Path, default=os.environ.get("SPIDER_DIR"), help="Spider folder (default $SPIDER_DIR)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per query, as eval.query_timeout_s")
    args = parser.parse_args()
    records = [json.loads(line) for line in (args.predictions / "predictions.jsonl").read_text().splitlines() if line]
    if not records or "candidates" not in records[0]:
        parser.error(f"{args.predictions}/predictions.jsonl holds no candidates: predict with generation.candidates > 1")
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
    print(f"{args.predictions}: {len(records)} questions, {recorded} candidates each")
    print("| rule | k | EX | EM | unknown_table_or_column |\n| --- | ---: | ---: | ---: | ---: |")
    for rule in rules:
        for k in ks:
            picks = pick_answers([r["candidates"][:k] for r in records], db_paths, rule, args.timeout)
            sqls = [one_line(sql) if (sql := extract_sql(pick).sql) else "" for pick in picks]
            summary = score(golds, sqls, args.spider_dir / "database", args.spider_dir / "tables.json", timeout_s=args.timeout, progress=False).summary()
            print(f"| {rule} | {k} | {summary.ex:.3f} | {summary.em:.3f} | {summary.error_types.get('unknown_table_or_column', 0)} |", flush=True)


if __name__ == "__main__":
    main()
