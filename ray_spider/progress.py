"""A `train` run's progress on the terminal: step, loss, dev EX and ETA in one rich progress bar.

The optimizer steps run in a Ray Train worker, whose output Ray would forward line by line (with
library noise: weight-loading bars, warnings, Ray's own bookkeeping). Instead rank 0 writes its
state to ``progress.json`` in the run folder after every optimizer step (``ProgressFile``, a
transformers callback), the worker's stdout and stderr go to the run's ``train.log``
(``output_to``), and the driver draws the bar from the file (``show_progress``).

    with show_progress(run.path / "progress.json"):
        result = fit(...)
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import TrainerCallback

PROGRESS_FILE = "progress.json"
LOG_FILE = "train.log"


class ProgressFile(TrainerCallback):
    """Rank 0's state after each optimizer step and eval round: step, of how many, last loss, last dev EX."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.state = {"step": 0, "max_steps": None, "loss": None, "dev_ex": None, "dev_step": None}

    def on_train_begin(self, args, state, control, **kwargs):
        self._write(step=state.global_step, max_steps=state.max_steps)

    def on_step_end(self, args, state, control, **kwargs):
        self._write(step=state.global_step, max_steps=state.max_steps)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self._write(loss=float(logs["loss"]))

    def dev_round(self, step: int, dev_ex: float) -> None:
        self._write(dev_ex=dev_ex, dev_step=step)

    def _write(self, **changes) -> None:
        self.state.update(changes)
        partial = self.path.with_name(f".{self.path.name}.partial")
        partial.write_text(json.dumps(self.state))
        partial.replace(self.path)  # the driver never reads half a file


@contextmanager
def output_to(log_file: str | os.PathLike):
    """This process's stdout and stderr (file descriptors 1 and 2, so C extensions and progress bars
    too) appended to ``log_file`` inside the block."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_file, "a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def read_progress(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def progress_text(state: dict) -> str:
    """`loss 0.832 · dev EX 0.250 (step 10)` from a progress.json state; '-' for what is not known yet."""
    loss = f"{state['loss']:.3f}" if state.get("loss") is not None else "-"
    dev = f"{state['dev_ex']:.3f} (step {state['dev_step']})" if state.get("dev_ex") is not None else "-"
    return f"loss {loss} · dev EX {dev}"


@contextmanager
def show_progress(path: str | os.PathLike, console: Console | None = None, interval_s: float = 0.5):
    """A rich progress bar on stderr, redrawn from ``path`` every ``interval_s`` while the block runs
    (Ray start-up and model loading show as 'starting')."""
    path = Path(path)
    console = console or Console(stderr=True)
    columns = (TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[scores]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    stop = threading.Event()
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("training", total=None, scores="starting (Ray, model, data)")

        def poll() -> None:
            while not stop.wait(interval_s):
                state = read_progress(path)
                if state and state.get("max_steps"):
                    bar.update(task, total=state["max_steps"], completed=state["step"], scores=progress_text(state))

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            state = read_progress(path)
            if state and state.get("max_steps"):
                bar.update(task, total=state["max_steps"], completed=state["step"], scores=progress_text(state))
            time.sleep(0)  # let the last refresh through before the bar stops
