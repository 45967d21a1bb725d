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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from rich.progress import Progress
from rich.table import Table

from ray_spider.evaluation.exact_match import HARDNESS_LEVELS, ExactMatcher
from ray_spider.evaluation.execution import execution_match, map_in_processes, plug_value_placeholder
from ray_spider.evaluation.inputs import EvalInputError, GoldError, GoldQuery, check_inputs, database_file, read_gold_file, read_pred_file

__all__ = [
    "ERROR_TYPES", "HARDNESS_LEVELS", "DataError", "EvalInputError", "ExampleScore", "GoldQuery", "Rates", "Report",
    "Summary", "per_example_records", "read_gold_file", "read_pred_file", "score", "summary_table",
]

ERROR_TYPES = ("no_sql", "syntax_error", "unknown_table_or_column", "wrong_result", "timeout", "error")
CHUNK = 16
# The pool's default size: all cores, at most this many. Forking a worker from a process that holds
# a model on the GPU (predict, the dev rounds in training) costs more than it scores: on a 32-core
# H200 host dev-972 scored in 0.43 s with 8 workers and 0.80-0.85 s with 32 (docs/benchmarks.md).
DEFAULT_MAX_WORKERS = 8


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


@dataclass(frozen=True)
class DataError:
    """A gold query that could not be used (a GoldError): left out of the scores, reported."""

    index: int
    db_id: str
    message: str


@dataclass(frozen=True)
class Rates:
    """EX and EM rates (0..1) over n scored questions; 0.0 when n is 0."""

    n: int
    ex: float
    em: float

    @classmethod
    def of(cls, scores: list[ExampleScore]) -> Rates:
        n = len(scores)
        return cls(n, sum(s.ex for s in scores) / n if n else 0.0, sum(s.em for s in scores) / n if n else 0.0)


@dataclass(frozen=True)
class Summary(Rates):
    """The scores of a prediction file: overall rates, per hardness level, wrong answers by error type.

    ``to_dict()`` is the JSON of ``ray-spider eval --json`` and of summary.json (keys in this order).
    """

    by_hardness: dict[str, Rates]  # every level of HARDNESS_LEVELS, in that order
    error_types: dict[str, int]  # ERROR_TYPES -> count among the wrong answers (absent: none)
    skipped_missing_db: int  # questions not scored: their database file is missing
    skipped_db_ids: list[str]
    gold_errors: int  # questions left out: their gold query failed (DataError)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Summary:
        """Read back ``to_dict()`` (or a summary.json); keys of a subclass's fields may be absent."""
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        values["by_hardness"] = {level: Rates(**row) for level, row in data["by_hardness"].items()}
        return cls(**values)


@dataclass
class Report:
    scores: list[ExampleScore]
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (index, db_id) with no database
    data_errors: list[DataError] = field(default_factory=list)

    def summary(self) -> Summary:
        return Summary(
            **asdict(Rates.of(self.scores)),
            by_hardness={level: Rates.of([s for s in self.scores if s.hardness == level]) for level in HARDNESS_LEVELS},
            error_types=dict(Counter(s.error_type for s in self.scores if s.error_type)),
            skipped_missing_db=len(self.skipped),
            skipped_db_ids=sorted({db_id for _, db_id in self.skipped}),
            gold_errors=len(self.data_errors),
        )


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

    def __call__(self, index: int, gold: GoldQuery, pred: str) -> ExampleScore | DataError:
        db_path = database_file(self.db_dir, gold.db_id)
        try:
            ex, outcome = execution_match(db_path, gold.sql, plug_value_placeholder(pred), timeout_s=self.timeout_s)
            hardness = self.matcher.hardness(gold.sql, gold.db_id)
        except GoldError as exc:
            return DataError(index, gold.db_id, str(exc))
        em = self.matcher.match(gold.sql, pred, gold.db_id) if pred else False
        return ExampleScore(
            index, gold.db_id, hardness, ex, em, outcome.status, error_type(ex, outcome.status), gold.sql, pred, outcome.error
        )


_process_scorer: _Scorer | None = None


def _init_process(db_dir: Path, tables_json: Path, timeout_s: float) -> None:
    global _process_scorer
    _process_scorer = _Scorer(db_dir, tables_json, timeout_s)


def _score_chunk(chunk: list[tuple[int, GoldQuery, str]]) -> list[ExampleScore | DataError]:
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
    if not timeout_s > 0:
        raise EvalInputError(f"the query timeout must be more than 0 seconds, got {timeout_s:g} (a prediction would time out before it runs)")
    if workers is not None and workers < 1:
        raise EvalInputError(f"scoring workers must be at least 1, got {workers}")
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
        for results in map_in_processes(_score_chunk, chunks, workers, _init_process, (db_dir, tables_json, timeout_s)):
            for result in results:
                if isinstance(result, ExampleScore):
                    report.scores.append(result)
                else:
                    report.data_errors.append(result)
            bar.advance(task, len(results))
    report.scores.sort(key=lambda s: s.index)
    return report


def summary_table(summary: Summary, title: str = "Spider evaluation") -> Table:
    """Count, EX and EM per hardness level and overall, then the wrong predictions by error type.
    A level without questions shows '-' (a rate of nothing is not 0)."""
    table = Table(title=title)
    table.add_column("level")
    for column in ("count", "EX", "EM"):
        table.add_column(column, justify="right")
    for level in (*HARDNESS_LEVELS, "all"):
        row = summary if level == "all" else summary.by_hardness[level]
        rates = (f"{row.ex:.3f}", f"{row.em:.3f}") if row.n else ("-", "-")
        table.add_row(level, str(row.n), *rates, end_section=level == HARDNESS_LEVELS[-1])
    counts = summary.error_types
    wrong = sum(counts.values())
    table.add_section()
    for kind in ERROR_TYPES:
        table.add_row(f"wrong: {kind}", str(counts.get(kind, 0)), "", "")
    table.caption = f"{wrong} of {summary.n} predictions wrong (EX), by error type"
    return table


def per_example_records(report: Report) -> list[dict]:
    return [asdict(s) for s in report.scores]
