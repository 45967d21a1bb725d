"""`python -m ray_spider` = the `ray-spider` command."""

import os
import signal
import sys

BEFORE_START = b"interrupted: before the command started; nothing was done\n"


def _exit_before_start(signum, frame) -> None:
    """Ctrl-C or SIGTERM while the CLI imports: nothing has been done, so the process ends here and
    now, exit 130, without raising KeyboardInterrupt into half-run imports (pydantic wraps one raised
    while it builds a model class in a RuntimeError: a traceback and exit 1)."""
    os.write(sys.stderr.fileno(), BEFORE_START)
    os._exit(130)


def main() -> None:
    """The `ray-spider` entry point. A Ctrl-C before a command runs (while the CLI's modules import and
    typer builds the commands: seconds on a busy machine) ends like one inside a command: one
    `interrupted:` line and exit 130 (cli.INTERRUPTED), not a traceback. Inside a command,
    cli.GuardedGroup handles it. SIGTERM is handled as Ctrl-C (errors.stop_on_sigterm_as_on_ctrl_c).
    A SIGINT that the shell set to be ignored (a background `nohup` job) stays ignored. OpenMP
    threads wait passively (OMP_WAIT_POLICY, unless set)."""
    # OpenMP threads that spin-wait collapse when the cores are shared: on 2 busy cores, predict's 2
    # threads generated 12 tokens for 8 questions in 163 s against 26-31 s passive (docs/benchmarks.md).
    # Read when torch loads OpenMP, so before any import of it; Ray's workers inherit it. A value the
    # user set is kept.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sigint_ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if not sigint_ignored:
        signal.signal(signal.SIGINT, _exit_before_start)
    signal.signal(signal.SIGTERM, _exit_before_start)
    from ray_spider.cli import app
    from ray_spider.errors import forget_handled_interrupt, stop_on_sigterm_as_on_ctrl_c

    if not sigint_ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    stop_on_sigterm_as_on_ctrl_c()
    try:
        app(prog_name="ray-spider")
    except KeyboardInterrupt:  # while typer builds the commands, before the command's own handling
        sys.stderr.write(BEFORE_START.decode())
        forget_handled_interrupt()
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
