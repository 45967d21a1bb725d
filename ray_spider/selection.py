"""Execution-guided selection: of a question's candidate answers (best-ranked first), take the one
the rule ``generation.pick`` prefers by running their SQL on the question's database.

    answer, position = pick_candidate(["SELECT nme FROM singer", "SELECT name FROM singer"], db_path)
    # -> ("SELECT name FROM singer", 1): the first candidate names a column the table lacks

Each candidate's SQL is extracted as for scoring (``evaluation.extract.extract_sql``) and run by
``evaluation.execution.run_query``: the evaluator's read-only connection, deadline and row cap.
Rules (``PICK_RULES``):

- ``executes``: the first candidate whose query runs without error (execution-guided decoding,
  Wang et al. 2018);
- ``returns_rows``: the first that also returns at least one row (Spider's gold queries rarely
  return nothing);
- ``majority``: every candidate is run; those that run vote with their result, compared as a bag
  of rows (order and duplicates as returned, column order kept); the answer is the first
  candidate of the result most candidates share (self-consistency, Wang et al. 2023, as used for
  text-to-SQL by e.g. DAIL-SQL). A tie goes to the result whose first candidate ranks higher.
- ``majority_rows``: ``majority`` among the candidates that return at least one row; only when
  none does, among all that run. Wrong queries that return nothing (a misspelled value, a
  contradictory filter) all share the one empty result and so vote as a bloc under ``majority``;
  49 of dev-972's gold queries return nothing. On recorded dev-972 candidates (16 per question,
  docs/decoding.md) it scored 0.406 / 0.402 / 0.382 EX where ``majority`` scored 0.389 / 0.388 / 0.373.

When no candidate runs, the best-ranked one is kept: the answer never gets worse than the search's
own first choice for lack of an executable alternative. Identical SQL texts are run once.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from ray_spider.evaluation.execution import QueryOutcome, map_in_processes, run_query
from ray_spider.evaluation.extract import extract_sql
from ray_spider.evaluation.score import CHUNK, DEFAULT_MAX_WORKERS

PICK_RULES = ("executes", "returns_rows", "majority", "majority_rows")


def _outcome(db_path: Path, raw_answer: str, timeout_s: float, seen: dict[str, QueryOutcome | None]) -> QueryOutcome | None:
    """The outcome of the answer's SQL (None when it holds none), each distinct SQL run once per ``seen``."""
    sql = extract_sql(raw_answer).sql
    if sql not in seen:
        seen[sql] = run_query(db_path, sql, timeout_s=timeout_s) if sql else None
    return seen[sql]


def _passes(outcome: QueryOutcome | None, rule: str) -> bool:
    return outcome is not None and outcome.status == "ok" and (rule != "returns_rows" or bool(outcome.rows))


def _result_key(rows: list[tuple]) -> frozenset:
    """A result as a bag of rows: equal for the same rows in any order."""
    return frozenset(Counter(rows).items())


def pick_candidate(candidates: list[str], db_path: Path, rule: str = "majority_rows", timeout_s: float = 10.0) -> tuple[str, int]:
    """(answer, its position in ``candidates``) by ``rule`` (module docstring), else the first candidate.

    ``candidates``: raw model answers, best-ranked first (at least one). ``timeout_s``: per query.
    Never raises for bad SQL; ValueError for an unknown rule or no candidates.
    """
    if rule not in PICK_RULES:
        raise ValueError(f"unknown pick rule {rule!r}; valid: {', '.join(PICK_RULES)}")
    if not candidates:
        raise ValueError("pick_candidate needs at least one candidate")
    seen: dict[str, QueryOutcome | None] = {}
    if not rule.startswith("majority"):
        for position, candidate in enumerate(candidates):
            if _passes(_outcome(db_path, candidate, timeout_s, seen), rule):
                return candidate, position
        return candidates[0], 0
    outcomes = [(position, _outcome(db_path, candidate, timeout_s, seen)) for position, candidate in enumerate(candidates)]
    ran = [(position, outcome) for position, outcome in outcomes if _passes(outcome, rule)]
    if rule == "majority_rows":
        ran = [(position, outcome) for position, outcome in ran if outcome.rows] or ran
    if not ran:
        return candidates[0], 0
    first_of_result: dict[frozenset, int] = {}
    votes: Counter = Counter()
    for position, outcome in ran:
        key = _result_key(outcome.rows)
        first_of_result.setdefault(key, position)
        votes[key] += 1
    winner = max(votes, key=lambda key: (votes[key], -first_of_result[key]))
    return candidates[first_of_result[winner]], first_of_result[winner]


def pick_answers(
    candidates: list[list[str]], db_paths: list[Path], rule: str = "majority_rows", timeout_s: float = 10.0, workers: int | None = None,
) -> list[str]:
    """``pick_candidate`` of each question (``candidates[i]`` on ``db_paths[i]``), answers in order.

    Questions run in chunks on ``workers`` processes (default: the cores, at most the scorer's
    DEFAULT_MAX_WORKERS; 1: in this process), as scoring does (``map_in_processes``): extracting and
    comparing 16 candidates' SQL is Python work that threads would serialize on the GIL (on dev-972 x
    16 candidates, 8 threads took longer than one). Ctrl-C stops the running queries and raises
    KeyboardInterrupt. ValueError for an unknown rule, before any query runs.
    """
    if rule not in PICK_RULES:
        raise ValueError(f"unknown pick rule {rule!r}; valid: {', '.join(PICK_RULES)}")
    jobs = list(zip(candidates, db_paths))
    chunks = [jobs[start : start + CHUNK] for start in range(0, len(jobs), CHUNK)]
    workers = min(workers or min(os.cpu_count() or 1, DEFAULT_MAX_WORKERS), max(len(chunks), 1))
    picks: list[str] = []
    for chunk_picks in map_in_processes(_pick_chunk, chunks, workers, _init_process, (rule, timeout_s)):
        picks.extend(chunk_picks)
    return picks


_process_rule: tuple[str, float] = ("executes", 10.0)  # (rule, timeout_s) of this process's picks


def _init_process(rule: str, timeout_s: float) -> None:
    global _process_rule
    _process_rule = (rule, timeout_s)


def _pick_chunk(chunk: list[tuple[list[str], Path]]) -> list[str]:
    rule, timeout_s = _process_rule
    return [pick_candidate(answers, db_path, rule, timeout_s)[0] for answers, db_path in chunk]
