"""Benchmark: execution-guided selection (``selection.pick_answers``) over recorded candidates, in a
process pool beside the plain alternatives measured in the same run: one loop in this process, and a
thread pool (how selection ran before 2026-12-02).

    SPIDER_DIR=../shared/spider python bench/bench_selection.py docs/results/h200-2026-12-02b/decoding/k16_b8192_shared_graph512.predictions.jsonl.gz

PREDICTIONS: a `predict --out` folder's predictions.jsonl (or .jsonl.gz) of a run with
generation.candidates > 1, whose records hold each question's candidates. Prints each side's wall
seconds, its ratio to the first side, and whether its picks equal the first side's.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ray_spider.selection import PICK_RULES, pick_answers, pick_candidate
from ray_spider.spider import Spider


def thread_pool(candidates, db_paths, rule: str, threads: int) -> list[str]:
    """The thread-pool selection this benchmark compares against: one pick_candidate per question."""
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda job: pick_candidate(job[0], job[1], rule)[0], zip(candidates, db_paths)))


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("predictions", type=Path, help="predictions.jsonl(.gz) with each question's candidates")
    parser.add_argument("--rule", choices=PICK_RULES, default="majority", help="the pick rule timed (default: majority)")
    parser.add_argument("--sides", default="processes:1,threads:8,processes:0", help="comma-separated processes:N or threads:N (processes:0 = the default pool)")
    args = parser.parse_args()
    opener = gzip.open if args.predictions.suffix == ".gz" else open
    try:
        with opener(args.predictions, "rt") as lines:
            records = [json.loads(line) for line in lines]
    except (OSError, ValueError) as exc:  # missing, not gzip, not JSON lines
        parser.error(f"{args.predictions}: not a readable predictions.jsonl(.gz) ({exc})")
    if not records or not all(isinstance(record, dict) and record.get("candidates") for record in records):
        parser.error(f"{args.predictions}: its records hold no candidates (predict with generation.candidates > 1)")
    sides = [side.partition(":") for side in args.sides.split(",")]
    if any(kind not in ("processes", "threads") or not count.isdigit() or (kind == "threads" and count == "0") for kind, _, count in sides):
        parser.error(f"--sides {args.sides!r}: each side is processes:N (N >= 0; 0 = the default pool) or threads:N (N >= 1)")
    spider = Spider()
    candidates = [record["candidates"] for record in records]
    db_paths = [spider.db_path(record["db_id"]) for record in records]
    missing = sorted({record["db_id"] for record, path in zip(records, db_paths) if not path.is_file()})
    if missing:
        parser.error(f"{args.predictions}: databases missing under {spider.root}: {', '.join(missing)}")
    print(f"{len(records)} questions x {len(candidates[0])} candidates, rule {args.rule}, {os.cpu_count()} cores")
    first = None
    for kind, _, count in sides:
        side = f"{kind}:{count}"
        started = time.perf_counter()
        if kind == "threads":
            picks = thread_pool(candidates, db_paths, args.rule, int(count))
        else:
            picks = pick_answers(candidates, db_paths, args.rule, workers=int(count) or None)
        seconds = time.perf_counter() - started
        first = first or (seconds, picks)
        same = "same picks" if picks == first[1] else f"{sum(a != b for a, b in zip(picks, first[1]))} picks differ"
        print(f"  {side:14s} {seconds:7.2f} s  {first[0] / seconds:5.2f}x  {same}", flush=True)


if __name__ == "__main__":
    main()
