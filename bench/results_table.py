"""Markdown tables for docs/results.md from scored prediction folders (each holding summary.json).

    python bench/results_table.py baseline=docs/results/baseline/dev_summary.json \
        r16=docs/results/qlora-r16/dev_summary.json best=proof/best_dev972

Prints the dev table (EX, EM, both per hardness, SQL-only rate, questions) and the error-type
counts side by side, so the numbers in the docs come from one command.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ray_spider.evaluation.score import ERROR_TYPES, HARDNESS_LEVELS
from ray_spider.predict import PredictionSummary
from ray_spider.records import read_summary_file


def read_summary(path: str) -> PredictionSummary:
    return read_summary_file(Path(path) / "summary.json" if Path(path).is_dir() else Path(path))


def dev_table(summaries: dict[str, PredictionSummary]) -> str:
    lines = [
        "| run | EX | EM | EX easy / medium / hard / extra | EM easy / medium / hard / extra | SQL-only | questions |",
        "| --- | ---: | ---: | --- | --- | ---: | ---: |",
    ]
    for name, summary in summaries.items():
        ex, em = (" / ".join(f"{getattr(summary.by_hardness[level], metric):.3f}" for level in HARDNESS_LEVELS) for metric in ("ex", "em"))
        lines.append(f"| {name} | {summary.ex:.3f} | {summary.em:.3f} | {ex} | {em} | {summary.sql_only_rate:.3f} | {summary.n} |")
    return "\n".join(lines)


def error_table(summaries: dict[str, PredictionSummary]) -> str:
    lines = ["| error type | " + " | ".join(summaries) + " |", "| --- |" + " ---: |" * len(summaries)]
    for error in ERROR_TYPES:
        lines.append(f"| {error} | " + " | ".join(str(s.error_types.get(error, 0)) for s in summaries.values()) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("runs", nargs="+", metavar="NAME=PATH", help="a summary.json or the folder holding it")
    args = parser.parse_args()
    summaries = {}
    for item in args.runs:
        name, sep, path = item.partition("=")
        if not sep:
            parser.error(f"{item!r}: expected NAME=PATH")
        try:
            summaries[name] = read_summary(path)
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            parser.error(f"{name}={path}: cannot read a summary.json ({exc})")
    print(dev_table(summaries), error_table(summaries), sep="\n\n")


if __name__ == "__main__":
    main()
