"""Compare two prediction folders question by question (e.g. the fast merged-bf16 path against the
slow 4-bit + adapter path on a sample): how many extracted SQL strings and EX verdicts differ.

    python bench/compare_predictions.py FAST_DIR SLOW_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load(folder: str) -> dict[int, dict]:
    rows = [json.loads(line) for line in (Path(folder) / "predictions.jsonl").read_text().splitlines()]
    return {row["index"]: row for row in rows}


def main(fast_dir: str, slow_dir: str) -> None:
    fast, slow = load(fast_dir), load(slow_dir)
    shared = sorted(set(fast) & set(slow))
    sql_differs = [i for i in shared if fast[i]["sql"] != slow[i]["sql"]]
    ex_differs = [i for i in shared if fast[i]["ex"] != slow[i]["ex"]]
    print(f"{len(shared)} questions in both; extracted SQL differs on {len(sql_differs)}, EX differs on {len(ex_differs)}")
    print(f"EX on them: fast {sum(bool(fast[i]['ex']) for i in shared)}, slow {sum(bool(slow[i]['ex']) for i in shared)}")
    for i in sql_differs[:5]:
        print(f"  #{i}\n    fast: {fast[i]['sql']}\n    slow: {slow[i]['sql']}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
