"""What the evaluator reads, in the official evaluators' contract, and the errors it raises about it.

    golds = read_gold_file("dev_gold.sql")           # [GoldQuery(sql, db_id)], from 'SQL<TAB>db_id' lines
    preds = read_pred_file("pred.sql")               # one SQL per line, same order
    path = database_file(Path("database"), "concert_singer")   # database/concert_singer/concert_singer.sqlite
    with read_only_connection(path) as connection: ...

The one owner of Spider's database layout (``DB_DIR/<db_id>/<db_id>.sqlite``, as both official
evaluators build it) and of opening a database file read-only. Two error types keep two kinds of
bad input apart: ``EvalInputError`` for a malformed file the user passed (the CLI prints it and
exits 2) and ``GoldError`` for gold data that cannot be used (a gold query that does not run or
parse, a db_id without schema): a data bug, reported loudly and left out of the scores.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


class EvalInputError(ValueError):
    """A gold or prediction file is malformed or missing; the message names the file and line."""


class GoldError(RuntimeError):
    """Gold data cannot be used: its query fails to run or parse, or its database or schema is
    missing. A data bug (the Spider copy is broken), reported with db_id and SQL; never raised for
    a prediction. Not a ValueError, so that catching it cannot hide a bug of our own."""


@dataclass(frozen=True)
class GoldQuery:
    sql: str
    db_id: str


def read_gold_file(path: str | os.PathLike) -> list[GoldQuery]:
    """``SQL<TAB>db_id`` per line (blank lines skipped); raises EvalInputError naming file:line."""
    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"gold file not found: {path}")
    golds = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        sql, sep, db_id = line.rstrip().rpartition("\t")
        if not sep or not sql.strip() or not db_id.strip():
            raise EvalInputError(f"{path}:{number}: expected 'SQL<TAB>db_id', got {line[:80]!r}")
        golds.append(GoldQuery(sql.strip(), db_id.strip()))
    return golds


def read_pred_file(path: str | os.PathLike) -> list[str]:
    """One predicted SQL per line (an empty line is an empty prediction)."""
    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"prediction file not found: {path}")
    lines = path.read_text().split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the file's final newline ends the last line; it is not an empty prediction
    # As both official evaluators read it: a tab ends the SQL (so dev_gold.sql itself is a valid PRED).
    return [line.split("\t")[0].strip() for line in lines]


def database_file(db_dir: str | os.PathLike, db_id: str) -> Path:
    """Spider's layout, as the official evaluators build the path: DB_DIR/<db_id>/<db_id>.sqlite."""
    return Path(db_dir) / db_id / f"{db_id}.sqlite"


def _decode_text(raw: bytes) -> str:
    # As the official execution code reads TEXT: invalid UTF-8 bytes are dropped, not an error.
    return raw.decode("utf-8", errors="ignore")


@contextmanager
def read_only_connection(db_path: str | os.PathLike) -> Iterator[sqlite3.Connection]:
    """A connection that sqlite opens read-only (``mode=ro``), closed on exit.

    The URI comes from ``Path.as_uri`` so that a path with '?', '#' or '%' is escaped; mode=ro
    never creates the file (a plain ``connect`` would make an empty database at a wrong path).
    Raises FileNotFoundError when the file is missing: a setup error, which sqlite would report as
    a failing query. Untrusted SQL needs more than this: see ``execution.run_query``.
    """
    db_path = Path(db_path)
    if not db_path.is_file():
        raise FileNotFoundError(f"database file not found: {db_path}")
    connection = sqlite3.connect(db_path.resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None)
    try:
        connection.text_factory = _decode_text
        yield connection
    finally:
        connection.close()
