"""Sweeps: Ray Tune + Optuna over QLoRA runs, objective dev EX, best adapters kept in storage.

    ray-spider sweep sweeps/sweep_smoke_cpu.yaml              # start (or --resume after a crash)
    ray-spider trials runs/sweeps/sweep-smoke-cpu             # table + PNG
    ray-spider best runs/sweeps/sweep-smoke-cpu --out best/   # copy the winning adapter out

Each trial runs the training job of train.py (a Ray Train TorchTrainer launched inside the Tune
trial function, reporting every dev-eval round to Tune through TuneReportCallback), so ASHA can stop
weak trials and every reported adapter is a checkpoint in storage. The Train run is named by the
trial id: a crashed trial that Tune retries (``trial_retries``) resumes from its latest checkpoint
(adapter, optimizer, scheduler, position in the data) in the same folder. Storage is any pyarrow
filesystem: a local path, s3://bucket/prefix or gs://bucket/prefix (layout: storage.py).
"""

from __future__ import annotations

import logging
import os
import sys

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from ray.tune import Callback

from ray_spider import tracking
from ray_spider.config import RunConfig, SearchDimension, SweepConfig, apply_override, build_run_config, yaml_problem
from ray_spider.errors import UserError, check_output
from ray_spider.placement_group import PLACEMENT_GROUP_METRIC
from ray_spider.records import best_round, is_number
from ray_spider.spider import Spider
from ray_spider.storage import SWEEP_FILE, TRIALS_FILE, checkpoint_in, experiment_path, experiment_uri, is_local, storage, train_runs_path

log = logging.getLogger(__name__)

class SweepError(UserError):
    """A sweep folder is missing, not a sweep, already taken, or every trial of a sweep failed."""

TRIAL_DRIVER_MEMORY = 2**20  # bytes: the trial function's token reservation (see _tuner)


def tune_distribution(dimension: SearchDimension):
    from ray import tune

    if dimension.choice is not None:
        return tune.choice(dimension.choice)
    if dimension.loguniform is not None:
        return tune.loguniform(*dimension.loguniform)
    if dimension.uniform is not None:
        return tune.uniform(*dimension.uniform)
    return tune.randint(*dimension.randint)


def trial_run_config(sweep: dict, params: dict) -> RunConfig:
    """The sweep's base run config with one trial's sampled values (dotted keys) applied."""
    data = dict(sweep["base"])
    for key, value in params.items():
        apply_override(data, key.split("."), value)
    cfg = build_run_config(data, source=f"sweep {sweep['name']} trial {params}")
    resources = sweep["resources"]
    train = cfg.train.model_copy(
        update={"num_workers": resources["workers"], "cpus_per_worker": resources["cpus_per_worker"], "use_gpu": resources["gpus_per_worker"] > 0}
    )
    return cfg.model_copy(update={"train": train})


def run_trial(params: dict, sweep: dict) -> None:
    """Tune trial function: one Ray Train job with this trial's hyperparameters (dotted keys)."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from ray_spider.progress import LOG_FILE  # progress.py imports transformers: not at import, which `trials` and `best` do too
    from ray_spider.train import torch_trainer

    cfg = trial_run_config(sweep, params)
    filesystem, experiment = experiment_path(sweep["storage"], sweep["name"])
    trial = f"trial_{ray.tune.get_context().get_trial_id()}"
    # TensorBoard from the worker needs a local folder; MLflow is Tune's MLflowLoggerCallback (one run per trial).
    tensorboard_dir = f"{experiment}/{trial}/{tracking.TENSORBOARD_DIR}" if is_local(filesystem) else None
    worker_files = None
    if is_local(filesystem):  # the workers' output goes to the trial's folder (a retried trial appends), not the terminal
        os.makedirs(f"{experiment}/{trial}", exist_ok=True)
        worker_files = {"log_file": f"{experiment}/{trial}/{LOG_FILE}"}
    trainer = torch_trainer(
        cfg,
        storage_path=train_runs_path(experiment),
        # Named by the trial alone: a retried trial's Train run finds its own checkpoints in storage
        # and resumes from the latest (train_loop), instead of starting over in a new folder.
        name=ray.tune.get_context().get_trial_id(),
        gpus_per_worker=sweep["resources"]["gpus_per_worker"],
        storage_filesystem=filesystem,
        callbacks=[TuneReportCallback()],  # Ray: every dev-eval round becomes a Tune result
        tracking=tracking.worker_tracking(cfg, tensorboard_dir, run_name=trial, mlflow=False),
        worker_files=worker_files,
    )
    result = trainer.fit()
    if result.error:
        raise result.error


class ReleaseStoppedTrainRuns(Callback):
    """Frees the resources of a trial's Train run when Tune stops the trial (ASHA) or it fails.

    The Train run inside a trial holds its workers' CPU and GPU share in a placement group that
    outlives the trial when Tune stops it. Ray Train's own cleaner asks the dashboard's state API,
    which this local cluster runs without, so the share stayed reserved and later trials waited
    forever for workers (seen on the H200: 3 trials waited with the GPU idle). Each round reports
    its placement group; once the trial is over it is removed, if Train has not done so already.
    """

    def on_trial_complete(self, iteration, trials, trial, **info):
        release_placement_group((trial.last_result or {}).get(PLACEMENT_GROUP_METRIC))

    on_trial_error = on_trial_recover = on_trial_complete


def release_placement_group(group_id: str | None) -> None:
    import ray
    from ray.util.placement_group import PlacementGroup

    if not group_id:
        return
    group = PlacementGroup(ray.PlacementGroupID.from_hex(group_id))
    try:
        if ray.util.placement_group_table(group).get("state", "REMOVED") != "REMOVED":
            ray.util.remove_placement_group(group)
            log.info("released placement group %s of a stopped trial", group_id)
    except Exception as error:  # a failed clean-up must not take the sweep down
        log.warning("could not release placement group %s: %s", group_id, error)


def _tuner(sweep: SweepConfig, resume: bool):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.basic_variant import BasicVariantGenerator
    from ray.tune.search.optuna import OptunaSearch

    from ray_spider.progress import LOG_FILE
    from ray_spider.train import start_ray

    filesystem, root = storage(sweep.storage)
    experiment = experiment_uri(root, sweep.name)
    # Local storage: each trial's workers write to <experiment>/trial_<id>/train.log, and the terminal
    # keeps Tune's status tables only (Ray's own actors would fill it with their warnings). A sweep
    # storing to a bucket keeps the workers' output in the driver's (the job's) log instead.
    start_ray(log_to_driver=not is_local(filesystem))
    import ray

    warning = no_gpu_warning(sweep.resources.gpus_per_worker, ray.cluster_resources().get("GPU", 0))
    if warning:
        print(warning, file=sys.stderr)
    if is_local(filesystem):
        print(f"trial logs: {experiment}/trial_<id>/{LOG_FILE}", file=sys.stderr)
    # The Spider path is resolved on the driver so that workers anywhere get the same folder.
    base = dict(sweep.base)
    base["data"] = {**base.get("data", {}), "spider_dir": str(Spider(base.get("data", {}).get("spider_dir")).root.resolve())}
    # Trials run in their own working dirs: a relative local storage path must be made absolute here.
    sweep_dict = {**sweep.model_dump(mode="json"), "base": base, "storage": root if is_local(filesystem) else sweep.storage}
    # The trial function only drives its Train job (whose workers hold the real resources): a token
    # of memory, not of CPU. Even 0.01 CPU per trial left 2 x 0.99 CPUs for two 1-CPU trials on a
    # 2-core machine, so the second waited for the first (Tune needs some resource in the bundle).
    trainable = tune.with_resources(tune.with_parameters(run_trial, sweep=sweep_dict), {"memory": TRIAL_DRIVER_MEMORY})
    if resume:
        if not tune.Tuner.can_restore(experiment, storage_filesystem=filesystem):
            raise SweepError(f"no sweep to resume at {experiment_uri(sweep.storage, sweep.name)}: Tune saved no state there; run it without --resume")
        return tune.Tuner.restore(experiment, trainable, resume_errored=True, storage_filesystem=filesystem)
    param_space = {key: tune_distribution(dim) for key, dim in sweep.search_space.items()}
    if sweep.search.name == "optuna_tpe":
        import optuna

        searcher = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=sweep.search.seed))
        # Unlimited: Tune then asks Optuna for one trial at a time, whenever one more fits the cluster.
        search_alg = ConcurrencyLimiter(searcher, max_concurrent=sweep.max_concurrent_trials) if sweep.max_concurrent_trials else searcher
    else:
        search_alg = BasicVariantGenerator(random_state=sweep.search.seed, max_concurrent=sweep.max_concurrent_trials or 0)
    scheduler = (
        ASHAScheduler(time_attr="training_iteration", grace_period=sweep.scheduler.grace_period, reduction_factor=sweep.scheduler.reduction_factor)
        if sweep.scheduler
        else None
    )
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=sweep.objective, mode="max", search_alg=search_alg, scheduler=scheduler,
            num_samples=sweep.num_samples, max_concurrent_trials=sweep.max_concurrent_trials,
            trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=sweep.name, storage_path=root, storage_filesystem=filesystem,
            failure_config=tune.FailureConfig(max_failures=sweep.trial_retries),
            callbacks=[ReleaseStoppedTrainRuns(), *tracking.tune_callbacks(build_run_config(base, source='base'), sweep.name)],
        ),
    )


def check_experiment_folder(sweep: SweepConfig, resume: bool, overwrite: bool = False, delete: bool = True) -> None:
    """Before Ray starts: a new sweep must not land in an existing one's folder (its sweep.yaml would be
    replaced and old and new trials mixed), and --resume needs a sweep to resume. With ``overwrite``
    an existing folder is accepted, and deleted when ``delete``."""
    filesystem, root = storage(sweep.storage)
    experiment = experiment_uri(root, sweep.name)
    uri = experiment_uri(sweep.storage, sweep.name)
    if filesystem.get_file_info(root).type == pafs.FileType.File:
        raise SweepError(f"storage={sweep.storage} is a file; give a folder (or s3://, gs:// URI) for sweeps")
    if is_local(filesystem):
        check_output(root, what="storage", allow_existing_dir=True)  # a folder that cannot be made is named here
    found = filesystem.get_file_info(experiment).type != pafs.FileType.NotFound
    if resume:
        if not found or filesystem.get_file_info(f"{experiment}/{SWEEP_FILE}").type == pafs.FileType.NotFound:
            raise SweepError(f"no sweep to resume at {uri} (no {SWEEP_FILE} there); run it without --resume")
        return
    if found and filesystem.get_file_info(pafs.FileSelector(experiment)):
        if not overwrite:
            raise SweepError(
                f"a sweep named {sweep.name!r} already exists at {uri}: pass --resume to continue it, "
                f"or start a new one with name=<new name> (or --overwrite to delete the old one first)"
            )
        if delete:
            filesystem.delete_dir(experiment)


class _TuneLinesSaidHere(logging.Filter):
    """Drops two of Tune's warnings after a Ctrl-C, which this module words for the CLI: "Experiment has
    been interrupted ... Resume experiment with: Tuner.restore(...)" (here: `ray-spider sweep --resume`,
    which ``run_sweep`` says) and "Failed to fetch metrics" for a trial stopped before its first report
    (the trials table shows it without metrics)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(("Experiment has been interrupted", "Failed to fetch metrics"))


for _logger in ("ray.tune.tune", "ray.tune.analysis.experiment_analysis"):
    logging.getLogger(_logger).addFilter(_TuneLinesSaidHere())


def no_gpu_warning(gpus_per_worker: float, cluster_gpus: float) -> str | None:
    """What to say when trials ask for GPUs that the Ray cluster does not have (yet): Tune then keeps
    them pending without a word. An autoscaling cluster adds GPU nodes; a machine without a GPU never
    does, so the line names the setting that trains on CPU."""
    if gpus_per_worker > 0 and cluster_gpus < gpus_per_worker:
        return (
            f"warning: each trial's workers ask for {gpus_per_worker:g} GPU (resources.gpus_per_worker) and the Ray cluster has "
            f"{cluster_gpus:g}: trials wait until GPU nodes join; on a machine without a GPU set resources.gpus_per_worker=0"
        )
    return None


def run_sweep(sweep: SweepConfig, resume: bool = False, overwrite: bool = False) -> str:
    """Run (or resume) the sweep; writes trials.parquet into the experiment folder; returns its URI.
    Raises SweepError (before Ray starts) for a taken or missing folder, and after the run when every
    trial failed, naming the first failure; ConfigError (before Ray starts) for trials that ask for
    more GPUs than this machine has when the sweep would start its own local Ray cluster."""
    import yaml

    from ray_spider.train import check_local_gpus

    resources = sweep.resources
    check_local_gpus(
        resources.workers * resources.gpus_per_worker,
        f"resources.gpus_per_worker={resources.gpus_per_worker:g} with resources.workers={resources.workers}",
        "set resources.gpus_per_worker=0 (CPU)" + (" or give fewer workers" if resources.workers > 1 else ""),
    )
    check_experiment_folder(sweep, resume, overwrite)
    tuner = _tuner(sweep, resume)
    filesystem, experiment = experiment_path(sweep.storage, sweep.name)
    filesystem.create_dir(experiment, recursive=True)
    if not resume:
        with filesystem.open_output_stream(f"{experiment}/{SWEEP_FILE}") as out:
            out.write(yaml.safe_dump(sweep.model_dump(mode="json"), sort_keys=False).encode())
    results = tuner.fit()
    rows = write_trials_table(experiment_uri(sweep.storage, sweep.name))
    # Tune ends fit() quietly on Ctrl-C (it saves its state first): trials left unfinished tell.
    if len(rows) < sweep.num_samples or any(row["status"] not in ("TERMINATED", "ERROR") for row in rows):
        raise KeyboardInterrupt(
            f"the sweep stopped with {sum(row['status'] == 'TERMINATED' for row in rows)} of {sweep.num_samples} trials finished; "
            f"its state and trials.parquet are in {experiment_uri(sweep.storage, sweep.name)}: continue it with --resume"
        )
    failed = [result for result in results if result.error]
    if results and len(failed) == len(results):
        first = failed[0]
        lines = [line for line in str(first.error).splitlines() if line.strip()]
        raise SweepError(
            f"all {len(failed)} trials of {sweep.name} failed; the first: {lines[-1] if lines else type(first.error).__name__} "
            f"(its traceback: {first.path}/error.txt)"
        )
    return experiment_uri(sweep.storage, sweep.name)  # as the user names it: s3:// kept


def trial_rows(experiment_uri: str) -> list[dict]:
    """One row per trial from Tune's saved state: hyperparameters, best round by the objective, timing.

    The best round is the highest-scoring one whose checkpoint is still in storage (earliest first):
    Ray Train keeps only ``train.keep_checkpoints`` of them, and among tied rounds the one it kept
    need not be the earliest. Checkpoint paths are found again under the experiment's own
    train_runs/ when the experiment was moved or copied (Tune records them absolute)."""
    from ray.tune import ExperimentAnalysis

    filesystem, experiment = storage(experiment_uri)
    sweep = read_sweep(filesystem, experiment)
    if not any(info.base_name.startswith("experiment_state") for info in filesystem.get_file_info(pafs.FileSelector(experiment))):
        if filesystem.get_file_info(f"{experiment}/{TRIALS_FILE}").type == pafs.FileType.File:
            raise SweepError(
                f"{experiment_uri} holds the sweep's trials table ({TRIALS_FILE}: `ray-spider trials` reads it) but not its "
                "Tune experiment state or checkpoints (a copy of the results only); `best` needs the experiment folder the "
                "sweep wrote (its storage/name)"
            )
        raise SweepError(f"{experiment_uri}: the sweep has no trials recorded yet (no Tune experiment state)")
    analysis = ExperimentAnalysis(experiment, storage_filesystem=filesystem, default_metric=sweep["objective"], default_mode="max")
    frames = analysis.trial_dataframes
    gpus = sweep["resources"]["workers"] * sweep["resources"]["gpus_per_worker"]
    rows = []
    for trial in analysis.trials:
        frame = frames.get(trial.trial_id)
        history = frame.to_dict("records") if frame is not None else []
        rounds = [row for row in history if is_number(row.get(sweep["objective"]))]
        checkpoints = [_kept_checkpoint(filesystem, experiment, row.get("checkpoint_path")) for row in rounds]
        kept = {id(row): path for row, path in zip(rounds, checkpoints) if path}
        best = best_round(rounds, metric=sweep["objective"], kept=lambda row: id(row) in kept)
        checkpoint = kept.get(id(best)) if best else None
        wall = max((row.get("time_total_s") or 0.0 for row in history), default=0.0)
        rows.append(
            {
                "trial_id": trial.trial_id,
                "status": trial.status,
                "retries": trial.num_failures,
                **{f"param.{key}": value for key, value in trial.config.items()},
                "best_dev_ex": best["dev_ex"] if best else None,
                "best_dev_em": best["dev_em"] if best else None,
                "best_step": int(best["step"]) if best else None,
                "eval_rounds": len(rounds),
                "curve_steps": [int(row["step"]) for row in rounds],
                "curve_dev_ex": [float(row["dev_ex"]) for row in rounds],
                "curve_dev_em": [float(row["dev_em"]) for row in rounds],
                "checkpoint_uri": checkpoint,
                "wall_time_s": float(wall),
                "gpu_hours": float(wall) * gpus / 3600,
            }
        )
    return sorted(rows, key=lambda row: -(row["best_dev_ex"] if row["best_dev_ex"] is not None else -1))


def _kept_checkpoint(filesystem: pafs.FileSystem, experiment: str, recorded: str | None) -> str | None:
    """The recorded checkpoint folder if it is still in storage; else the same folder under this
    experiment's train_runs/ (the experiment was moved or copied); None when Ray deleted it."""
    if not isinstance(recorded, str) or not recorded:
        return None
    candidates = [recorded, checkpoint_in(experiment, recorded)]
    for path in candidates:
        try:
            if filesystem.get_file_info(path).type == pafs.FileType.Directory:
                return path
        except (OSError, ValueError):  # a path of another filesystem (the experiment moved from s3 to a disk)
            continue
    return None


def read_sweep(filesystem: pafs.FileSystem, experiment: str) -> dict:
    """The sweep.yaml of an experiment folder; SweepError when the folder is missing or not a sweep."""
    import yaml

    folder = filesystem.get_file_info(experiment)
    if folder.type == pafs.FileType.NotFound:
        raise SweepError(f"sweep folder not found: {experiment} (give <storage>/<sweep name>, e.g. runs/sweeps/sweep-smoke-cpu)")
    if folder.type != pafs.FileType.Directory:
        raise SweepError(f"{experiment} is a file, not a sweep folder (<storage>/<sweep name>)")
    try:
        with filesystem.open_input_stream(f"{experiment}/{SWEEP_FILE}") as stream:
            sweep = yaml.safe_load(stream.read())
    except FileNotFoundError:
        raise SweepError(f"{experiment} is not a sweep folder: no {SWEEP_FILE} in it (a sweep folder is <storage>/<sweep name>, written by `ray-spider sweep`)") from None
    except yaml.YAMLError as exc:
        raise SweepError(f"{experiment}/{SWEEP_FILE}: not valid YAML ({yaml_problem(exc)})") from None
    if not isinstance(sweep, dict) or not {"name", "objective", "resources"} <= set(sweep):
        raise SweepError(f"{experiment}/{SWEEP_FILE} is not a sweep file written by `ray-spider sweep`")
    return sweep


def read_trials_table(experiment_uri: str) -> list[dict] | None:
    """The rows of an experiment's trials.parquet, or None when it has none (a sweep folder without
    Tune's state, like the committed results, is read this way)."""
    filesystem, experiment = storage(experiment_uri)
    if filesystem.get_file_info(f"{experiment}/{TRIALS_FILE}").type == pafs.FileType.NotFound:
        return None
    with filesystem.open_input_file(f"{experiment}/{TRIALS_FILE}") as stream:
        return pq.read_table(stream).to_pylist()


def has_tune_state(experiment_uri: str) -> bool:
    filesystem, experiment = storage(experiment_uri)
    if filesystem.get_file_info(experiment).type != pafs.FileType.Directory:
        return False
    return any(info.base_name.startswith("experiment_state") for info in filesystem.get_file_info(pafs.FileSelector(experiment)))


def write_trials_table(experiment_uri: str) -> list[dict]:
    rows = trial_rows(experiment_uri)
    filesystem, experiment = storage(experiment_uri)
    with filesystem.open_output_stream(f"{experiment}/{TRIALS_FILE}") as out:
        pq.write_table(pa.Table.from_pylist(rows), out)
    return rows
