"""Decoding ablation: one adapter, dev-972, greedy vs schema-constrained vs execution-guided.

Runs ``ray-spider predict`` once per row (the real CLI, the adapter's own run config plus the
row's generation overrides) and prints EX/EM per hardness, the error types and the time of each:

    python bench/decoding_ablation.py --config runs/<run>/config.yaml --adapter runs/<run>/adapter --out runs/ablation
    python bench/decoding_ablation.py ... --rows greedy,constrained --limit 20    # a CPU dry run on 20 questions

Rows (``--rows``, comma-separated; ``--candidates`` sets k, ``--set KEY=VALUE`` adds an override
to every row, e.g. ``--set generation.temperature=0.8``, which rows of one candidate leave out):
    greedy                 the config's own decoding (engine pruned, CUDA graphs on a GPU)
    constrained            + generation.constrained=true (same engine)
    guided                 engine pruned: the greedy answer + k-1 samples, the first that executes
    voted                  the same k candidates, the answer most of them agree with when run (pick majority)
    voted_rows             the same, votes among the candidates that return rows (pick majority_rows, the default)
    constrained+guided     guided, every candidate constrained
    constrained+voted      voted, every candidate constrained
    beam                   engine hf: k beams, the first that executes
    constrained+beam       k constrained beams, the first that executes
``data.dev_subset=null`` scores all of dev-972 (the config's training subset is replaced) unless
``--limit N`` asks for the seeded N-question sample. Each row's folder (predictions.jsonl,
summary.json) stays under ``--out``; the table is also written to ``--out``/ablation.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from ray_spider.config import CANDIDATE_KEYS

ROWS = {
    "greedy": [],
    "constrained": ["generation.constrained=true"],
    "guided": ["generation.candidates={k}", "generation.pick=executes"],
    "voted": ["generation.candidates={k}", "generation.pick=majority"],
    "voted_rows": ["generation.candidates={k}", "generation.pick=majority_rows"],
    "constrained+guided": ["generation.constrained=true", "generation.candidates={k}", "generation.pick=executes"],
    "constrained+voted": ["generation.constrained=true", "generation.candidates={k}", "generation.pick=majority"],
    "beam": ["generation.engine=hf", "generation.search=beam", "generation.candidates={k}", "generation.pick=executes"],
    "constrained+beam": [
        "generation.constrained=true", "generation.engine=hf", "generation.search=beam", "generation.candidates={k}", "generation.pick=executes",
    ],
}
GUIDED = ("guided", "voted", "voted_rows", "beam")
LEVELS = ("easy", "medium", "hard", "extra")
ERRORS = ("wrong_result", "unknown_table_or_column", "syntax_error", "no_sql", "timeout", "error")


def is_candidate_setting(override: str) -> bool:
    """Whether ``override`` sets how many candidates are made or how they are made and picked: a row of
    one candidate (greedy, constrained) leaves it out, so that it stays a one-candidate row."""
    return any(override.startswith(f"generation.{key}=") for key in ("candidates", *CANDIDATE_KEYS))


def row_overrides(name: str, args: argparse.Namespace) -> list[str]:
    """The `predict` overrides of row ``name``: its own, the question sample, the batch, then ``--set``'s
    (the candidate ones only for rows of k candidates)."""
    overrides = [item.format(k=args.candidates) for item in ROWS[name]]
    overrides.append(f"data.dev_subset={args.limit if args.limit is not None else 'null'}")
    if args.batch_size is not None:
        overrides.append(f"generation.batch_size={args.batch_size}")
    with_candidates = any(item.startswith("generation.candidates=") for item in overrides)
    return overrides + [item for item in args.set if with_candidates or not is_candidate_setting(item)]


def run_row(name: str, args: argparse.Namespace) -> dict:
    out = args.out / name.replace("+", "_")
    overrides = row_overrides(name, args)
    command = [sys.executable, "-m", "ray_spider", "predict", "--config", str(args.config), "--out", str(out)]
    if args.adapter:
        command += ["--adapter", str(args.adapter)]
    command += overrides
    print("$", " ".join(command), flush=True)
    done = subprocess.run(command, env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(Path(__file__).parents[1]))})
    if done.returncode:
        raise SystemExit(f"error: row {name} failed (exit {done.returncode}; its error is above); rows before it are in {args.out}")
    return json.loads((out / "summary.json").read_text())


def table(results: dict[str, dict]) -> str:
    head = ["decoding", "n", "EX", "EM"] + [f"EX {level}" for level in LEVELS] + list(ERRORS) + ["generate_s", "score_s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, summary in results.items():
        k = summary["generation"]["candidates"]  # as decoded: a --set generation.candidates=N overrides --candidates
        label = name + (f" (k={k})" if name.endswith(GUIDED) else "")
        hardness = summary["by_hardness"]
        cells = [label, str(summary["n"]), f"{summary['ex']:.3f}", f"{summary['em']:.3f}"]
        cells += [f"{hardness[level]['ex']:.3f} ({hardness[level]['n']})" if hardness[level]["n"] else "- (0)" for level in LEVELS]  # no question: no EX
        cells += [str(summary["error_types"].get(error, 0)) for error in ERRORS]
        cells += [str(summary.get("generate_s")), str(summary.get("score_s"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--config", type=Path, required=True, help="the adapter's run config (runs/<run>/config.yaml)")
    parser.add_argument("--adapter", type=Path, default=None, help="PEFT adapter folder (none: the base model)")
    parser.add_argument("--out", type=Path, required=True, help="folder for each row's predictions and ablation.md")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of: {', '.join(ROWS)}")
    parser.add_argument("--candidates", type=positive, default=8, help="k of the guided, voted and beam rows")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an override for every row (repeatable)")
    parser.add_argument("--limit", type=positive, default=None, help="score the seeded sample of N dev questions (dry runs)")
    parser.add_argument("--batch-size", type=positive, default=None, help="generation.batch_size override (rows: k per question when guided)")
    args = parser.parse_args()
    for option, path in (("--config", args.config), ("--adapter", args.adapter)):
        if path is not None and not path.exists():
            parser.error(f"{option} {path}: not found")
    names = [name.strip() for name in args.rows.split(",") if name.strip()]
    unknown = [name for name in names if name not in ROWS]
    if unknown or not names:
        parser.error(f"unknown rows {unknown}; valid: {', '.join(ROWS)}" if unknown else f"--rows names no row; valid: {', '.join(ROWS)}")
    results = {name: run_row(name, args) for name in names}
    text = table(results)
    print(text)
    (args.out / "ablation.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
