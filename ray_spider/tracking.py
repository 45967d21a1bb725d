"""Experiment tracking through the libraries' own integrations, set by a run config's ``tracking``.

    tracking:
      backends: [tensorboard, mlflow]     # default [tensorboard]; [] = none
      mlflow_uri: http://mlflow:5000      # default sqlite:///<output_dir>/mlflow.db

`train`: transformers' ``report_to`` callbacks (TensorBoardCallback, MLflowCallback) inside the Ray
Train worker log train loss and learning rate every ``train.logging_steps``; the dev rounds go through
the same trainer's ``log``, so the same writers get ``eval/dev_ex``, ``eval/dev_em``,
``eval/sql_only_rate`` and EX per hardness level at the same global step. TensorBoard files land in
``<run folder>/tensorboard/``; MLflow gets one run named after the run folder.

`sweep`: every trial's train loss, learning rate and dev rounds go to TensorBoard as above, in
``<experiment>/trial_<id>/tensorboard/`` (local storage); Ray Tune's own TBXLoggerCallback writes
each trial's reported rounds beside it, and its MLflowLoggerCallback logs one MLflow run per trial
(its hyperparameters and every dev round) into the sweep's experiment.

The driver resolves where things go (``worker_tracking``); the worker applies it (``apply``) through
the environment variables transformers' callbacks read, so nothing here runs inside the train loop.
"""

from __future__ import annotations

import os
from pathlib import Path

from ray_spider.config import RunConfig

TENSORBOARD_DIR = "tensorboard"  # inside a run folder or a trial folder
DEV_METRICS = ("dev_ex", "dev_em", "sql_only_rate")  # of a dev round, logged as eval_<name> (TensorBoard: eval/<name>)


def mlflow_uri(cfg: RunConfig) -> str:
    """tracking.mlflow_uri, or a SQLite store beside the runs (MLflow 3 keeps its file store in
    maintenance mode; SQLite needs no server and ``mlflow ui --backend-store-uri`` reads it)."""
    return cfg.tracking.mlflow_uri or f"sqlite:///{Path(cfg.output_dir).expanduser().resolve() / 'mlflow.db'}"


def worker_tracking(cfg: RunConfig, tensorboard_dir: str | None, run_name: str, mlflow: bool = True) -> dict:
    """What a Ray Train worker needs to report: transformers' ``report_to`` names and the environment
    its callbacks read. ``tensorboard_dir`` None: no TensorBoard from the worker (e.g. remote storage);
    ``mlflow`` False: no MLflow from the worker (a sweep's trials: Tune's callback logs them)."""
    report_to = [
        name for name in cfg.tracking.backends
        if (name != "tensorboard" or tensorboard_dir) and (name != "mlflow" or mlflow)
    ]
    env = {}
    if "tensorboard" in report_to:
        env["TENSORBOARD_LOGGING_DIR"] = str(tensorboard_dir)
    if "mlflow" in report_to:
        env["MLFLOW_TRACKING_URI"] = mlflow_uri(cfg)
        env["MLFLOW_EXPERIMENT_NAME"] = cfg.tracking.mlflow_experiment or cfg.name
    return {"report_to": report_to, "env": env, "run_name": run_name}


def apply(tracking: dict | None) -> tuple[list[str], str | None]:
    """In the worker: set the environment of ``worker_tracking``; returns (report_to, run_name)."""
    if not tracking:
        return [], None
    os.environ.update(tracking["env"])
    return list(tracking["report_to"]), tracking["run_name"]


def dev_round_logs(metrics: dict) -> dict:
    """A dev round's scores under the names transformers' callbacks file as evaluation metrics
    (``eval_`` prefix: TensorBoard shows them as eval/dev_ex, beside train/loss)."""
    names = [*DEV_METRICS, *(key for key in metrics if key.startswith(("dev_ex_", "dev_em_")))]
    return {f"eval_{name}": float(metrics[name]) for name in names if isinstance(metrics.get(name), (int, float))}


def tune_callbacks(cfg: RunConfig, sweep_name: str) -> list:
    """Ray Tune logger callbacks for the sweep's trials: TensorBoard (tensorboardX) and MLflow."""
    callbacks = []
    if "tensorboard" in cfg.tracking.backends:
        from ray.tune.logger import TBXLoggerCallback

        callbacks.append(TBXLoggerCallback())
    if "mlflow" in cfg.tracking.backends:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        experiment = cfg.tracking.mlflow_experiment or sweep_name
        callbacks.append(MLflowLoggerCallback(tracking_uri=mlflow_uri(cfg), experiment_name=experiment, save_artifact=False))
    return callbacks
