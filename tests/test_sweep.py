"""Sweeps on a real local Ray cluster: trials table, a killed trial retried, a killed driver resumed
without re-running finished trials, `best` fetching an adapter that loads (tiny random LLaMA), and
trials stopped by ASHA giving their Train workers' resources back. Ray's processes and their imports
are most of a sweep's time on CI's 2 cores: the tests at the end share one private Ray head of this
module instead of starting a local Ray each, and the unlimited and the tied-rounds tests inspect the
same sweep run."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pyarrow.parquet as pq
import pytest

from ray_spider.config import load_run_config, load_sweep_config
from ray_spider.tune import trial_run_config

pytestmark = pytest.mark.slow
TINY_TRIAL = ["base.train.max_steps=2", "base.data.dev_subset=2", "base.generation.max_new_tokens=4", "base.data.max_train_examples=16", "base.model.quantization=none"]


SWEEP_FILE = Path(__file__).resolve().parents[1] / "sweeps" / "sweep_smoke_cpu.yaml"


def sweep_command(storage: Path | str, model_dir: str, samples: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "ray_spider", "sweep", str(SWEEP_FILE), f"storage={storage}",
        f"base.model.name={model_dir}", f"num_samples={samples}", *TINY_TRIAL, *extra,
    ]


def cli_together(*commands: tuple[str, ...], env: dict[str, str] | None = None, timeout: float = 300) -> list[subprocess.CompletedProcess]:
    """Several independent `ray-spider` commands run side by side (each is mostly Python's imports), from
    the repository root, with ``env`` (None: this process's); results as subprocess.run gives them."""
    started = [
        subprocess.Popen(
            [sys.executable, "-m", "ray_spider", *args], cwd=SWEEP_FILE.parents[1], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for args in commands
    ]
    try:
        outputs = [process.communicate(timeout=timeout) for process in started]
        return [subprocess.CompletedProcess(process.args, process.returncode, *output) for process, output in zip(started, outputs)]
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()  # only the commands started here, by their own pid
                process.wait()


def start(command: list[str], log: Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {**(env or os.environ), "PYTHONUNBUFFERED": "1", "TUNE_GLOBAL_CHECKPOINT_S": "0"}
    return subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)


def wait_for(predicate, timeout: float, what: str, process: subprocess.Popen | None = None, poll_s: float = 1.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(f"sweep exited ({process.returncode}) before {what}")
        time.sleep(poll_s)
    raise AssertionError(f"timed out waiting for {what}")


def finished_trials(experiment: Path) -> list[Path]:
    """result.json of the trials that Tune's saved experiment state lists as TERMINATED."""
    done = []
    for state in experiment.glob("experiment_state-*.json"):
        try:
            trials = [json.loads(entry[0]) for entry in json.loads(state.read_text())["trial_data"]]
        except (json.JSONDecodeError, KeyError):
            continue  # being written
        done += [experiment / f"trial_{t['trial_id']}" / "result.json" for t in trials if t["status"] == "TERMINATED"]
    return done


def train_workers(root: int) -> list[psutil.Process]:
    """The Ray Train workers under process `root` (a sweep with its local Ray, or a private Ray head of
    this module), not those of other Ray clusters on the host."""
    workers = []
    for process in psutil.Process(root).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "RayTrainWorker" in " ".join(process.cmdline()):
                workers.append(process)
    return workers


def reported_steps(experiment: Path) -> dict[str, list[int]]:
    """trial id -> the steps of the dev rounds Tune has received so far, in order, over all attempts."""
    steps = {}
    for path in experiment.glob("trial_*/result.json"):
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # the line being written
        steps[path.parent.name.removeprefix("trial_")] = [row["step"] for row in rows if "step" in row]
    return steps


def test_trial_config_applies_sampled_values():
    sweep = load_sweep_config(Path("sweeps/sweep_smoke_cpu.yaml"))
    cfg = trial_run_config(sweep.model_dump(mode="json"), {"lora.r": 64, "train.learning_rate": 3e-4})
    assert (cfg.lora.r, cfg.train.learning_rate, cfg.train.num_workers, cfg.train.use_gpu) == (64, 3e-4, 1, False)


def test_sweep_file_errors_name_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nsearch_space:\n  lora.rank: {choice: [8]}\n")
    with pytest.raises(Exception, match="lora.rank"):
        load_sweep_config(path)


def test_killed_driver_resumes_without_rerunning_finished_trials(tiny_dir, spider_dir, tmp_path):
    experiment = tmp_path / "sweep-smoke-cpu"
    process = start(sweep_command(tmp_path, tiny_dir, 2), tmp_path / "first.log")
    first_done = wait_for(lambda: finished_trials(experiment), 600, "the first finished trial", process, poll_s=0.2)[0]
    os.killpg(process.pid, signal.SIGKILL)  # the driver and the local Ray it started
    process.wait()
    finished_before = first_done.read_text()

    resumed = subprocess.run(sweep_command(tmp_path, tiny_dir, 2, "--resume"), capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert first_done.read_text() == finished_before  # the finished trial did not run again
    rows = pq.read_table(experiment / "trials.parquet").to_pylist()
    assert len(rows) == 2 and all(row["status"] == "TERMINATED" for row in rows)
    expected = {"trial_id", "status", "param.lora.r", "param.train.learning_rate", "param.train.epochs", "best_dev_ex", "best_dev_em", "best_step", "checkpoint_uri", "wall_time_s", "gpu_hours"}
    assert expected <= set(rows[0])

    out = tmp_path / "best"
    fetched = subprocess.run([sys.executable, "-m", "ray_spider", "best", str(experiment), "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert fetched.returncode == 0, fetched.stderr[-3000:]
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert json.loads((out / "dev_eval" / "summary.json").read_text())["ex"] == rows[0]["best_dev_ex"]  # for `compare`
    assert len((out / "dev_eval" / "predictions.jsonl").read_text().splitlines()) == 2  # sweep_command's dev subset
    best_cfg = load_run_config(out / "config.yaml")  # the winner, ready for `predict --config` / `train`
    assert best_cfg.lora.r == rows[0]["param.lora.r"] and best_cfg.train.learning_rate == rows[0]["param.train.learning_rate"]
    assert (experiment / "trials.png").is_file()


def _report_scaled_rounds(config):
    """A Train loop that reports like ours (placement group included): three rounds of score x."""
    import ray.train

    from ray_spider.placement_group import PLACEMENT_GROUP_METRIC, worker_placement_group_id

    for round_ in range(1, 4):
        time.sleep(0.2)
        ray.train.report({"score": config["x"] * round_, PLACEMENT_GROUP_METRIC: worker_placement_group_id()})


def _train_run_trial(config):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune import get_context
    from ray.tune.integration.ray_train import TuneReportCallback

    trainer = TorchTrainer(
        _report_scaled_rounds, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1.5}),
        run_config=RunConfig(name=get_context().get_trial_id(), storage_path=config["storage"], callbacks=[TuneReportCallback()]),
    )
    result = trainer.fit()
    if result.error:
        raise result.error


def test_trials_stopped_by_asha_give_their_workers_back(tmp_path, monkeypatch):
    """On 2 CPUs, one trial at a time holding 1.5 of them: trial 2 is stopped by ASHA after one round,
    and trial 3 needs the CPUs it held. Without ReleaseStoppedTrainRuns the stopped trial's Train
    placement group stays reserved and trial 3 never starts (the experiment's time budget then ends
    it without a result)."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from ray_spider.tune import ReleaseStoppedTrainRuns

    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "10")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import this test file
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        tuner = tune.Tuner(
            tune.with_resources(_train_run_trial, {"CPU": 0.01}),
            param_space={"x": tune.grid_search([3.0, 0.1, 2.0]), "storage": str(tmp_path / "train")},
            tune_config=tune.TuneConfig(
                metric="score", mode="max", max_concurrent_trials=1, time_budget_s=150,
                scheduler=ASHAScheduler(time_attr="training_iteration", grace_period=1, reduction_factor=2),
            ),
            run_config=tune.RunConfig(name="asha", storage_path=str(tmp_path), callbacks=[ReleaseStoppedTrainRuns()], verbose=0),
        )
        results = tuner.fit()
        rounds = dict(sorted((result.config["x"], result.metrics.get("training_iteration")) for result in results))
        assert rounds[3.0] == 3 and rounds[0.1] == 1  # the first finished, the second was stopped by ASHA
        assert rounds[2.0] is not None  # the third got workers
        left = [group["state"] for group in ray.util.placement_group_table().values() if group["state"] != "REMOVED"]
        assert left == []
    finally:
        ray.shutdown()


def test_trials_asking_for_gpus_a_cluster_lacks_are_said_to_wait():
    """A sweep with gpus_per_worker 1 on a machine without a GPU showed its trials RUNNING and did nothing."""
    from ray_spider.tune import no_gpu_warning

    assert "resources.gpus_per_worker=0" in no_gpu_warning(1, 0) and "has 0:" in no_gpu_warning(1, 0)
    assert no_gpu_warning(0.5, 0) is not None
    assert no_gpu_warning(1, 1) is None and no_gpu_warning(0, 0) is None


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a GPU")
def test_a_sweep_asking_for_gpus_this_machine_lacks_is_one_error_before_anything_starts(tmp_path):
    """With its own local Ray cluster a sweep whose trials ask for a GPU on a machine without one only
    warned, then kept every trial pending forever (Ctrl-C the only way out): now one error, as `train`
    gives, before Ray starts or the experiment folder is made."""
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    result = subprocess.run([sys.executable, "-m", "ray_spider", "sweep", "sweeps/sweep_smoke_cpu.yaml", f"storage={tmp_path}",
                             "resources.gpus_per_worker=0.5"], capture_output=True, text=True, timeout=120, env={**env, "RAY_ADDRESS": "local"})
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    said = " ".join(result.stderr.split())
    assert "resources.gpus_per_worker=0.5 with resources.workers=1 needs 0.5 GPU(s), and this machine has 0" in said
    assert "resources.gpus_per_worker=0 (CPU)" in said
    assert list(tmp_path.iterdir()) == []


def free_ports(count: int) -> list[int]:
    """Ports no process listens on now (held open together, so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


# Ray enables token authentication by default once a token exists in ~/.ray (any local ray.init
# writes one), and then a driver joining with RAY_ADDRESS is refused unless it is in token mode too:
# the private head and the drivers that join it are told the same mode.
PRIVATE_RAY_ENV = {"RAY_AUTH_MODE": "disabled"}
# On SIGTERM `ray start --block` drains the node for 30 s by default: nothing to drain here.
RAY_HEAD_ENV = {**PRIVATE_RAY_ENV, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}


@contextlib.contextmanager
def private_ray_cluster(num_cpus: int):
    """A Ray head of this test only: its own temp dir and free ports (Ray's defaults would join or
    collide with any other cluster on the host), stopped by the ids of the processes it started,
    never by `ray stop` (which ends every Ray process on the host). Yields the GCS address and the head process."""
    gcs, node_manager, object_manager, client, agent, agent_grpc, env_agent, metrics, workers = free_ports(9)
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    log = Path(f"{temp_dir}.log")
    with log.open("w") as output:
        head = subprocess.Popen(
            [
                sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", f"--num-cpus={num_cpus}",
                "--node-ip-address=127.0.0.1", f"--port={gcs}", f"--node-manager-port={node_manager}",
                f"--object-manager-port={object_manager}", f"--ray-client-server-port={client}",
                f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
                f"--runtime-env-agent-port={env_agent}", f"--metrics-export-port={metrics}",
                f"--min-worker-port={workers}", f"--max-worker-port={workers + 50}",
                "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}",
            ],
            stdout=output, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **RAY_HEAD_ENV},
        )
    address = f"127.0.0.1:{gcs}"
    try:
        try:
            wait_for(lambda: Path(temp_dir, "ray_current_cluster").is_file(), 120, "the private Ray head", head)
        except AssertionError as error:  # say why: `ray start` names the process that failed, its logs say more
            logs = [log, *sorted(Path(temp_dir).glob("session_*/logs/*.err"))]
            raise AssertionError("\n".join([str(error), *(f"{path.name}: {path.read_text()[-1500:]}" for path in logs if path.stat().st_size)])) from None
        yield address, head
    finally:
        started = [head, *psutil.Process(head.pid).children(recursive=True)] if head.poll() is None else []
        head.terminate()  # `ray start --block` ends its raylet, GCS and workers on SIGTERM
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        for process in started[1:]:
            with contextlib.suppress(psutil.Error):
                process.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)
        log.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def ray_cluster() -> SimpleNamespace:
    """A running 2-CPU Ray cluster of this module, shared by the tests below whose sweeps join it
    (RAY_ADDRESS) instead of starting a local Ray each: its address, its head process and the
    environment of a sweep that joins it."""
    with private_ray_cluster(num_cpus=2) as (address, head):
        yield SimpleNamespace(address=address, head=head, env={**os.environ, **PRIVATE_RAY_ENV, "RAY_ADDRESS": address})


TIED = ["base.train.max_steps=3", "base.train.eval_every_steps=1", "base.train.keep_checkpoints=2"]


@pytest.fixture(scope="module")
def unlimited_tied_sweep(ray_cluster, tiny_dir, spider_dir, tmp_path_factory) -> dict:
    """One sweep, run once for two tests: max_concurrent_trials: null on the 2-CPU cluster, 2 trials of
    three dev rounds each that tie (a random tiny model scores 0 each time), two checkpoints kept."""
    storage = tmp_path_factory.mktemp("unlimited-tied") / "first"
    command = sweep_command(storage, tiny_dir, 2, "max_concurrent_trials=null", *TIED)
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=ray_cluster.env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {"command": command, "result": result, "storage": storage, "experiment": storage / "sweep-smoke-cpu"}


def test_unlimited_sweep_runs_as_many_trials_as_the_cluster_fits(unlimited_tied_sweep, ray_cluster):
    """max_concurrent_trials: null: the same sweep file runs more trials at once on a bigger cluster.
    On a running 2-CPU Ray cluster two trials (1 CPU each) train side by side: the trial functions
    reserve no CPU (with 0.01 CPU each, the second trial's worker waited for the first)."""
    result, experiment = unlimited_tied_sweep["result"], unlimited_tied_sweep["experiment"]
    port = ray_cluster.address.rsplit(":", 1)[1]
    assert re.search(rf"joined the Ray cluster at [\d.]+:{port} \(\$RAY_ADDRESS", result.stderr)
    spans = []
    for path in experiment.glob("trial_*/result.json"):
        last = json.loads(path.read_text().splitlines()[-1])
        spans.append((last["timestamp"] - last["time_total_s"], last["timestamp"]))
    assert len(spans) == 2
    (_, first_end), (second_start, _) = sorted(spans)
    assert second_start < first_end  # the second trial started before the first one ended


def test_best_after_tied_rounds_a_taken_name_and_a_moved_experiment(unlimited_tied_sweep, ray_cluster, tmp_path):
    """Each trial: three dev rounds that tie (a random tiny model scores 0 each time), two kept: Ray
    deletes the earliest tied checkpoint, and `best` must name one that exists. Running the sweep
    again under the same name is refused before Ray starts; the experiment copied elsewhere (its
    recorded checkpoint paths then point at the old place) still gives `trials` and `best`."""
    command, result = unlimited_tied_sweep["command"], unlimited_tied_sweep["result"]
    storage, experiment = unlimited_tied_sweep["storage"], unlimited_tied_sweep["experiment"]
    rows = pq.read_table(experiment / "trials.parquet").to_pylist()
    assert len(rows) == 2
    for row in rows:
        assert row["eval_rounds"] == 3 and len(set(row["curve_dev_ex"])) == 1  # tied
        assert Path(row["checkpoint_uri"]).is_dir() and row["best_step"] > 1  # the earliest tied round's was deleted
    # The workers' output is in the trial's folder; the terminal keeps Tune's tables, not Ray's actors' noise.
    logs = list(experiment.glob("trial_*/train.log"))
    assert len(logs) == 2 and all("train_runtime" in log.read_text() for log in logs)
    assert "(RayTrainWorker" not in result.stdout + result.stderr and "train_runtime" not in result.stdout + result.stderr
    assert "trial logs:" in result.stderr

    again = subprocess.run(command, capture_output=True, text=True, timeout=120, env=ray_cluster.env)
    assert again.returncode == 2 and "already exists" in again.stderr and "--resume" in again.stderr and "--overwrite" in again.stderr
    assert "Traceback" not in again.stderr and "Ray" not in again.stdout

    moved = tmp_path / "elsewhere" / "sweep-smoke-cpu"
    shutil.copytree(experiment, moved)
    away = tmp_path / "away"
    shutil.move(storage, away)  # nothing left where the checkpoints were recorded (put back below for the other tests)
    try:
        listed, fetched = cli_together(("trials", str(moved)), ("best", str(moved), "--out", str(tmp_path / "best")))
    finally:
        shutil.move(away, storage)
    assert listed.returncode == 0, listed.stderr[-3000:]
    assert fetched.returncode == 0, fetched.stderr[-3000:]
    assert (tmp_path / "best" / "adapter_model.safetensors").is_file()


def trial_worker(root: int, trial_id: str) -> psutil.Process | None:
    """The Ray Train worker of one trial (under process `root`): the one whose output goes to that trial's train.log."""
    log = f"trial_{trial_id}/train.log"
    for worker in train_workers(root):
        with contextlib.suppress(psutil.Error):
            if any(file.path.endswith(log) for file in worker.open_files()):
                return worker
    return None


def test_killed_trial_is_retried_and_resumes_from_its_last_checkpoint(ray_cluster, tiny_dir, spider_dir, tmp_path):
    """A trial whose training process dies mid-run is retried by Tune, and the retry goes on from the
    trial's latest checkpoint (adapter, optimizer, scheduler, data position) in the same Train run
    folder: its dev rounds continue where they stopped instead of starting again at step 2. The two
    trials train side by side on the module's 2-CPU cluster (one CPU each): the one killed is found
    by its trial's log; the other is not retried and keeps its own Train run folder."""
    log = tmp_path / "sweep.log"
    experiment = tmp_path / "relative" / "storage" / "sweep-smoke-cpu"
    # 8 steps, a dev round every 2: the kill lands after the first round and before the last
    command = sweep_command("relative/storage", tiny_dir, 2, "base.train.max_steps=8", "max_concurrent_trials=null")  # storage relative to where it runs

    def a_first_round():  # (trial id, its steps so far, its Train worker) of a trial that reported a dev round
        for trial_id, steps in reported_steps(experiment).items():
            worker = trial_worker(ray_cluster.head.pid, trial_id) if steps else None
            if worker:
                return trial_id, steps, worker
        return None

    process = start(command, log, cwd=tmp_path, env=ray_cluster.env)
    killed, first, victim = wait_for(a_first_round, 600, "a first dev round", process, poll_s=0.1)
    victim.kill()  # a real crash of the trial's training process, mid-training
    assert process.wait(timeout=900) == 0, log.read_text()[-3000:]
    rows = pq.read_table(experiment / "trials.parquet").to_pylist()
    assert len(rows) == 2 and all(row["status"] == "TERMINATED" for row in rows)
    assert sum(row["retries"] for row in rows) == 1
    for row in rows:
        assert row["best_dev_ex"] is not None
        assert len(row["curve_dev_ex"]) == len(row["curve_dev_em"]) == len(row["curve_steps"]) == row["eval_rounds"] > 0
        assert Path(row["checkpoint_uri"]).parent.parent == experiment / "train_runs"  # kept in the sweep's storage
    # One Train run folder per trial, named by the trial: the retry used its trial's folder.
    assert sorted(path.name for path in (experiment / "train_runs").iterdir() if path.is_dir()) == sorted(row["trial_id"] for row in rows)
    worker_logs = "".join(path.read_text() for path in experiment.glob("trial_*/train.log"))  # the retry appends to its trial's
    (resumed,) = [int(step) for step in re.findall(r"resuming from the checkpoint of step (\d+)", worker_logs)]
    assert resumed >= first[-1] >= 2
    retried = next(row for row in rows if row["retries"])
    assert retried["trial_id"] == killed
    assert retried["curve_steps"] == [2, 4, 6, 8]  # no round repeated: the retry went on from step `resumed`


def test_a_sweep_whose_trials_all_fail_exits_non_zero_with_the_first_error(ray_cluster, tiny_dir, spider_dir, tmp_path):
    broken = tmp_path / "broken-model"  # passes every check before Ray (config.json is fine); each trial fails loading it
    shutil.copytree(tiny_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    # On the module's 2-CPU cluster, both trials at once: their failures are not waited for one after the other.
    command = sweep_command(tmp_path, str(broken), 2, "trial_retries=0", "max_concurrent_trials=null")
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=ray_cluster.env)
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert "all 2 trials of sweep-smoke-cpu failed" in result.stderr and "deserializing header" in result.stderr


def test_ctrl_c_stops_a_sweep_with_its_state_kept_for_resume(ray_cluster, tiny_dir, spider_dir, tmp_path):
    """Tune answers SIGINT by saving its state and returning from fit() as if done; the sweep must
    still end as interrupted (exit 130) and say how to continue."""
    process = start(sweep_command(tmp_path, tiny_dir, 2, "base.train.max_steps=1000"), tmp_path / "sweep.log", env=ray_cluster.env)
    wait_for(lambda: list((tmp_path / "sweep-smoke-cpu").glob("trial_*")), 600, "a trial to start", process, poll_s=0.2)
    time.sleep(5)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=300) == 130, (tmp_path / "sweep.log").read_text()[-3000:]
    log = " ".join((tmp_path / "sweep.log").read_text().split())
    assert "interrupted: the sweep stopped with 0 of 2 trials finished" in log and "--resume" in log
    assert "Tuner.restore" not in log  # Tune's own way to resume, which the CLI does not take
    assert "Failed to fetch metrics" not in log  # Tune's alarm for a trial stopped before its first report
