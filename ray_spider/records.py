"""Run records: one folder per run, everything needed to trust and reproduce its numbers.

    run = RunFolder.create(cfg)               # runs/<name>-<timestamp>/ with config.yaml
    ...                                       # train: save_best_checkpoint, save_history; baseline: predict into run.dev_eval
    run.finish(prompt_version, command, **info)   # manifest.json and report.md, always last

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
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from ray_spider.config import GenerationConfig, RunConfig
from ray_spider.evaluation.score import ERROR_TYPES, HARDNESS_LEVELS, Summary

if TYPE_CHECKING:
    from ray_spider.predict import PredictionSummary

# A checkpoint's adapter in PEFT format: what `PeftModel.from_pretrained` reads.
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
PACKAGES = ("ray-spider", "torch", "transformers", "peft", "trl", "bitsandbytes", "ray", "datasets", "pyarrow", "llguidance")


class RunFolder:
    """The one life cycle of a run folder, for `train` and `baseline` alike (see the module docstring).

    ``create`` makes the folder (never reusing one) and writes config.yaml first, so a run that
    fails later still says what it was; ``finish`` writes manifest.json and report.md last.
    """

    def __init__(self, path: Path, cfg: RunConfig):
        self.path, self.cfg = path, cfg

    @classmethod
    def create(cls, cfg: RunConfig) -> RunFolder:
        path = Path(cfg.output_dir) / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        path.mkdir(parents=True, exist_ok=False)
        run = cls(path.resolve(), cfg)
        write_config(cfg, run.path)
        return run

    @property
    def dev_eval(self) -> Path:
        """The scored dev predictions (predictions.jsonl, pred.sql, gold.sql, summary.json)."""
        return self.path / "dev_eval"

    def save_best_checkpoint(self, checkpoint_dir: Path) -> None:
        """The best checkpoint's adapter files to adapter/, its dev predictions to dev_eval/."""
        copy_best_checkpoint(checkpoint_dir, self.path)

    def save_history(self, history: list[dict]) -> None:
        """metrics.parquet (one row per optimizer step) and curves.png."""
        write_metrics(history, self.path)
        plot_curves(history, self.path / "curves.png", title=self.path.name)

    @contextmanager
    def removed_if_interrupted(self, what: str = "stopped"):
        """Ctrl-C inside the block removes the folder: without adapter, metrics and report it would
        pass for a run, and nothing in it is usable. The KeyboardInterrupt goes on, saying so."""
        try:
            yield
        except KeyboardInterrupt:
            shutil.rmtree(self.path, ignore_errors=True)
            raise KeyboardInterrupt(f"{what}; removed the unfinished run folder {self.path}") from None

    def finish(self, prompt_version: str, command: str, **info) -> None:
        """manifest.json (with ``info``) and report.md, from the dev summary when there is one."""
        finish_run(self.path, self.cfg, prompt_version, read_summary(self.path), command, **info)


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
        "decoding": decoding_settings(cfg.generation),
        **extra,
    }


# the generation settings that change which answers are scored (batch size, engine and caches change
# only speed and float rounding)
DECODING_KEYS = ("max_new_tokens", "constrained", "candidates", "search", "temperature", "seed", "pick")


def decoding_settings(generation: GenerationConfig) -> dict:
    """The settings of ``generation`` that decide the scored answers; the sampling ones only when
    candidates are sampled, so a greedy run records just greedy."""
    settings = {key: getattr(generation, key) for key in DECODING_KEYS}
    if generation.candidates == 1:
        settings = {key: settings[key] for key in ("max_new_tokens", "constrained", "candidates")}
    elif generation.search == "beam":
        del settings["temperature"], settings["seed"]
    return settings


def decoding_line(generation: GenerationConfig) -> str:
    """The decoding in words, e.g. "16 candidates (greedy + 15 samples at temperature 1.0, seed 0), picked by majority"."""
    if generation.candidates == 1:
        how = "greedy"
    elif generation.search == "beam":
        how = f"{generation.candidates} beams, picked by {generation.pick}"
    else:
        how = (
            f"{generation.candidates} candidates (greedy + {generation.candidates - 1} samples at temperature "
            f"{generation.temperature:g}, seed {generation.seed}), picked by {generation.pick}"
        )
    constrained = ", schema-constrained" if generation.constrained else ""
    return f"Decoding: {how}{constrained}, at most {generation.max_new_tokens} new tokens."


def write_config(cfg: RunConfig, run_dir: Path) -> None:
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def is_number(value) -> bool:
    """A real score: not None, not NaN (Tune's tables mark a result without the metric by NaN)."""
    return isinstance(value, (int, float)) and value == value


def best_round(rounds: list[dict], metric: str = "dev_ex", kept=None) -> dict | None:
    """The eval round with the highest ``metric``; the earliest wins a tie (fewer steps, same score).

    The one rule for "best" of a run (run folders) and of a trial (the sweep's trials table).
    Rounds without the metric (train-loss rows) are ignored; None when no round has it.
    ``kept(round)``: whether its checkpoint still exists. Ray Train keeps only keep_checkpoints of
    them and among tied rounds deletes the earliest first, so the best round is then chosen among
    the kept ones (all rounds when none is kept).
    """
    evaluated = [row for row in rounds if is_number(row.get(metric))]
    candidates = [row for row in evaluated if kept(row)] if kept else []
    return max(candidates or evaluated, key=lambda row: (row[metric], -row.get("step", 0))) if evaluated else None


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
    """Adapter files to run_dir/adapter, its dev predictions to run_dir/dev_eval. The trainer
    state a checkpoint also holds (optimizer, scheduler, RNG: for resuming) stays in Ray's storage."""
    adapter = run_dir / "adapter"
    adapter.mkdir()
    for name in ADAPTER_FILES:
        shutil.copy2(Path(checkpoint_dir) / name, adapter / name)
    shutil.copytree(Path(checkpoint_dir) / "dev_eval", run_dir / "dev_eval")


def hardness_table_md(summary: Summary) -> str:
    lines = ["| level | count | EX | EM |", "| --- | ---: | ---: | ---: |"]
    for level in (*HARDNESS_LEVELS, "all"):
        row = summary if level == "all" else summary.by_hardness[level]
        rates = f"{row.ex:.3f} | {row.em:.3f}" if row.n else "- | -"  # a rate of no questions is not 0
        lines.append(f"| {level} | {row.n} | {rates} |")
    return "\n".join(lines)


def error_table_md(summary: Summary) -> str:
    counts = summary.error_types
    lines = ["| error type | count |", "| --- | ---: |"]
    lines += [f"| {kind} | {counts.get(kind, 0)} |" for kind in ERROR_TYPES]
    return "\n".join(lines)


def memory_line(info: dict) -> str:
    """The run's memory settings (memory.MemoryPlan, as chosen on the worker) and measured GPU peaks."""
    plan = info["memory_plan"]
    peaks = ", ".join(f"{info[key]} GB {label}" for key, label in (("gpu_peak_gb_train", "training"), ("gpu_peak_gb_dev", "dev rounds")) if key in info)
    return (
        f"Memory per worker: budget {plan['budget_gb']} GB; micro-batch {plan['micro_batch']} x accumulation "
        f"{info.get('gradient_accumulation_steps')}, gradient checkpointing {'on' if plan['gradient_checkpointing'] else 'off'}, "
        f"Liger kernels {'on' if info.get('liger_kernel') else 'off'}"
        f"{f', {compiled} decoder layers compiled' if (compiled := info.get('compiled_layers')) else ''}, dev rounds "
        f"{'on a merged bf16 copy' if plan['merge_adapter'] else 'on the trained model (no merged copy)'} in batches of "
        f"{plan['generation_batch']} rows; estimated {plan['estimate_train_gb']} GB training, {plan['estimate_dev_gb']} GB dev; "
        f"measured peak: {peaks or 'n/a (no GPU)'}."
    )


def memory_plan_table(cfg: RunConfig, resolved: RunConfig, memory_plan):
    """`ray-spider plan`'s table of a memory.MemoryPlan: each memory setting, its value in ``resolved``
    (train.plan_worker_memory's config) and whether ``cfg``, as given, left it to `auto`; ``memory_line``
    says the same in report.md after a run."""
    from rich.table import Table

    train, generation = resolved.train, resolved.generation
    auto = {
        "micro-batch": cfg.train.per_device_batch_size, "gradient checkpointing": cfg.train.gradient_checkpointing,
        "dev rounds": cfg.generation.merge_adapter, "generation batch": cfg.generation.batch_size,
    }
    rows = [
        ("budget per worker", f"{memory_plan.budget_gb:g} GB"),
        ("micro-batch", f"{train.per_device_batch_size} x {resolved.gradient_accumulation_steps} accumulation x {train.num_workers} "
                        f"worker(s) = effective batch {train.effective_batch_size}"),
        ("gradient checkpointing", "on" if train.gradient_checkpointing else "off"),
        ("dev rounds", "on a merged bf16 copy" if generation.merge_adapter else "on the 4-bit base + adapter"),
        ("generation batch", f"{generation.batch_size} rows"),
        ("estimated peak, training", f"{memory_plan.estimate_train_gb} GB"),
        ("estimated peak, dev rounds", f"{memory_plan.estimate_dev_gb} GB"),
    ]
    table = Table(title=f"memory plan: {cfg.model.name} at {memory_plan.budget_gb:g} GB", title_justify="left")
    for column in ("setting", "value", "chosen by"):
        table.add_column(column)
    for name, value in rows:
        table.add_row(name, value, ("plan (auto)" if auto[name] == "auto" else "config") if name in auto else "")
    table.caption = "estimates err on the safe side (measured peaks beside them: docs/benchmarks.md)"
    return table


def write_report(run_dir: Path, cfg: RunConfig, info: dict, summary: PredictionSummary | None, command: str) -> None:
    parts = [
        f"# Run {run_dir.name}",
        f"Command: `{command}`",
        f"Model `{cfg.model.name}` ({cfg.model.quantization}), LoRA {'r=' + str(cfg.lora.r) + ' alpha=' + str(cfg.lora.alpha) if cfg.lora.enabled else 'off'}, "
        f"lr {cfg.train.learning_rate}, epochs {cfg.train.epochs}, effective batch {cfg.train.effective_batch_size}"
        f"{' (padding-free rows)' if cfg.train.padding_free else ''}, "
        f"prompt {info['prompt_version']}, seed {cfg.train.seed}.",
        decoding_line(cfg.generation),
    ]
    if "best_step" in info:
        parts.append(f"Best checkpoint by dev EX: step {info['best_step']} of {info['last_step']} (kept in `adapter/`). Wall time {info['wall_s']:.0f} s.")
    if info.get("memory_plan"):
        parts.append(memory_line(info))
    if summary:
        parts += [
            f"## Dev ({summary.n} questions scored, {summary.skipped_missing_db} skipped: missing database)",
            hardness_table_md(summary),
            f"SQL-only rate: {summary.sql_only_rate:.3f}",
            "## Errors of the wrong predictions",
            error_table_md(summary),
        ]
    if (run_dir / "curves.png").exists():
        parts.append("![dev curves](curves.png)")
    (run_dir / "report.md").write_text("\n\n".join(parts) + "\n")


def finish_run(run_dir: Path, cfg: RunConfig, prompt_version: str, summary: PredictionSummary | None, command: str, **extra) -> None:
    """manifest.json and report.md: the last files of every run folder (``RunFolder.finish``)."""
    info = manifest(cfg, prompt_version, **extra)
    (run_dir / "manifest.json").write_text(json.dumps(info, indent=2) + "\n")
    write_report(run_dir, cfg, info, summary, command)


def read_summary(run_dir: Path) -> PredictionSummary | None:
    """The dev summary of a run folder (dev_eval/summary.json), or None when it has none."""
    path = run_dir / "dev_eval" / "summary.json"
    return read_summary_file(path) if path.exists() else None


def read_summary_file(path: Path) -> PredictionSummary:
    """A summary.json written by ``PredictionResult.write``."""
    from ray_spider.predict import PredictionSummary

    return PredictionSummary.from_dict(json.loads(Path(path).read_text()))


def decoding_cell(generation: dict | None) -> str:
    """A summary's recorded generation section in a few words ("greedy", "16 sampled, majority_rows",
    ", constrained"); "-" for a summary from before decodings were recorded."""
    if not generation:
        return "-"
    k = generation.get("candidates", 1)
    how = "greedy" if k == 1 else f"{k} {'beams' if generation.get('search') == 'beam' else 'sampled'}, {generation.get('pick')}"
    return how + (", constrained" if generation.get("constrained") else "")


def comparison_table(summaries: list[PredictionSummary], labels: list[str]):
    """A rich Table with one column per summary: questions, decoding, SQL-only rate, EX and EM overall and per
    hardness level (levels that none of them has are left out). Scores of summaries over different
    question sets are not comparable; the row of question counts shows it."""
    from rich.table import Table

    table = Table(title="side by side")
    table.add_column("")
    for label in labels:
        table.add_column(label, justify="right")
    table.add_row("questions", *(str(s.n) for s in summaries))
    table.add_row("decoding", *(decoding_cell(s.generation) for s in summaries))
    table.add_row("SQL-only rate", *(f"{s.sql_only_rate:.3f}" for s in summaries))
    table.add_row("EX", *(f"{s.ex:.3f}" for s in summaries))
    table.add_row("EM", *(f"{s.em:.3f}" for s in summaries))
    for level in HARDNESS_LEVELS:
        if any(s.by_hardness[level].n for s in summaries):
            table.add_row(f"EX {level} (n)", *(
                f"{s.by_hardness[level].ex:.3f} ({s.by_hardness[level].n})" if s.by_hardness[level].n else "- (0)" for s in summaries
            ))  # a rate of no questions is not 0, as in the eval table
    return table
