"""`python -m ray_spider` = the `ray-spider` command."""

import sys


def main() -> None:
    """The `ray-spider` entry point. A Ctrl-C before a command runs (while the CLI's modules import and
    typer builds the commands: seconds on a busy machine) ends like one inside a command: one
    `interrupted:` line and exit 130 (cli.INTERRUPTED), not a traceback. Inside a command,
    cli.GuardedGroup handles it. SIGTERM is handled as Ctrl-C (errors.stop_on_sigterm_as_on_ctrl_c)."""
    from ray_spider.errors import stop_on_sigterm_as_on_ctrl_c

    stop_on_sigterm_as_on_ctrl_c()
    try:
        from ray_spider.cli import app

        app(prog_name="ray-spider")
    except KeyboardInterrupt:
        print("interrupted: before the command started; nothing was done", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
