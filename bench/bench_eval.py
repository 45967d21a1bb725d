"""Benchmark: scoring dev-972 gold against itself (EX + EM) with `evaluate.score` (a process
pool) beside a plain single-process loop doing the same work, in one run.

    SPIDER_DIR=../shared/spider python bench/bench_eval.py [--repeats 3] [--workers 2,4,8,0]

Prints wall seconds of each and the speed-up ratio (``--workers``: the pool at each size, 0 = the
default, all cores up to ``evaluate.DEFAULT_MAX_WORKERS``). ``--with-model`` first loads the offline
model onto the GPU (or CPU), as `predict` and the dev rounds in training hold it while they score:
forking the pool's workers from such a process costs more. Figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from ray_spider.evaluation.score import read_gold_file, score
from ray_spider.evaluation.exact_match import ExactMatcher
from ray_spider.evaluation.execution import execution_match


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


def load_model():
    """The offline model as `predict` loads it (4-bit on a GPU, full precision on CPU)."""
    from ray_spider.config import ModelConfig
    from ray_spider.model import load_for_inference

    model, _ = load_for_inference(ModelConfig(quantization="nf4" if torch.cuda.is_available() else "none"))
    return model


def timed(function, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", default="0", help="comma-separated pool sizes for evaluate.score; 0 = the default")
    parser.add_argument("--with-model", action="store_true", help="hold the offline model in this process first, as predict does")
    args = parser.parse_args()
    model = load_model() if args.with_model else None  # held until the end: the pools fork from this process
    spider = Path(os.environ["SPIDER_DIR"])
    golds = read_gold_file(spider / "dev_gold.sql")
    preds = [gold.sql for gold in golds]
    db_dir, tables = spider / "database", spider / "tables.json"
    plain_s, (ex, em) = timed(lambda: plain_loop(golds, preds, db_dir, tables), args.repeats)
    print(f"dev-972 gold vs gold, EX+EM, median of {args.repeats}, {os.cpu_count()} cores, model held: {model.device if model else 'none'}")
    print(f"  {'plain single-process loop':<32}: {plain_s:6.2f} s  ({972 / plain_s:6.0f} pairs/s)")
    for workers in (int(w) for w in args.workers.split(",")):
        pool_s, report = timed(lambda: score(golds, preds, db_dir, tables, workers=workers or None, progress=False), args.repeats)
        summary = report.summary()
        assert (ex, em) == (summary.n, summary.n) == (972, 972), (ex, em, summary.n)
        label = f"evaluate.score, {workers or 'default'} workers"
        print(f"  {label:<32}: {pool_s:6.2f} s  ({972 / pool_s:6.0f} pairs/s, {plain_s / pool_s:5.2f}x)")


if __name__ == "__main__":
    main()
