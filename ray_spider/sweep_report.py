"""What a user looks at after a sweep: the trials table, a PNG, and the best adapter fetched out of storage.

    ray-spider trials runs/sweeps/sweep-smoke-cpu
    ray-spider best runs/sweeps/sweep-smoke-cpu --out best_adapter/
"""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow.fs as pafs
from rich.table import Table

from ray_spider.config import ModelConfig
from ray_spider.records import ADAPTER_FILES
from ray_spider.storage import TRIALS_PLOT, is_local, storage

DEV_EVAL = "dev_eval"  # the checkpoint's dev predictions and summary.json (train.DevEvalCallback writes them)


def trials_table(rows: list[dict]) -> Table:
    params = sorted({key for row in rows for key in row if key.startswith("param.")})
    table = Table(title=f"{len(rows)} trials, best dev EX first")
    for column in ("trial", "status", *[p.rsplit(".", 1)[-1] for p in params], "dev EX", "dev EM", "best step", "wall s"):
        table.add_column(column, justify="left" if column in ("trial", "status") else "right")
    for row in rows:
        cells = [_format(row[p]) for p in params]
        scores = [_format(row["best_dev_ex"]), _format(row["best_dev_em"]), _format(row["best_step"]), f"{row['wall_time_s']:.0f}"]
        table.add_row(row["trial_id"], row["status"], *cells, *scores)
    return table


def _format(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 0.01 else f"{value:.3f}"
    return str(value)


def plot_trials(experiment: str, rows: list[dict]) -> str:
    """dev EX and EM per trial over steps, and each searched parameter against the trial's best dev EX,
    written as trials.png into the experiment (local folder or URI); returns where it went."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = sorted({key for row in rows for key in row if key.startswith("param.")})
    figure, axes = plt.subplots(1, 2 + len(params), figsize=(4.5 * (2 + len(params)), 4), squeeze=False)
    for axis, metric in zip(axes[0][:2], ("ex", "em")):
        for row in rows:
            axis.plot(row["curve_steps"], row[f"curve_dev_{metric}"], marker="o", label=row["trial_id"])
        axis.set(xlabel="optimizer step", ylabel=f"dev {metric.upper()}", title=f"dev {metric.upper()} per trial")
        if rows:
            axis.legend(fontsize=7)
    for axis, param in zip(axes[0][2:], params):
        scored = [row for row in rows if row["best_dev_ex"] is not None]
        axis.scatter([row[param] for row in scored], [row["best_dev_ex"] for row in scored])
        if param.endswith("learning_rate"):
            axis.set_xscale("log")
        axis.set(xlabel=param.removeprefix("param."), ylabel="best dev EX")
    figure.tight_layout()
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=110)
    plt.close(figure)
    filesystem, path = storage(experiment)
    with filesystem.open_output_stream(f"{path}/{TRIALS_PLOT}") as out:  # beside trials.parquet, local or remote
        out.write(image.getvalue())
    return f"{path}/{TRIALS_PLOT}" if is_local(filesystem) else f"{experiment.rstrip('/')}/{TRIALS_PLOT}"


def fetch_best(experiment: str, out: Path, check_load: bool = True) -> dict:
    """Copy the best trial's best adapter out of storage into ``out``, with the trial's resolved run
    config as ``out/config.yaml`` (for `ray-spider predict --config` and `ray-spider train`) and the
    checkpoint's dev predictions as ``out/dev_eval/`` (for `ray-spider compare`); return its trials-table row."""
    from ray_spider.records import write_config
    from ray_spider.tune import SweepError, read_sweep, trial_rows, trial_run_config

    rows = [row for row in trial_rows(experiment) if row["checkpoint_uri"]]
    if not rows:
        raise SweepError(f"no trial of {experiment} has a checkpoint in storage (none reported yet, or the sweep was copied without its train_runs/)")
    best = rows[0]
    filesystem, path = storage(experiment)
    out.mkdir(parents=True, exist_ok=True)
    for name in ADAPTER_FILES:
        pafs.copy_files(f"{best['checkpoint_uri']}/{name}", str(out.resolve() / name), source_filesystem=filesystem, destination_filesystem=pafs.LocalFileSystem())
    if filesystem.get_file_info(f"{best['checkpoint_uri']}/{DEV_EVAL}").type == pafs.FileType.Directory:
        (out / DEV_EVAL).mkdir(exist_ok=True)  # copy_files fills a local folder, it does not create it
        pafs.copy_files(f"{best['checkpoint_uri']}/{DEV_EVAL}", str(out.resolve() / DEV_EVAL), source_filesystem=filesystem, destination_filesystem=pafs.LocalFileSystem())
    sweep = read_sweep(filesystem, path)
    params = {key.removeprefix("param."): value for key, value in best.items() if key.startswith("param.")}
    cfg = trial_run_config(sweep, params)
    write_config(cfg.model_copy(update={"name": f"{sweep['name']}-best"}), out)
    if check_load:
        check_adapter_loads(out, cfg.model)
    return {key: value for key, value in best.items() if not key.startswith("curve_")}


def check_adapter_loads(adapter: Path, model_cfg: ModelConfig) -> None:
    """Load the base model (full precision, CPU) and the adapter with peft; raises when the adapter does not fit."""
    from peft import PeftModel

    from ray_spider.model import load_model

    PeftModel.from_pretrained(load_model(model_cfg.model_copy(update={"quantization": "none"}), device="cpu"), str(adapter))
