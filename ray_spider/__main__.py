"""`python -m ray_spider` = the `ray-spider` command."""

import sys


def main() -> None:
    """The `ray-spider` entry point. A Ctrl-C while the CLI's modules import (seconds on a busy
    machine, before any command runs) ends like one inside a command: one `interrupted:` line and
    exit 130 (cli.INTERRUPTED), not a traceback."""
    try:
        from ray_spider.cli import app
    except KeyboardInterrupt:
        print("interrupted: before the command started; nothing was done", file=sys.stderr)
        raise SystemExit(130) from None
    app(prog_name="ray-spider")


if __name__ == "__main__":
    main()
