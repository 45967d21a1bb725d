"""Scoring predictions: EX (execution match) and EM (Spider exact set match), per hardness level.

Same contract as the official evaluators, so any Spider user can use it:

    ray-spider eval --gold dev_gold.sql --pred preds.sql --db database/ --table tables.json [--json]

GOLD holds ``SQL<TAB>db_id`` lines, PRED one predicted SQL per line in the same order (an empty
line is an empty prediction). Pairs whose database file is missing are skipped and reported, never
scored against an empty database. A gold query that fails to execute is a data error: reported
loudly and left out of the scores. Predictions never raise: errors and timeouts count as wrong.
Scoring runs in a process pool (one SQLite connection and parser cache per process).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.progress import Progress
from rich.table import Table

from ray_spider.evaluation.exact_match import ExactMatcher
from ray_spider.evaluation.execution import GoldQueryError, execution_match, interrupts_recorded
from ray_spider.errors import UserError

HARDNESS_LEVELS = ("easy", "medium", "hard", "extra")
ERROR_TYPES = ("no_sql", "syntax_error", "unknown_table_or_column", "wrong_result", "timeout", "error")
CHUNK = 16
# The pool's default size: all cores, at most this many. Forking a worker from a process that holds
# a model on the GPU (predict, the dev rounds in training) costs more than it scores: on a 32-core
# H200 host dev-972 scored in 0.43 s with 8 workers and 0.80-0.85 s with 32 (docs/benchmarks.md).
DEFAULT_MAX_WORKERS = 8


class EvalInputError(UserError, ValueError):
    """A gold or prediction file is malformed; the message names the file and line."""


@dataclass(frozen=True)
class GoldQuery:
    sql: str
    db_id: str


@dataclass
class ExampleScore:
    index: int
    db_id: str
    hardness: str
    ex: bool
    em: bool
    pred_status: str  # execution.QueryOutcome.status of the prediction
    error_type: str | None  # None when EX is right, else one of ERROR_TYPES
    gold: str
    pred: str
    pred_error: str | None = None


@dataclass
class Report:
    scores: list[ExampleScore]
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (index, db_id) with no database
    data_errors: list[tuple[int, str, str]] = field(default_factory=list)  # (index, db_id, message)

    def summary(self) -> dict:
        def rates(scores: list[ExampleScore]) -> dict:
            n = len(scores)
            return {"n": n, "ex": sum(s.ex for s in scores) / n if n else 0.0, "em": sum(s.em for s in scores) / n if n else 0.0}

        return {
            **rates(self.scores),
            "by_hardness": {level: rates([s for s in self.scores if s.hardness == level]) for level in HARDNESS_LEVELS},
            "error_types": dict(Counter(s.error_type for s in self.scores if s.error_type)),
            "skipped_missing_db": len(self.skipped),
            "skipped_db_ids": sorted({db_id for _, db_id in self.skipped}),
            "gold_errors": len(self.data_errors),
        }


def read_text_lines(path: str | os.PathLike, what: str) -> str:
    """The text of a UTF-8 file, a leading byte-order mark dropped (editors on Windows write one; it
    would be read as part of the first query). EvalInputError naming the file and line otherwise."""
    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"{what} not found: {path}" + (" (it is a folder)" if path.is_dir() else ""))
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise EvalInputError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); save the {what} as UTF-8") from None


def read_gold_file(path: str | os.PathLike) -> list[GoldQuery]:
    path = Path(path)
    golds = []
    for number, line in enumerate(read_text_lines(path, "gold file").splitlines(), start=1):
        if not line.strip():
            continue
        sql, sep, db_id = line.rstrip().rpartition("\t")
        if not sep or not sql.strip() or not db_id.strip():
            raise EvalInputError(f"{path}:{number}: expected 'SQL<TAB>db_id', got {line[:80]!r}")
        golds.append(GoldQuery(sql.strip(), db_id.strip()))
    return golds


def read_pred_file(path: str | os.PathLike) -> list[str]:
    lines = read_text_lines(path, "prediction file").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the file's final newline ends the last line; it is not an empty prediction
    # As both official evaluators read it: a tab ends the SQL (so dev_gold.sql itself is a valid PRED).
    return [line.split("\t")[0].strip() for line in lines]


TABLE_KEYS = ("db_id", "table_names_original", "column_names_original", "column_types", "primary_keys", "foreign_keys")


def read_tables_file(path: str | os.PathLike) -> dict[str, dict]:
    """db_id -> schema entry of a Spider tables.json; EvalInputError naming the file and what is wrong
    (not JSON, a truncated file, or another Spider file such as dev.json)."""
    path = Path(path)
    text = read_text_lines(path, "tables file")
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EvalInputError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); --table takes Spider's tables.json") from None
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise EvalInputError(f"{path}: expected a JSON list of database schemas (Spider's tables.json), got {type(entries).__name__}")
    for position, entry in enumerate(entries):
        missing = [key for key in TABLE_KEYS if key not in entry]
        if missing:
            raise EvalInputError(
                f"{path}: entry {position} is not a database schema: it lacks {', '.join(missing)} "
                f"(has {', '.join(list(entry)[:6])}); --table takes Spider's tables.json"
            )
    return {entry["db_id"]: entry for entry in entries}


def check_inputs(golds: list[GoldQuery], db_dir: Path, tables_json: Path) -> None:
    """Raise EvalInputError when the inputs cannot give a true score: a tables file that is not one,
    a gold db_id it does not describe, or a database folder holding none of the gold databases (an
    all-skipped, all-zero table would look like a result). A db_id described in tables.json whose
    .sqlite file is absent is not an error: it is skipped and reported (Spider ships dev without wta_1)."""
    if not db_dir.is_dir():
        raise EvalInputError(f"database folder not found: {db_dir}")
    tables = read_tables_file(tables_json)
    db_ids = sorted({gold.db_id for gold in golds})
    unknown = [db_id for db_id in db_ids if db_id not in tables]
    if unknown:
        raise EvalInputError(
            f"{len(unknown)} gold db_id(s) are not in {tables_json}: {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''} "
            f"(is --table the tables.json of the gold file's Spider release?)"
        )
    if db_ids and not any(database_file(db_dir, db_id).is_file() for db_id in db_ids):
        nested = db_dir / "database"
        hint = f"; did you mean --db {nested}?" if nested.is_dir() else ""
        raise EvalInputError(
            f"--db {db_dir} holds none of the {len(db_ids)} gold databases: expected {db_dir}/<db_id>/<db_id>.sqlite, "
            f"e.g. {database_file(db_dir, db_ids[0])}{hint}"
        )


def database_file(db_dir: Path, db_id: str) -> Path:
    """Spider's layout: DB_DIR/<db_id>/<db_id>.sqlite."""
    return db_dir / db_id / f"{db_id}.sqlite"


def error_type(ex: bool, pred_status: str) -> str | None:
    if ex:
        return None
    if pred_status in ("ok", "too_many_rows"):
        return "wrong_result"
    return pred_status if pred_status in ERROR_TYPES else "error"


class _Scorer:
    """Scores one (gold, pred) pair; one instance per process keeps the parsed schemas cached."""

    def __init__(self, db_dir: Path, tables_json: Path, timeout_s: float):
        self.db_dir = db_dir
        self.matcher = ExactMatcher(db_dir, tables_json)
        self.timeout_s = timeout_s

    def __call__(self, index: int, gold: GoldQuery, pred: str) -> ExampleScore | tuple[int, str, str]:
        db_path = database_file(self.db_dir, gold.db_id)
        try:
            # The test-suite evaluator runs every prediction with "value" replaced by "1" (a leftover
            # of value-less predictions); EX does the same so the two agree per example.
            ex, outcome = execution_match(db_path, gold.sql, pred.replace("value", "1"), timeout_s=self.timeout_s)
            hardness = self.matcher.hardness(gold.sql, gold.db_id)
        except (GoldQueryError, ValueError) as exc:
            return (index, gold.db_id, str(exc))
        em = self.matcher.match(gold.sql, pred, gold.db_id) if pred else False
        return ExampleScore(
            index, gold.db_id, hardness, ex, em, outcome.status, error_type(ex, outcome.status), gold.sql, pred, outcome.error
        )


_process_scorer: _Scorer | None = None


def _init_process(db_dir: Path, tables_json: Path, timeout_s: float) -> None:
    global _process_scorer
    _process_scorer = _Scorer(db_dir, tables_json, timeout_s)


def _score_chunk(chunk: list[tuple[int, GoldQuery, str]]) -> list:
    return [_process_scorer(*item) for item in chunk]


def score(
    golds: list[GoldQuery],
    preds: list[str],
    db_dir: str | os.PathLike,
    tables_json: str | os.PathLike,
    timeout_s: float = 10.0,
    workers: int | None = None,
    progress: bool = True,
) -> Report:
    """EX and EM of each prediction against its gold query; see the module docstring."""
    if len(golds) != len(preds):
        raise EvalInputError(f"{len(golds)} gold queries but {len(preds)} predictions: the files must have one line per question, in the same order")
    db_dir, tables_json = Path(db_dir), Path(tables_json)
    check_inputs(golds, db_dir, tables_json)
    report = Report(scores=[])
    work = []
    for index, (gold, pred) in enumerate(zip(golds, preds)):
        if database_file(db_dir, gold.db_id).is_file():
            work.append((index, gold, pred))
        else:
            report.skipped.append((index, gold.db_id))
    chunks = [work[start : start + CHUNK] for start in range(0, len(work), CHUNK)]
    workers = min(workers or min(os.cpu_count() or 1, DEFAULT_MAX_WORKERS), max(len(chunks), 1))
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("scoring", total=len(work))
        for results in _map_chunks(chunks, workers, (db_dir, tables_json, timeout_s)):
            for result in results:
                if isinstance(result, ExampleScore):
                    report.scores.append(result)
                else:
                    report.data_errors.append(result)
            bar.advance(task, len(results))
    report.scores.sort(key=lambda s: s.index)
    return report


def _map_chunks(chunks, workers: int, init_args: tuple):
    """Results of each chunk, in order. Ctrl-C stops at once: in-process, the running query is
    interrupted and KeyboardInterrupt raised (``interrupts_recorded``); with a pool the workers
    ignore SIGINT and the parent terminates them (they may be deep in a slow query)."""
    if workers <= 1:
        with interrupts_recorded():
            _init_process(*init_args)
            yield from map(_score_chunk, chunks)
        return
    pool = multiprocessing.Pool(workers, initializer=_init_worker, initargs=init_args)
    try:
        yield from pool.imap(_score_chunk, chunks)
        pool.close()
    finally:
        pool.terminate()  # no-op work left after close(); ends busy workers on Ctrl-C or an error
        pool.join()


def _init_worker(*init_args) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; a worker never half-scores
    _init_process(*init_args)


def summary_table(summary: dict, title: str = "Spider evaluation") -> Table:
    """Count, EX and EM per hardness level and overall, then the wrong predictions by error type.
    A level without questions shows '-' (a rate of nothing is not 0)."""
    table = Table(title=title)
    table.add_column("level")
    for column in ("count", "EX", "EM"):
        table.add_column(column, justify="right")
    for level in (*HARDNESS_LEVELS, "all"):
        row = summary if level == "all" else summary["by_hardness"][level]
        rates = (f"{row['ex']:.3f}", f"{row['em']:.3f}") if row["n"] else ("-", "-")
        table.add_row(level, str(row["n"]), *rates, end_section=level == HARDNESS_LEVELS[-1])
    counts = summary.get("error_types", {})
    wrong = sum(counts.values())
    table.add_section()
    for kind in ERROR_TYPES:
        table.add_row(f"wrong: {kind}", str(counts.get(kind, 0)), "", "")
    table.caption = f"{wrong} of {summary['n']} predictions wrong (EX), by error type"
    return table


def per_example_records(report: Report) -> list[dict]:
    return [asdict(s) for s in report.scores]
