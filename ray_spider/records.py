"""Run records: one folder per run, everything needed to trust and reproduce its numbers.

    runs/<name>-<timestamp>/
      config.yaml        resolved config          manifest.json  prompt version, versions, commit, seed, best step
      metrics.parquet    step, train loss, dev EX/EM, SQL-only rate (+ per hardness)
      curves.png         dev EX/EM and train loss against steps
      adapter/           best checkpoint by dev EX, PEFT format     dev_eval/  its dev predictions and scores
      report.md          per-hardness table, error breakdown, where the best step was
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import time
from importlib import metadata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from ray_spider.config import RunConfig
from ray_spider.evaluation.score import ERROR_TYPES, HARDNESS_LEVELS

PACKAGES = ("ray-spider", "torch", "transformers", "peft", "trl", "bitsandbytes", "ray", "datasets", "pyarrow")


def new_run_dir(cfg: RunConfig) -> Path:
    run_dir = Path(cfg.output_dir) / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=False)
    return run_dir.resolve()


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def manifest(cfg: RunConfig, prompt_version: str, **extra) -> dict:
    import torch

    return {
        "prompt_version": prompt_version,
        "seed": cfg.train.seed,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "host": platform.node(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "packages": package_versions(),
        **extra,
    }


def write_config(cfg: RunConfig, run_dir: Path) -> None:
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def best_round(rounds: list[dict]) -> dict | None:
    """The eval round with the highest dev EX; the earliest wins a tie (fewer steps, same score)."""
    evaluated = [row for row in rounds if row.get("dev_ex") is not None]
    return max(evaluated, key=lambda row: (row["dev_ex"], -row["step"])) if evaluated else None


def metrics_by_step(history: list[dict]) -> list[dict]:
    """One row per optimizer step: the logged train loss and, on eval steps, the dev scores."""
    rows: dict[int, dict] = {}
    for row in history:
        rows.setdefault(row["step"], {}).update({key: value for key, value in row.items() if value is not None})
    columns = sorted({key for row in rows.values() for key in row}, key=lambda k: (k != "step", k))
    return [{key: row.get(key) for key in columns} for _, row in sorted(rows.items())]


def write_metrics(rows: list[dict], run_dir: Path) -> None:
    table = pa.Table.from_pylist(rows) if rows else pa.table({"step": pa.array([], pa.int64())})
    pq.write_table(table, run_dir / "metrics.parquet")


def plot_curves(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = [row for row in history if row.get("dev_ex") is not None]
    losses = [row for row in history if row.get("train_loss") is not None]
    figure, (dev_axis, loss_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("dev_ex", "dev EX"), ("dev_em", "dev EM"), ("sql_only_rate", "SQL-only rate")):
        dev_axis.plot([r["step"] for r in evals], [r[key] for r in evals], marker="o", label=label)
    dev_axis.set(xlabel="optimizer step", ylabel="rate", ylim=(0, 1), title="dev")
    dev_axis.legend()
    loss_axis.plot([r["step"] for r in losses], [r["train_loss"] for r in losses], color="tab:red")
    loss_axis.set(xlabel="optimizer step", ylabel="loss", title="train loss")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def copy_best_checkpoint(checkpoint_dir: Path, run_dir: Path) -> None:
    """Adapter files to run_dir/adapter, its dev predictions to run_dir/dev_eval."""
    adapter = run_dir / "adapter"
    adapter.mkdir()
    for item in Path(checkpoint_dir).iterdir():
        if item.name == "dev_eval":
            shutil.copytree(item, run_dir / "dev_eval")
        elif item.is_file():
            shutil.copy2(item, adapter / item.name)


def hardness_table_md(summary: dict) -> str:
    lines = ["| level | count | EX | EM |", "| --- | ---: | ---: | ---: |"]
    for level in (*HARDNESS_LEVELS, "all"):
        row = summary if level == "all" else summary["by_hardness"][level]
        lines.append(f"| {level} | {row['n']} | {row['ex']:.3f} | {row['em']:.3f} |")
    return "\n".join(lines)


def error_table_md(summary: dict) -> str:
    counts = summary.get("error_types", {})
    lines = ["| error type | count |", "| --- | ---: |"]
    lines += [f"| {kind} | {counts.get(kind, 0)} |" for kind in ERROR_TYPES]
    return "\n".join(lines)


def write_report(run_dir: Path, cfg: RunConfig, info: dict, summary: dict | None, command: str) -> None:
    parts = [
        f"# Run {run_dir.name}",
        f"Command: `{command}`",
        f"Model `{cfg.model.name}` ({cfg.model.quantization}), LoRA {'r=' + str(cfg.lora.r) + ' alpha=' + str(cfg.lora.alpha) if cfg.lora.enabled else 'off'}, "
        f"lr {cfg.train.learning_rate}, epochs {cfg.train.epochs}, effective batch {cfg.train.effective_batch_size}, "
        f"prompt {info['prompt_version']}, seed {cfg.train.seed}.",
    ]
    if "best_step" in info:
        parts.append(f"Best checkpoint by dev EX: step {info['best_step']} of {info['last_step']} (kept in `adapter/`). Wall time {info['wall_s']:.0f} s.")
    if summary:
        parts += [
            f"## Dev ({summary['n']} questions scored, {summary['skipped_missing_db']} skipped: missing database)",
            hardness_table_md(summary),
            f"SQL-only rate: {summary.get('sql_only_rate', float('nan')):.3f}",
            "## Errors of the wrong predictions",
            error_table_md(summary),
        ]
    if (run_dir / "curves.png").exists():
        parts.append("![dev curves](curves.png)")
    (run_dir / "report.md").write_text("\n\n".join(parts) + "\n")


def finish_run(run_dir: Path, cfg: RunConfig, prompt_version: str, summary: dict | None, command: str, **extra) -> None:
    """manifest.json and report.md: the last files of every run folder (train and baseline alike)."""
    info = manifest(cfg, prompt_version, **extra)
    (run_dir / "manifest.json").write_text(json.dumps(info, indent=2) + "\n")
    write_report(run_dir, cfg, info, summary, command)


def read_summary(run_dir: Path) -> dict | None:
    path = run_dir / "dev_eval" / "summary.json"
    return json.loads(path.read_text()) if path.exists() else None
