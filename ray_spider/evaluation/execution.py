"""SQLite execution of Spider queries and execution accuracy (EX) with the test-suite semantics.

    ex, outcome = execution_match(db_path, gold_sql, pred_sql)   # (bool, QueryOutcome of the pred)
    outcome = run_query(db_path, "SELECT count(*) FROM singer")  # QueryOutcome(status="ok", rows=[(6,)])

EX follows the official test-suite evaluator (taoyds/test-suite-sql-eval, ``eval_exec_match`` as
its evaluation.py calls it by default: no value plugging, DISTINCT dropped, the one database file of
the db_id). Before execution both queries get the official text clean-up: ``> =``, ``< =``, ``! =``
lose their space; only the first statement is kept and every DISTINCT token is dropped (the
official does both through sqlparse; ``first_statement_without_distinct`` reproduces its token
rules); ``YEAR(CURDATE())`` becomes 2020. The results are then compared as bags of rows, up to a
permutation of the columns, in order only when the cleaned gold text contains "order by".

Two things are deliberately better than the official:
- Safety: every query runs on a connection that cannot write (read-only URI, ``query_only``, an
  authorizer that allows reads only, no ATTACH) and that is interrupted at a real deadline
  (status "timeout"; the official timeout never fires) and at a row cap ("too_many_rows").
- An empty or comment-only prediction is "no_sql" and wrong; the official crashes on an empty one
  and lets a comment-only one match an empty gold result.

Bad predictions never raise. A gold query that fails raises GoldError (a data bug).
The agreement with the official code is measured by tools/ex_agreement.py.

The token rules below (``_TOKEN_RULES``, the statement split) are our copy of the part of
sqlparse 0.6.0 (``keywords.SQL_REGEX``, ``engine.StatementSplitter``) that decides the first
statement and the DISTINCT tokens, frozen at that version on purpose: the official evaluator's
verdicts are defined by the sqlparse it ran with, and a new sqlparse release may tokenize some
text differently, which would silently move our EX away from the official per example. Depending
on sqlparse would buy nothing else (we use no other part of it). Re-check with
tools/ex_agreement.py before changing these rules.
"""

from __future__ import annotations

import multiprocessing
import re
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ray_spider.evaluation.inputs import GoldError, read_only_connection

# A gold query is trusted; its limit only keeps a broken one from hanging a whole evaluation.
GOLD_TIMEOUT_S = 60.0
# sqlite calls the deadline check every this many virtual-machine steps (~0.1 ms of a cross join).
_PROGRESS_STEPS = 10_000


@dataclass(frozen=True)
class QueryOutcome:
    status: str  # 'ok' | 'no_sql' | 'syntax_error' | 'unknown_table_or_column' | 'timeout' | 'too_many_rows' | 'error'
    rows: list[tuple] | None  # the fetched rows when status is 'ok', else None
    error: str | None  # sqlite's message (or ours for timeout / row cap / no SQL)


# ---------------------------------------------------------------------------------------------
# Running one query on a connection that cannot change anything

_SIGINT = threading.Event()


@contextmanager
def interrupts_recorded():
    """Let Ctrl-C stop scoring in this process. A KeyboardInterrupt raised while sqlite runs a query
    lands in the progress callback, where the sqlite3 module swallows it and merely stops the
    statement: the query would count as an error and scoring go on. Inside this block SIGINT is also
    recorded, and ``_execute`` turns the stopped statement back into KeyboardInterrupt. Only the
    main thread can own a signal handler; elsewhere (and where SIGINT is not Python's default, e.g.
    ignored) nothing changes."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return

    def record(signum, frame):
        _SIGINT.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, record)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _SIGINT.clear()


def map_in_processes(function: Callable, chunks: list, workers: int, initializer: Callable, initargs: tuple) -> Iterator:
    """``function`` of each chunk, results in order, in a pool of ``workers`` processes that each run
    ``initializer(*initargs)`` first (one process: here, no pool). Ctrl-C stops at once: in-process,
    the running query is interrupted and KeyboardInterrupt raised (``interrupts_recorded``); with a
    pool the workers ignore SIGINT and the parent terminates them (they may be deep in a slow query).
    Used by scoring (``score.score``) and execution-guided selection (``selection.pick_answers``)."""
    if workers <= 1:
        with interrupts_recorded():
            initializer(*initargs)
            yield from map(function, chunks)
        return
    pool = multiprocessing.Pool(workers, initializer=_init_pool_worker, initargs=(initializer, *initargs))
    try:
        yield from pool.imap(function, chunks)
        pool.close()
    finally:
        pool.terminate()  # no-op work left after close(); ends busy workers on Ctrl-C or an error
        pool.join()


def _init_pool_worker(initializer: Callable, *initargs) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; a worker never half-finishes a chunk
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # pool.terminate() ends it, whatever handler the parent had
    initializer(*initargs)


def run_query(db_path: Path, sql: str, timeout_s: float = 10.0, max_rows: int | None = 100_000) -> QueryOutcome:
    """Execute one SQL statement read-only; never raises for bad SQL (``max_rows=None``: no cap).

    Raises FileNotFoundError when the database file is missing: that is a setup error, not a bad
    query, and sqlite would otherwise report it as a query failure.
    """
    db_path = Path(db_path)
    if not db_path.is_file():
        raise FileNotFoundError(f"database file not found: {db_path}")
    if not sql or not sql.strip():
        return QueryOutcome("no_sql", None, "empty query")
    with read_only_connection(db_path) as connection:
        # mode=ro alone still lets a query ATTACH another file or load an extension: lock it down.
        connection.execute("PRAGMA query_only = ON")
        connection.set_authorizer(_authorize_read_only)
        return _execute(connection, sql, timeout_s, max_rows)


_ALLOWED_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}


def _authorize_read_only(action: int, arg1, arg2, database, trigger) -> int:
    """Allow reading only: writes, DDL, ATTACH/DETACH, transactions and pragma settings are denied.

    An allow-list, so that an action sqlite adds later is denied rather than let through.
    """
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() == "load_extension":
        return sqlite3.SQLITE_DENY
    if action in _ALLOWED_ACTIONS:
        return sqlite3.SQLITE_OK
    # A pragma without argument only reads (PRAGMA user_version); one with an argument may set.
    if action == sqlite3.SQLITE_PRAGMA and arg2 is None:
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def _execute(connection: sqlite3.Connection, sql: str, timeout_s: float, max_rows: int | None) -> QueryOutcome:
    deadline = time.monotonic() + timeout_s
    timed_out = []  # set by the progress handler; sqlite then reports only "interrupted"

    def past_deadline() -> int:
        if _SIGINT.is_set():
            return 1
        if time.monotonic() > deadline:
            timed_out.append(True)
            return 1  # non-zero interrupts the running statement
        return 0

    connection.set_progress_handler(past_deadline, _PROGRESS_STEPS)
    try:
        cursor = connection.execute(sql)
        if cursor.description is None:  # nothing that returns rows: only comments, ';', ...
            return QueryOutcome("no_sql", None, "the statement returns no result set")
        rows = cursor.fetchall() if max_rows is None else cursor.fetchmany(max_rows + 1)
    except Exception as exc:  # any failure of a prediction is an outcome, never an exception
        if _SIGINT.is_set():
            raise KeyboardInterrupt from None  # Ctrl-C stopped the statement: not an outcome of the query
        if timed_out:
            return QueryOutcome("timeout", None, f"interrupted after {timeout_s:g} s")
        return QueryOutcome(_classify_error(str(exc)), None, str(exc))
    if max_rows is not None and len(rows) > max_rows:
        return QueryOutcome("too_many_rows", None, f"more than {max_rows} rows")
    return QueryOutcome("ok", rows, None)


_SYNTAX_ERROR = re.compile(r"syntax error|incomplete input|unrecognized token|unterminated", re.IGNORECASE)
_UNKNOWN_NAME = re.compile(r"^(no such table|no such column|ambiguous column name)\b", re.IGNORECASE)


def _classify_error(message: str) -> str:
    if _SYNTAX_ERROR.search(message):
        return "syntax_error"
    if _UNKNOWN_NAME.search(message):
        return "unknown_table_or_column"
    return "error"


# ---------------------------------------------------------------------------------------------
# The official text clean-up


def official_cleanup(sql: str) -> str | None:
    """The query text the official evaluator executes, or None when there is no statement.

    In the official order: spaced comparison operators joined, then the first statement kept
    without DISTINCT. ``pin_current_year`` comes last, right before execution.
    """
    # A model may put a space inside >=, <=, != ; sqlite would reject it.
    for spaced, joined in (("> =", ">="), ("< =", "<="), ("! =", "!=")):
        sql = sql.replace(spaced, joined)
    return first_statement_without_distinct(sql)


def plug_value_placeholder(pred_sql: str) -> str:
    """The prediction text the test-suite evaluator hands to its execution match.

    Its ``evaluate`` replaces every "value" in a prediction by "1" before ``eval_exec_match`` (a
    leftover of value-less predictions; the substring, so a column named ``value`` changes too).
    The gold query keeps its text, and EM sees the prediction unchanged (``exact_match``), as in
    the official code. ``execution_match`` itself is ``eval_exec_match``: call this before it.
    """
    return pred_sql.replace("value", "1")


def pin_current_year(sql: str) -> str:
    """MySQL's YEAR(CURDATE()) appears in Spider-style queries; the official pins it to 2020."""
    return _CURRENT_YEAR.sub("2020", sql)


_CURRENT_YEAR = re.compile(r"YEAR\s*\(\s*CURDATE\s*\(\s*\)\s*\)\s*", re.IGNORECASE)


def order_matters(cleaned_gold: str) -> bool:
    """The official rule, literally: row order counts when the gold text contains 'order by'.

    A plain substring test, so "ORDER  BY" (two spaces) does not count and an 'order by' inside a
    string literal does.
    """
    return "order by" in cleaned_gold.lower()


# The official tokenizes with sqlparse, keeps the first statement of sqlparse's split and drops
# every token whose text is "distinct" (any case). These rules reproduce the sqlparse tokens that
# decide those two things: where quotes and comments start and end (a ';' or "distinct" inside
# them does not count), which ';' ends a statement (not inside an open parenthesis; a bare END
# keyword, as in CASE ... END, closes a level too), and where a word starts and ends. Each rule is
# tried in this order at the current position; the first that matches makes the token.
_TOKEN_RULES = [
    ("comment", r"(?:--|\# ).*?(?:\r\n|\r|\n|$)"),
    ("newline", r"\r\n|\r|\n"),
    ("space", r"\s"),
    ("other", r":=|::|\*"),
    ("quoted", r"`(?:``|[^`])*`|´(?:´´|[^´])*´"),
    ("other", r"\?|%(?:\(\w+\))?s|(?<!\w)[$:?]\w+|\\\w+"),
    ("word", r"(?:CASE|IN|VALUES|USING|FROM|AS)\b"),
    ("other", r"(?:@|\#\#|\#)[A-ZÀ-Ü]\w+"),
    # A name before '.' or '(' or after '.' is never a keyword (T1.end, count(...)).
    ("name", r"[A-ZÀ-Ü]\w*(?=\s*\.(?!\d))|(?<=\.)[A-ZÀ-Ü]\w*|[A-ZÀ-Ü]\w*(?=\()"),
    ("other", r"-?0x[\dA-F]+|-?\d+(?:\.\d+)?E-?\d+"),
    ("other", r"(?![_A-ZÀ-Ü])-?(?:\d+(?:\.\d*)|\.\d+)(?![_A-ZÀ-Ü])|(?![_A-ZÀ-Ü])-?\d+(?![_A-ZÀ-Ü])"),
    # Strings as sqlparse reads them: a backslash escapes a quote (sqlite disagrees; it only
    # matters for text that sqlite rejects anyway).
    ("quoted", r"'(?:''|\\'|[^'])*'|\"(?:\"\"|\\\"|[^\"])*\"|(?<![\w\])])\[[^\]\[]+\]"),
    ("end", r"END\b(?:\s+(?:IF|LOOP|WHILE|FOR|CASE)\b)?"),
    ("go", r"GO\s\d+\b"),
    ("word", r"\w[$#\w]*"),
    ("punct", r"[;:()\[\],.]"),
    ("other", r"->>?|\#>>?|@>|<@|\?\|?|\?&|-|\#-|[<>=~!]+|[+/@\#%^&|-]+"),
]
_TOKEN = re.compile("|".join(f"(?P<{kind}_{i}>{rule})" for i, (kind, rule) in enumerate(_TOKEN_RULES)), re.IGNORECASE)
# Block comments and $tag$ quotes are looked for first, at every position a token starts.
_SPAN = re.compile(r"/\*[\s\S]*?\*/|(?<![\w\"$])(\$(?:[_A-ZÀ-Ü]\w*)?\$)[\s\S]*?(?-i:\1)", re.IGNORECASE)


def _tokens(sql: str):
    """Yield (kind, text) pairs that concatenate back to ``sql``."""
    position = 0
    while position < len(sql):
        span = _SPAN.match(sql, position)
        token = span or _TOKEN.match(sql, position)
        if token is None:  # a character no rule knows ('"' without its closing quote, ...)
            yield "other", sql[position]
            position += 1
            continue
        yield ("other" if span else token.lastgroup.rsplit("_", 1)[0]), token.group()
        position = token.end()


def _split_level_change(kind: str, text: str) -> int:
    if kind == "punct" and text == "(":
        return 1
    if kind == "punct" and text == ")":
        return -1
    # Only a bare END closes a level; "END IF" and friends need a procedural block around them.
    if kind == "end" and text.upper() == "END":
        return -1
    return 0


def _ends_statement(kind: str, text: str, level: int) -> bool:
    if kind == "punct" and text == ";":
        return level <= 0
    # sqlparse also splits after the batch separator GO (capitals only, as a keyword: "GO", "GO 2").
    return (kind == "word" and text == "GO") or (kind == "go" and text.split()[0] == "GO")


def _trails_statement(kind: str, text: str) -> bool:
    """Spaces and '--' comments after the ';' still belong to the statement; a newline does not."""
    return kind == "space" or (kind == "comment" and text[2:3] != "+")


def first_statement_without_distinct(sql: str) -> str | None:
    """The first statement of ``sql`` with every DISTINCT token removed; None if only whitespace."""
    kept, level, ended = [], 0, False
    only_whitespace = True
    for kind, text in _tokens(sql):
        if ended and not _trails_statement(kind, text):
            break
        level += _split_level_change(kind, text)
        ended = ended or _ends_statement(kind, text, level)
        only_whitespace = only_whitespace and kind in ("space", "newline")
        if text.lower() != "distinct":
            kept.append(text)
    return None if only_whitespace else "".join(kept)


# ---------------------------------------------------------------------------------------------
# Comparing two results


def results_match(gold_rows: list[tuple], pred_rows: list[tuple], order_matters: bool) -> bool:
    """The official denotation equality: same bag (or list) of rows up to a column permutation."""
    if not gold_rows and not pred_rows:
        return True
    if len(gold_rows) != len(pred_rows) or len(gold_rows[0]) != len(pred_rows[0]):
        return False
    if not _same_rows_as_value_sets(gold_rows, pred_rows, order_matters):
        return False
    if order_matters:
        return _columns_permute_ordered(gold_rows, pred_rows)
    return _columns_permute_bag(gold_rows, pred_rows)


def _official_value_key(value) -> str:
    # The official sorts the values inside a row by this text. It is not consistent with == across
    # types (1 vs 1.0 sort differently next to 1.5), so rows can fail here that a permutation would
    # match: kept on purpose, it decides real cases (an INTEGER gold column vs a REAL prediction).
    return str(value) + str(type(value))


def _same_rows_as_value_sets(gold_rows: list[tuple], pred_rows: list[tuple], order_matters: bool) -> bool:
    """The official quick rejection: rows compared with their values sorted, as a set or a list."""
    gold_sorted = [tuple(sorted(row, key=_official_value_key)) for row in gold_rows]
    pred_sorted = [tuple(sorted(row, key=_official_value_key)) for row in pred_rows]
    if order_matters:
        return gold_sorted == pred_sorted
    return set(gold_sorted) == set(pred_sorted)


def _columns_permute_ordered(gold_rows: list[tuple], pred_rows: list[tuple]) -> bool:
    # With the row order fixed, a column permutation exists exactly when the columns, as value
    # sequences, are the same multiset.
    return Counter(zip(*gold_rows)) == Counter(zip(*pred_rows))


def _columns_permute_bag(gold_rows: list[tuple], pred_rows: list[tuple]) -> bool:
    """Is there a column permutation under which the two bags of rows are equal?

    The official samples 20 random rows to prune the permutations and tries the rest; pruning never
    removes a valid permutation, so its answer is "one exists". We search deterministically:
    gold column i may take pred column j only when the two columns hold the same bag of values,
    and each partial assignment must already give equal bags of partial rows.
    """
    width = len(gold_rows[0])
    gold_columns = list(zip(*gold_rows))
    pred_columns = list(zip(*pred_rows))
    candidates = [[j for j in range(width) if Counter(gold_columns[i]) == Counter(pred_columns[j])] for i in range(width)]
    return _extend_assignment([], candidates, gold_columns, pred_columns)


def _extend_assignment(assigned: list[int], candidates: list[list[int]], gold_columns: list[tuple], pred_columns: list[tuple]) -> bool:
    if len(assigned) == len(gold_columns):
        return True
    position = len(assigned)
    tried: set[tuple] = set()
    for j in candidates[position]:
        # Two identical pred columns are interchangeable: trying one of them is enough.
        if j in assigned or pred_columns[j] in tried:
            continue
        tried.add(pred_columns[j])
        chosen = assigned + [j]
        gold_partial = Counter(zip(*gold_columns[: position + 1]))
        pred_partial = Counter(zip(*(pred_columns[k] for k in chosen)))
        if gold_partial == pred_partial and _extend_assignment(chosen, candidates, gold_columns, pred_columns):
            return True
    return False


# ---------------------------------------------------------------------------------------------
# Execution accuracy


def execution_match(db_path: Path, gold_sql: str, pred_sql: str, timeout_s: float = 10.0) -> tuple[bool, QueryOutcome]:
    """(EX, the prediction's outcome). Raises GoldError when the gold query does not run."""
    db_path = Path(db_path)
    gold_text = official_cleanup(gold_sql or "")
    if gold_text is None:
        raise GoldError(f"empty gold query for database {db_path}")
    gold_rows = _run_gold(db_path, gold_text, gold_sql, max(timeout_s, GOLD_TIMEOUT_S))
    pred_text = official_cleanup(pred_sql or "")
    if pred_text is None:
        return False, QueryOutcome("no_sql", None, "empty query")
    outcome = run_query(db_path, pin_current_year(pred_text), timeout_s=timeout_s)
    if outcome.status != "ok":
        return False, outcome
    return results_match(gold_rows, outcome.rows, order_matters(gold_text)), outcome


def _run_gold(db_path: Path, gold_text: str, gold_sql: str, timeout_s: float) -> list[tuple]:
    outcome = run_query(db_path, pin_current_year(gold_text), timeout_s=timeout_s, max_rows=None)
    if outcome.status != "ok":
        raise GoldError(f"gold query fails on {db_path} ({outcome.status}: {outcome.error}): {gold_sql}")
    return outcome.rows
