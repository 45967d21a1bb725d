"""`ray-spider submit` against a real Ray cluster: a head with its dashboard (the Jobs API) on free
ports and S3 storage served by moto on 127.0.0.1, both started once for the module. The submitted
one-trial sweep finishes, `trials` and `best` read its experiment back from S3, also from a copy of
it under another prefix. Every server is stopped by its pid."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from test_sweep import cli_together

ROOT = Path(__file__).resolve().parents[1]
SWEEP_FILE = "sweeps/sweep_smoke_cpu.yaml"
BUCKET = "ray-spider-test"
ONE_TINY_TRIAL = [
    "num_samples=1", "base.train.max_steps=1", "base.train.effective_batch_size=1", "base.train.eval_every_steps=1",
    "base.data.dev_subset=2", "base.data.max_train_examples=4", "base.generation.max_new_tokens=4", "base.model.quantization=none",
]
# Token auth turns itself on for a head when ~/.ray/auth_token exists: the same mode on both sides.
NO_AUTH = {"RAY_AUTH_MODE": "disabled"}


def cli(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ray_spider", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{process.args[:4]} exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"{url} did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen, grace: float) -> None:
    """SIGTERM the server we started (`ray start --block` then stops the processes it started), SIGKILL its group after `grace` s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # its own session (start_new_session): only what it started
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def s3_env(tmp_path_factory) -> dict[str, str]:
    """Environment of an S3 client of a fresh moto server with one bucket, BUCKET."""
    import boto3

    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        wait_for_http(endpoint, process, 60, log)
        env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(Bucket=BUCKET)
        yield {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **env, **NO_AUTH}
    finally:
        stop(process, grace=10)


@pytest.fixture(scope="module")
def ray_head(s3_env, spider_dir, tmp_path_factory) -> str:
    """Dashboard address of a fresh single-node Ray cluster (2 CPUs) whose processes see S3 and Spider."""
    temp_dir = tempfile.mkdtemp(prefix="rs-", dir="/tmp")  # Ray's socket paths must stay short
    dashboard = free_port()
    ports = {
        "--port": free_port(), "--dashboard-port": dashboard, "--ray-client-server-port": free_port(),
        "--dashboard-agent-listen-port": free_port(), "--dashboard-agent-grpc-port": free_port(),
        "--runtime-env-agent-port": free_port(), "--metrics-export-port": free_port(),
        "--node-manager-port": free_port(), "--object-manager-port": free_port(),
    }
    env = {
        **s3_env, "SPIDER_DIR": str(spider_dir), "PYTHONUNBUFFERED": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",  # on SIGTERM Ray drains the node for 30 s by default; nothing to drain here
    }
    log = tmp_path_factory.mktemp("ray-head") / "ray_head.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--num-cpus=2", "--dashboard-host=127.0.0.1",
         "--include-dashboard=true", "--disable-usage-stats", f"--temp-dir={temp_dir}", *[f"{flag}={port}" for flag, port in ports.items()]],
        stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    try:
        address = f"http://127.0.0.1:{dashboard}"
        wait_for_http(f"{address}/api/version", process, 120, log)
        yield address
    finally:
        stop(process, grace=60)
        shutil.rmtree(temp_dir, ignore_errors=True)


def wait_for_job(address: str, job_id: str, timeout: float) -> str:
    from ray.job_submission import JobStatus

    from ray_spider.cli import job_client

    client = job_client(address)  # JobSubmissionClient would take conftest's RAY_ADDRESS=local over address
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = client.get_job_status(job_id)
        if status.is_terminal():
            return status if status == JobStatus.SUCCEEDED else f"{status}:\n{client.get_job_logs(job_id)[-5000:]}"
        time.sleep(0.5)
    client.stop_job(job_id)
    raise AssertionError(f"job {job_id} still running after {timeout:.0f} s:\n{client.get_job_logs(job_id)[-5000:]}")


def test_submit_refuses_a_relative_storage_before_contacting_the_cluster():
    result = cli("submit", SWEEP_FILE, "--address", "http://127.0.0.1:9", env={**os.environ, **NO_AUTH}, timeout=120)
    assert result.returncode == 2
    assert "storage: 'runs/sweeps' is a relative path" in result.stderr and "s3://" in result.stderr


def test_submit_refuses_a_sweep_file_outside_the_uploaded_folder(tmp_path):
    outside = tmp_path / "sweep.yaml"
    shutil.copy(ROOT / SWEEP_FILE, outside)
    result = cli("submit", str(outside), "storage=s3://bucket/sweeps", "--address", "http://127.0.0.1:9", env={**os.environ, **NO_AUTH}, timeout=120)
    assert result.returncode == 2 and "outside the current folder" in result.stderr


def test_checkpoint_paths_follow_a_moved_experiment():
    from ray_spider.storage import checkpoint_in

    written = "/home/me/runs/sweeps/sweep-x/train_runs/abc-1/checkpoint_2026"
    assert checkpoint_in("bucket/copied/sweep-x", written) == "bucket/copied/sweep-x/train_runs/abc-1/checkpoint_2026"
    assert checkpoint_in("bucket/copied/sweep-x", None) is None


@pytest.fixture(scope="module")
def submitted_experiment(ray_head, s3_env, tiny_dir) -> str:
    """URI of the experiment of a one-trial sweep submitted to the head with S3 storage, finished."""
    experiment = f"s3://{BUCKET}/sweeps/sweep-smoke-cpu"
    submitted = cli(
        "submit", SWEEP_FILE, f"storage=s3://{BUCKET}/sweeps", f"base.model.name={tiny_dir}", *ONE_TINY_TRIAL,
        # --address wins over a RAY_ADDRESS elsewhere (Ray's own client would take the variable)
        "--address", ray_head, env={**s3_env, "RAY_ADDRESS": "http://127.0.0.1:9"}, timeout=120,
    )
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    assert f"experiment: {experiment}" in submitted.stderr  # the full URI, s3:// included
    job_id = re.search(r"submitted (\S+)", submitted.stderr).group(1)
    assert wait_for_job(ray_head, job_id, timeout=420) == "SUCCEEDED"
    return experiment


def bucket(s3_env):
    import pyarrow.fs as pafs

    return pafs.S3FileSystem(endpoint_override=s3_env["AWS_ENDPOINT_URL"], access_key="testing", secret_key="testing", region="us-east-1")


@pytest.mark.slow
def test_submitted_sweep_writes_to_s3_and_best_fetches_its_adapter(submitted_experiment, s3_env, tmp_path):
    import pyarrow.fs as pafs

    experiment = submitted_experiment
    out = tmp_path / "best"
    # best --check-load: base + adapter load with peft
    shown, fetched = cli_together(("trials", experiment), ("best", experiment, "--out", str(out)), env=s3_env)
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "1 trials" in shown.stdout and "TERMINATED" in shown.stdout
    assert f"plot: {experiment}/trials.png" in shown.stderr
    names = {info.base_name for info in bucket(s3_env).get_file_info(pafs.FileSelector(experiment.removeprefix("s3://")))}
    assert {"trials.parquet", "trials.png", "sweep.yaml"} <= names
    assert fetched.returncode == 0, fetched.stderr[-3000:]
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file() and (out / "config.yaml").is_file()


@pytest.mark.slow
def test_trials_and_best_read_a_copied_experiment(submitted_experiment, s3_env, tmp_path):
    """An experiment copied elsewhere (another prefix, as `aws s3 sync` would) still yields its adapter:
    Ray recorded the checkpoints where they were written, `best` finds them under the copy."""
    import pyarrow.fs as pafs

    original, copy = submitted_experiment.removeprefix("s3://"), f"{BUCKET}/copied/sweep-smoke-cpu"
    pafs.copy_files(original, copy, source_filesystem=bucket(s3_env), destination_filesystem=bucket(s3_env))
    bucket(s3_env).delete_dir(original)  # only the copy is left (put back below for the other tests)
    try:
        shown, fetched = cli_together(("trials", f"s3://{copy}"), ("best", f"s3://{copy}", "--out", str(tmp_path / "best"), "--no-check-load"), env=s3_env)
    finally:
        pafs.copy_files(copy, original, source_filesystem=bucket(s3_env), destination_filesystem=bucket(s3_env))
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "1 trials" in shown.stdout and f"plot: s3://{copy}/trials.png" in shown.stderr
    assert fetched.returncode == 0, fetched.stderr[-3000:]
    assert (tmp_path / "best" / "adapter_model.safetensors").is_file()


def test_submit_address_defaults_to_a_dashboard_url_from_the_environment(monkeypatch):
    from ray_spider.cli import DEFAULT_DASHBOARD, dashboard_address
    from ray_spider.errors import UserError

    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "local")  # names a cluster to start, not a dashboard
    assert dashboard_address() == DEFAULT_DASHBOARD
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")
    assert dashboard_address() == "http://head:8265"
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://api:8265")
    assert dashboard_address() == "http://api:8265"
    assert dashboard_address("https://given:443") == "https://given:443"  # --address wins
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "api:8265")  # no scheme: was passed over without a word
    with pytest.raises(UserError, match=r"\$RAY_API_SERVER_ADDRESS 'api:8265' is not a dashboard URL"):
        dashboard_address()
    with pytest.raises(UserError, match=r"--address '' is not a dashboard URL"):  # an empty --address "$UNSET" used the default
        dashboard_address("")
