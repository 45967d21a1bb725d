"""Execution-guided selection: of a question's candidate answers (best-ranked first), take the first
whose SQL runs on the question's database.

    answer, position = pick_candidate(["SELECT nme FROM singer", "SELECT name FROM singer"], db_path)
    # -> ("SELECT name FROM singer", 1): the first candidate names a column the table lacks

Each candidate's SQL is extracted as for scoring (``evaluation.extract.extract_sql``) and run by
``evaluation.execution.run_query``: the evaluator's read-only connection, deadline and row cap. Rules
(``generation.pick``): ``executes`` takes the first candidate whose query runs without error;
``returns_rows`` the first that also returns at least one row (Spider's gold queries rarely return
nothing). When no candidate passes, the best-ranked one is kept: the answer never gets worse than
the search's own first choice by having no executable alternative.
"""

from __future__ import annotations

from pathlib import Path

from ray_spider.evaluation.execution import run_query
from ray_spider.evaluation.extract import extract_sql

PICK_RULES = ("executes", "returns_rows")


def passes(db_path: Path, raw_answer: str, rule: str, timeout_s: float) -> bool:
    """Whether one raw answer passes ``rule`` on the database; never raises for bad SQL."""
    if rule not in PICK_RULES:
        raise ValueError(f"unknown pick rule {rule!r}; valid: {', '.join(PICK_RULES)}")
    sql = extract_sql(raw_answer).sql
    if not sql:
        return False
    outcome = run_query(db_path, sql, timeout_s=timeout_s)
    return outcome.status == "ok" and (rule == "executes" or bool(outcome.rows))


def pick_candidate(candidates: list[str], db_path: Path, rule: str = "executes", timeout_s: float = 10.0) -> tuple[str, int]:
    """(answer, its position in ``candidates``): the first candidate that passes ``rule``, else the first.

    ``candidates``: raw model answers, best-ranked first (at least one). ``timeout_s``: per query.
    """
    if not candidates:
        raise ValueError("pick_candidate needs at least one candidate")
    for position, candidate in enumerate(candidates):
        if passes(db_path, candidate, rule, timeout_s):
            return candidate, position
    return candidates[0], 0
