"""Benchmark: scoring dev-972 gold against itself (EX + EM) with `evaluate.score` (process pool,
all cores) beside a plain single-process loop doing the same work, in one run.

    SPIDER_DIR=../shared/spider python bench/bench_eval.py [--repeats 3]

Prints wall seconds of each and the speed-up ratio; figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from ray_spider.evaluate import read_gold_file, score
from ray_spider.exact_match import ExactMatcher
from ray_spider.execution import execution_match


def plain_loop(golds, preds, db_dir: Path, tables: Path) -> tuple[int, int]:
    """The obvious way: one process, one query pair after another."""
    matcher = ExactMatcher(db_dir, tables)
    ex = em = 0
    for gold, pred in zip(golds, preds):
        db_path = db_dir / gold.db_id / f"{gold.db_id}.sqlite"
        if not db_path.is_file():
            continue
        matcher.hardness(gold.sql, gold.db_id)
        ex += execution_match(db_path, gold.sql, pred)[0]
        em += matcher.match(gold.sql, pred, gold.db_id)
    return ex, em


def timed(function, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    spider = Path(os.environ["SPIDER_DIR"])
    golds = read_gold_file(spider / "dev_gold.sql")
    preds = [gold.sql for gold in golds]
    db_dir, tables = spider / "database", spider / "tables.json"
    plain_s, (ex, em) = timed(lambda: plain_loop(golds, preds, db_dir, tables), args.repeats)
    pool_s, report = timed(lambda: score(golds, preds, db_dir, tables, progress=False), args.repeats)
    summary = report.summary()
    assert (ex, em) == (summary["n"], summary["n"]) == (972, 972), (ex, em, summary["n"])
    print(f"dev-972 gold vs gold, EX+EM, median of {args.repeats}, {os.cpu_count()} cores")
    print(f"  plain single-process loop : {plain_s:6.2f} s  ({972 / plain_s:6.0f} pairs/s)")
    print(f"  ray_spider evaluate.score : {pool_s:6.2f} s  ({972 / pool_s:6.0f} pairs/s)")
    print(f"  speed-up                  : {plain_s / pool_s:6.2f}x")


if __name__ == "__main__":
    main()
