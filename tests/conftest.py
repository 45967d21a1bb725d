"""Shared fixtures. Spider comes from $SPIDER_DIR (CI: ../shared/spider); tests that need it skip without it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SPIDER_DIR = os.environ.get("SPIDER_DIR")
needs_spider = pytest.mark.skipif(not SPIDER_DIR, reason="set SPIDER_DIR to the Spider 1.0 folder")


@pytest.fixture(scope="session")
def spider_dir() -> Path:
    if not SPIDER_DIR:
        pytest.skip("set SPIDER_DIR to the Spider 1.0 folder")
    return Path(SPIDER_DIR)


@pytest.fixture(scope="session")
def spider(spider_dir):
    from ray_spider.spider import Spider

    return Spider(spider_dir)
