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

import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.progress import Progress
from rich.table import Table

from ray_spider.evaluation.exact_match import ExactMatcher
from ray_spider.evaluation.execution import GoldQueryError, execution_match

HARDNESS_LEVELS = ("easy", "medium", "hard", "extra")
ERROR_TYPES = ("no_sql", "syntax_error", "unknown_table_or_column", "wrong_result", "timeout", "error")
CHUNK = 16
# The pool's default size: all cores, at most this many. Forking a worker from a process that holds
# a model on the GPU (predict, the dev rounds in training) costs more than it scores: on a 32-core
# H200 host dev-972 scored in 0.43 s with 8 workers and 0.80-0.85 s with 32 (docs/benchmarks.md).
DEFAULT_MAX_WORKERS = 8


class EvalInputError(ValueError):
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


def read_gold_file(path: str | os.PathLike) -> list[GoldQuery]:
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
    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"prediction file not found: {path}")
    lines = path.read_text().split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the file's final newline ends the last line; it is not an empty prediction
    # As both official evaluators read it: a tab ends the SQL (so dev_gold.sql itself is a valid PRED).
    return [line.split("\t")[0].strip() for line in lines]


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
    if not db_dir.is_dir():
        raise EvalInputError(f"database folder not found: {db_dir}")
    if not tables_json.is_file():
        raise EvalInputError(f"tables file not found: {tables_json}")
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
    if workers <= 1:
        _init_process(*init_args)
        yield from map(_score_chunk, chunks)
        return
    with ProcessPoolExecutor(workers, initializer=_init_process, initargs=init_args) as pool:
        yield from pool.map(_score_chunk, chunks)


def summary_table(summary: dict, title: str = "Spider evaluation") -> Table:
    table = Table(title=title)
    table.add_column("level")
    for column in ("count", "EX", "EM"):
        table.add_column(column, justify="right")
    for level in (*HARDNESS_LEVELS, "all"):
        row = summary if level == "all" else summary["by_hardness"][level]
        table.add_row(level, str(row["n"]), f"{row['ex']:.3f}", f"{row['em']:.3f}")
    return table


def per_example_records(report: Report) -> list[dict]:
    return [asdict(s) for s in report.scores]
