"""Experiment tracking: `ray-spider train` writes TensorBoard events and an MLflow run with train loss
and dev EX, read back with TensorBoard's and MLflow's own readers."""

from __future__ import annotations

import pytest

from ray_spider.config import load_run_config
from ray_spider.tracking import dev_round_logs, worker_tracking

from test_train import run_cli


def test_worker_tracking_names_the_integrations_and_their_environment(tmp_path):
    cfg = load_run_config(None, [f"output_dir={tmp_path}", "tracking.backends=[tensorboard, mlflow]", "name=r1"])
    tracking = worker_tracking(cfg, str(tmp_path / "tb"), run_name="r1-2026")
    assert tracking["report_to"] == ["tensorboard", "mlflow"]
    assert tracking["env"]["TENSORBOARD_LOGGING_DIR"] == str(tmp_path / "tb")
    assert tracking["env"]["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert tracking["env"]["MLFLOW_EXPERIMENT_NAME"] == "r1"
    # a sweep's trial: TensorBoard only where there is a local folder, MLflow from Tune's callback
    assert worker_tracking(cfg, None, run_name="trial_1", mlflow=False)["report_to"] == []
    assert load_run_config(None, ["tracking.backends=[]"]).tracking.backends == []


def test_dev_round_logs_are_evaluation_metrics():
    logs = dev_round_logs({"step": 3, "dev_ex": 0.5, "dev_em": 0.25, "sql_only_rate": 1.0, "dev_ex_easy": 1.0, "dev_n": 4})
    assert logs == {"eval_dev_ex": 0.5, "eval_dev_em": 0.25, "eval_sql_only_rate": 1.0, "eval_dev_ex_easy": 1.0}


@pytest.mark.slow
def test_train_writes_tensorboard_events_and_an_mlflow_run(tiny_dir, spider_dir, tmp_path):
    result = run_cli(
        "train", "sweeps/smoke_cpu.yaml", f"output_dir={tmp_path}", f"model.name={tiny_dir}", "model.quantization=none",
        "train.max_steps=1", "train.eval_every_steps=1", "train.per_device_batch_size=1", "train.effective_batch_size=1",
        "data.max_train_examples=4", "data.dev_subset=2", "generation.max_new_tokens=4",
        "tracking.backends=[tensorboard, mlflow]",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run_dir,) = [path for path in tmp_path.iterdir() if path.is_dir()]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"train/loss", "train/learning_rate", "eval/dev_ex", "eval/dev_em"} <= set(scalars), scalars
    (dev_ex,) = events.Scalars("eval/dev_ex")
    assert dev_ex.step == 1 and 0.0 <= dev_ex.value <= 1.0

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path.resolve()}/mlflow.db")
    experiment = client.get_experiment_by_name("smoke-cpu")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == run_dir.name
    (logged,) = client.get_metric_history(run.info.run_id, "eval_dev_ex")
    assert logged.step == 1 and logged.value == dev_ex.value
    assert client.get_metric_history(run.info.run_id, "loss")
    assert run.data.params["learning_rate"] == "0.0002"  # transformers logs the training arguments too
