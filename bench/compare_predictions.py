"""Compare two prediction folders question by question (e.g. the fast merged-bf16 path against the
slow 4-bit + adapter path on a sample, or two same-seed training runs): how many extracted SQL
strings and EX verdicts differ.

    python bench/compare_predictions.py A_DIR B_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load(folder: str) -> dict[int, dict]:
    rows = [json.loads(line) for line in (Path(folder) / "predictions.jsonl").read_text().splitlines()]
    return {row["index"]: row for row in rows}


def main(a_dir: str, b_dir: str) -> None:
    a, b = load(a_dir), load(b_dir)
    shared = sorted(set(a) & set(b))
    sql_differs = [i for i in shared if a[i]["sql"] != b[i]["sql"]]
    ex_differs = [i for i in shared if a[i]["ex"] != b[i]["ex"]]
    print(f"A = {a_dir}\nB = {b_dir}")
    print(f"{len(shared)} questions in both; extracted SQL differs on {len(sql_differs)}, EX differs on {len(ex_differs)}")
    print(f"EX on them: A {sum(bool(a[i]['ex']) for i in shared)}, B {sum(bool(b[i]['ex']) for i in shared)}")
    for i in sql_differs[:5]:
        print(f"  #{i}\n    A: {a[i]['sql']}\n    B: {b[i]['sql']}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
