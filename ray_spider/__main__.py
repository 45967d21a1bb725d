"""`python -m ray_spider` = the `ray-spider` command."""

from ray_spider.cli import app

app(prog_name="ray-spider")
