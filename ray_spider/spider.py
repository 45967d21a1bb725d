"""Spider 1.0 loading: questions, gold SQL, table schemas and database files.

The Spider folder comes from ``--spider-dir`` or ``$SPIDER_DIR``. Questions whose database file
is missing (wta_1 in dev here, hence "dev-972") are kept for training (their schema is in
tables.json) but skipped for anything that executes SQL; callers report how many.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from ray_spider.errors import UserError
from ray_spider.evaluation.inputs import database_file

SPLIT_FILES = {"train": "train_spider.json", "train_others": "train_others.json", "dev": "dev.json"}


class SpiderError(UserError, ValueError):
    """Spider files are missing or malformed; the message names the path."""


@dataclass(frozen=True)
class Example:
    split: str
    index: int  # position in the split's JSON file
    db_id: str
    question: str
    query: str | None  # gold SQL; None for a user's question asked without one (`predict --questions`)


def resolve_spider_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The Spider folder: the explicit argument, else $SPIDER_DIR; checked for tables.json."""
    raw = explicit or os.environ.get("SPIDER_DIR")
    if not raw:
        raise SpiderError("no Spider folder given: set SPIDER_DIR or pass data.spider_dir=DIR (or --spider-dir DIR where offered) to the folder holding tables.json")
    path = Path(raw).expanduser()
    if not (path / "tables.json").is_file():
        raise SpiderError(f"{path} is not a Spider folder: {path / 'tables.json'} not found")
    return path


def _read_json_list(path: Path) -> list[dict]:
    if not path.is_file():
        raise SpiderError(f"Spider file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise SpiderError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise SpiderError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, list):
        raise SpiderError(f"{path}: expected a JSON list, got {type(data).__name__}")
    return data


class Spider:
    """One Spider folder: ``Spider(dir).examples('dev')``, ``.tables[db_id]``, ``.db_path(db_id)``."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = resolve_spider_dir(root)

    @cached_property
    def tables(self) -> dict[str, dict]:
        path = self.root / "tables.json"
        tables = {}
        for position, entry in enumerate(_read_json_list(path)):
            missing = {"db_id", "table_names_original", "column_names_original", "column_types", "primary_keys", "foreign_keys"} - set(entry)
            if missing:
                raise SpiderError(f"{path}: entry {position} lacks keys {sorted(missing)}")
            tables[entry["db_id"]] = entry
        return tables

    def examples(self, split: str) -> list[Example]:
        if split not in SPLIT_FILES:
            raise SpiderError(f"unknown split {split!r}; valid: {', '.join(SPLIT_FILES)}")
        path = self.root / SPLIT_FILES[split]
        examples = []
        for index, entry in enumerate(_read_json_list(path)):
            try:
                examples.append(Example(split, index, entry["db_id"], entry["question"], entry["query"]))
            except (KeyError, TypeError) as exc:
                raise SpiderError(f"{path}: entry {index} lacks db_id/question/query ({exc!r})") from None
            if entry["db_id"] not in self.tables:
                raise SpiderError(f"{path}: entry {index} uses db_id {entry['db_id']!r}, which tables.json does not describe")
        return examples

    def check(self, splits: tuple[str, ...] = ("dev",)) -> None:
        """Read tables.json and these splits' files now, so that a missing or malformed one is named
        before Ray starts or a model loads; dev must have databases to score against."""
        for split in splits:
            examples = self.examples(split)
            if split == "dev" and examples and not self.executable(examples)[0]:
                raise SpiderError(
                    f"{self.root / 'database'} holds none of the dev databases (expected database/<db_id>/<db_id>.sqlite, "
                    f"e.g. {self.db_path(examples[0].db_id)})"
                )

    def db_path(self, db_id: str) -> Path:
        """database/<db_id>/<db_id>.sqlite (the layout's owner: evaluation.inputs.database_file)."""
        return database_file(self.root / "database", db_id)

    def has_database(self, db_id: str) -> bool:
        return self.db_path(db_id).is_file()

    def executable(self, examples: list[Example]) -> tuple[list[Example], list[Example]]:
        """Split examples into (database present, database missing)."""
        present = [e for e in examples if self.has_database(e.db_id)]
        missing = [e for e in examples if not self.has_database(e.db_id)]
        return present, missing
