"""The user-error family: every mistake a user can fix (a path, a file's contents, a config key, a
model or adapter folder, an output folder) raises a ``UserError`` naming the file/key/value and what
would be valid. The CLI catches the family in one place (``cli.GuardedGroup``), together with the
evaluator's ``EvalInputError`` (the evaluator package stands alone and imports nothing from here),
and prints one ``error:`` line with exit status 2; anything else is a bug and keeps its traceback.

    raise UserError(f"{path}: not valid JSON ({exc})")
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


class UserError(Exception):
    """Bad user input; the message alone tells the user what to change."""


class OutputPathError(UserError):
    """An output path would overwrite an input or cannot be written."""


def check_output(
    path: str | Path, inputs: tuple = (), what: str = "output", allow_existing_dir: bool = False, empty_dir: bool = False,
) -> Path:
    """Raise ``OutputPathError`` unless ``path`` can be written without harm: not one of ``inputs``
    (compared after resolving links), not an existing folder where a file goes (or an existing file
    where a folder goes), with ``empty_dir`` not a folder that already holds files (its files would
    mix with the new ones), and under a parent that is (or can become) a folder. Call it before any
    work starts, so a bad output path never costs a generation or a training run."""
    path = Path(path)
    resolved = path.expanduser().resolve()
    for given in inputs:
        if given is not None and Path(given).expanduser().resolve() == resolved:
            raise OutputPathError(f"{what} {path} is also an input; choose another path (inputs are never overwritten)")
    if allow_existing_dir:
        if resolved.exists() and not resolved.is_dir():
            raise OutputPathError(f"{what} {path} is a file; give a folder")
        if empty_dir and resolved.is_dir() and any(resolved.iterdir()):
            raise OutputPathError(f"{what} {path} already holds files; give a new or empty folder (the files written there must not mix with others)")
    elif resolved.is_dir():
        raise OutputPathError(f"{what} {path} is a folder; give a file path")
    for parent in resolved.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputPathError(f"{what} {path}: {parent} is a file, not a folder")
            if not _writable(parent):
                raise OutputPathError(f"{what} {path}: {parent} is not writable")
            break
    return path


def write_atomically(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file renamed into place: an interruption leaves
    the old file or the whole new one, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    partial.replace(path)


def _writable(folder: Path) -> bool:
    """Whether a folder can be made in ``folder``: tried, not read from the mode bits, which say yes
    to root everywhere (e.g. under /proc, where no folder can be made)."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".ray-spider-probe-", dir=folder))
    except OSError:
        return False
    return True


def stop_on_sigterm_as_on_ctrl_c() -> None:
    """From now on SIGTERM (`ray job stop`, `docker stop`, a scheduler's preemption) ends a command as
    Ctrl-C does: the command's own interrupt handling runs (a training removes its unfinished run
    folder, a sweep saves its state for --resume, scoring stops its queries) and the exit status is
    130. The signal is passed on as SIGINT to whatever handler holds SIGINT then (scoring installs
    its own); where SIGINT is ignored or at the OS default, KeyboardInterrupt is raised directly, so
    SIGTERM never goes unanswered. Main thread only (Python's rule); ``ray.init`` sets its own
    SIGTERM handler (sys.exit), so ``train.start_ray`` calls this again after it."""
    import signal
    import threading

    def forward(signum, frame):
        if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.SIG_DFL, None):
            raise KeyboardInterrupt
        signal.raise_signal(signal.SIGINT)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, forward)


def forget_handled_interrupt() -> None:
    """Call after a KeyboardInterrupt has been handled, before exiting with status 130.

    CPython remembers a KeyboardInterrupt that escaped an ``eval``/``exec`` of a string (typer
    evaluates annotations that way, dataclasses build their methods that way) in a process-wide
    flag. At exit, under ``python -m`` and console scripts, it then kills the process with SIGINT
    (status -2) even though the interrupt was handled and ``SystemExit(130)`` raised. Any later
    string evaluation clears the flag (``run_eval_code_obj`` in CPython's Python/pythonrun.c,
    3.8 to 3.13)."""
    eval("None")
