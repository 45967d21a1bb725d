"""Where sweeps keep their results: a local folder or any pyarrow filesystem (s3://, gs://).

    filesystem, path = storage("runs/sweeps")                 # LocalFileSystem, absolute path
    filesystem, path = storage("s3://bucket/sweeps")          # S3FileSystem, 'bucket/sweeps'
    experiment_uri("runs/sweeps", "sweep-smoke-cpu")          # 'runs/sweeps/sweep-smoke-cpu'

The one owner of the sweep storage layout:

    <storage>/<sweep name>/              the experiment: Tune's state, sweep.yaml, trials.parquet, trials.png
    <storage>/<sweep name>/trial_<id>/   one trial's Tune results
    <storage>/<sweep name>/train_runs/<trial id>/   the trial's Ray Train run: its checkpoints (adapters)
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs

SWEEP_FILE = "sweep.yaml"  # the validated sweep config, written when the sweep starts
TRIALS_FILE = "trials.parquet"
TRIALS_PLOT = "trials.png"
TRAIN_RUNS = "train_runs"


def storage(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path (made absolute) or any URI pyarrow understands."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())
    return pafs.FileSystem.from_uri(uri)


def experiment_uri(storage_uri: str, sweep_name: str) -> str:
    """The experiment of a sweep, as the user names it (`ray-spider trials URI`, `best URI`)."""
    return f"{storage_uri.rstrip('/')}/{sweep_name}"


def experiment_path(storage_uri: str, sweep_name: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) of a sweep's experiment folder."""
    return storage(experiment_uri(storage_uri, sweep_name))


def train_runs_path(experiment: str) -> str:
    """Folder (inside the experiment's filesystem) holding the trials' Ray Train runs."""
    return f"{experiment}/{TRAIN_RUNS}"


def is_local(filesystem: pafs.FileSystem) -> bool:
    return isinstance(filesystem, pafs.LocalFileSystem)
