"""Compare two prediction folders question by question (e.g. the fast merged-bf16 path against the
slow 4-bit + adapter path on a sample, or two same-seed training runs): how many extracted SQL
strings and EX verdicts differ, and on how many questions only one side is right.

    python bench/compare_predictions.py A_DIR B_DIR
    SPIDER_DIR=../shared/spider python bench/compare_predictions.py A_DIR B_DIR --candidate 0

``--candidate K`` compares the K-th recorded candidate of each question instead of the answer
(``generation.candidates`` > 1 records them; candidate 0 is the greedy one) and scores it with the
evaluator, as `predict` scores answers: e.g. whether two decoding engines agree on their greedy
candidates while their sampled ones have drifted apart.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def load(folder: str) -> dict[int, dict]:
    path = Path(folder) / "predictions.jsonl"
    if not path.is_file():
        raise SystemExit(f"error: {path} not found (a predict --out or a run's dev_eval folder holds one)")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    if any(row.get("ex") is None for row in rows):
        raise SystemExit(f"error: {path}: unscored answers (no gold SQL): nothing to compare EX on")
    return {row["index"]: row for row in rows}


def with_candidate(rows: dict[int, dict], k: int, folder: str) -> dict[int, dict]:
    """``rows`` with each answer replaced by its k-th candidate, scored on dev (evaluation.score)."""
    from ray_spider.evaluation.extract import extract_sql, one_line
    from ray_spider.evaluation.score import GoldQuery, score
    from ray_spider.spider import Spider

    if any(len(row.get("candidates") or []) <= k for row in rows.values()):
        raise SystemExit(
            f"error: {folder}: not every question records a candidate {k}: predict records candidates only "
            f"with generation.candidates > 1, and K must be below that number"
        )
    order = sorted(rows)
    sqls = [one_line(x.sql) if (x := extract_sql(rows[i]["candidates"][k])).sql else "" for i in order]
    spider = Spider()
    report = score(
        [GoldQuery(rows[i]["gold"], rows[i]["db_id"]) for i in order], sqls,
        spider.root / "database", spider.root / "tables.json", progress=False,
    )
    scored = {s.index: s for s in report.scores}
    return {i: {**rows[i], "sql": sql, "ex": scored[n].ex if n in scored else None} for n, (i, sql) in enumerate(zip(order, sqls))}


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("a_dir")
    parser.add_argument("b_dir")
    parser.add_argument("--candidate", type=int, default=None, metavar="K", help="compare each question's K-th candidate (0: the first), scored")
    args = parser.parse_args()
    if args.candidate is not None and args.candidate < 0:
        parser.error(f"--candidate {args.candidate}: K counts from 0 (the first candidate)")
    a, b = load(args.a_dir), load(args.b_dir)
    if args.candidate is not None:
        a, b = with_candidate(a, args.candidate, args.a_dir), with_candidate(b, args.candidate, args.b_dir)
    shared = sorted(set(a) & set(b))
    sql_differs = [i for i in shared if a[i]["sql"] != b[i]["sql"]]
    ex_differs = [i for i in shared if a[i]["ex"] != b[i]["ex"]]
    what = f"candidate {args.candidate}" if args.candidate is not None else "answer"
    print(f"A = {args.a_dir}\nB = {args.b_dir}")
    print(f"{len(shared)} questions in both; the {what}'s extracted SQL differs on {len(sql_differs)}, EX differs on {len(ex_differs)}")
    print(
        f"EX on them: A {sum(bool(a[i]['ex']) for i in shared)}, B {sum(bool(b[i]['ex']) for i in shared)}; "
        f"only A right {sum(bool(a[i]['ex']) and not b[i]['ex'] for i in shared)}, "
        f"only B right {sum(bool(b[i]['ex']) and not a[i]['ex'] for i in shared)}"
    )
    for i in sql_differs[:5]:
        print(f"  #{i}\n    A: {a[i]['sql']}\n    B: {b[i]['sql']}")


if __name__ == "__main__":
    main()
