"""Execution accuracy (EX) on real Spider databases: official semantics and the safety guarantees.

Needs $SPIDER_DIR (skipped without it). Queries that could write run on a copy of the database.
"""

from __future__ import annotations

import hashlib
import shutil
import time

import pytest

from ray_spider.evaluation.execution import (
    execution_match,
    official_cleanup,
    order_matters,
    results_match,
    run_query,
)
from ray_spider.evaluation.inputs import GoldError


@pytest.fixture(scope="module")
def concert(spider_dir):
    return spider_dir / "database" / "concert_singer" / "concert_singer.sqlite"


@pytest.fixture
def concert_copy(concert, tmp_path):
    copy = tmp_path / "concert_singer" / "concert_singer.sqlite"
    copy.parent.mkdir()
    shutil.copyfile(concert, copy)
    return copy


def ex(db, gold, pred, **kwargs) -> bool:
    return execution_match(db, gold, pred, **kwargs)[0]


def test_all_dev_972_gold_match_themselves(spider_dir):
    matched, total = 0, 0
    for line in (spider_dir / "dev_gold.sql").read_text().splitlines():
        sql, _, db_id = line.rpartition("\t")
        db = spider_dir / "database" / db_id / f"{db_id}.sqlite"
        if line.strip() and db.is_file():
            total += 1
            matched += ex(db, sql, sql)
    assert (matched, total) == (972, 972)


def test_row_order_counts_only_when_gold_orders(concert):
    ordered_gold = "SELECT name FROM singer ORDER BY age DESC"
    assert not ex(concert, ordered_gold, "SELECT name FROM singer ORDER BY age ASC")
    assert ex(concert, ordered_gold, "SELECT name FROM singer ORDER BY age DESC")
    assert ex(concert, "SELECT name FROM singer", "SELECT name FROM singer ORDER BY age ASC")
    assert ex(concert, "SELECT name FROM singer", "SELECT name FROM singer ORDER BY age DESC")


def test_order_rule_is_the_officials_literal_substring(concert):
    # The official looks for the text "order by": two spaces between the words hide it.
    assert ex(concert, "SELECT name FROM singer ORDER  BY age DESC", "SELECT name FROM singer ORDER BY age ASC")
    assert order_matters("select a from t order by a") and not order_matters("SELECT a FROM t ORDER\nBY a")


def test_column_permutation_is_accepted(concert):
    assert ex(concert, "SELECT name, age FROM singer", "SELECT age, name FROM singer")
    wide = "SELECT singer_id, name, country, age, song_name FROM singer"
    assert ex(concert, wide, "SELECT age, song_name, name, singer_id, country FROM singer")
    assert not ex(concert, wide, "SELECT age, song_name, name, singer_id, song_release_year FROM singer")
    # With an ordered gold the columns may still be permuted, the rows may not.
    assert ex(concert, "SELECT name, age FROM singer ORDER BY age", "SELECT age, name FROM singer ORDER BY age")
    assert not ex(concert, "SELECT name, age FROM singer ORDER BY age", "SELECT age, name FROM singer ORDER BY age DESC")


def test_permuted_columns_must_keep_rows_together(concert):
    # Same bag of values in each column, but the pairs (name, age) differ.
    gold = "SELECT name, age FROM singer"
    mixed = "SELECT a.name, b.age FROM singer a JOIN singer b ON a.singer_id = (b.singer_id % 6) + 1"
    assert run_query(concert, mixed).status == "ok"
    assert not ex(concert, gold, mixed)


def test_results_are_bags_not_sets(concert):
    gold = "SELECT country FROM singer"  # holds duplicates
    assert len(set(run_query(concert, gold).rows)) < len(run_query(concert, gold).rows)
    assert not ex(concert, gold, "SELECT country FROM singer GROUP BY country")
    assert not ex(concert, gold, "SELECT country FROM singer UNION ALL SELECT country FROM singer")
    # DISTINCT is dropped from both queries before execution (official default, keep_distinct off).
    assert ex(concert, gold, "SELECT DISTINCT country FROM singer")


def test_empty_results_match_whatever_the_columns(concert):
    assert ex(concert, "SELECT name FROM singer WHERE age > 1000", "SELECT age, country FROM singer WHERE 0")
    assert not ex(concert, "SELECT name FROM singer WHERE age > 1000", "SELECT name FROM singer")


@pytest.mark.parametrize(
    "pred",
    [
        "DROP TABLE singer",
        "DELETE FROM singer",
        "INSERT INTO singer (singer_id, name) VALUES (99, 'x')",
        "UPDATE singer SET age = 0",
        "ATTACH DATABASE '{attached}' AS other",
        "VACUUM INTO '{attached}'",
        "PRAGMA query_only = OFF",
        "CREATE TABLE t (a)",
    ],
)
def test_predictions_cannot_write(concert_copy, tmp_path, pred):
    attached = tmp_path / "attached.sqlite"
    before = hashlib.sha256(concert_copy.read_bytes()).hexdigest()
    # The empty gold result is the case where the official scores a DELETE as correct.
    matched, outcome = execution_match(concert_copy, "SELECT name FROM singer WHERE 0", pred.format(attached=attached))
    assert not matched and outcome.status == "error"
    assert "not authorized" in outcome.error or "authorization denied" in outcome.error
    assert hashlib.sha256(concert_copy.read_bytes()).hexdigest() == before
    assert not attached.exists()
    assert run_query(concert_copy, "SELECT count(*) FROM singer").rows == [(6,)]


def test_only_the_first_statement_runs(concert_copy):
    before = concert_copy.read_bytes()
    matched, outcome = execution_match(concert_copy, "SELECT count(*) FROM singer", "SELECT count(*) FROM singer; DROP TABLE singer")
    assert matched and outcome.rows == [(6,)]
    assert concert_copy.read_bytes() == before
    assert run_query(concert_copy, "SELECT 1; SELECT 2").status == "error"  # run_query itself takes one statement


def test_runaway_query_times_out(concert):
    cross_join = "SELECT count(*) FROM " + ", ".join(f"singer s{i}" for i in range(12))
    started = time.monotonic()
    matched, outcome = execution_match(concert, "SELECT count(*) FROM singer", cross_join, timeout_s=0.5)
    elapsed = time.monotonic() - started
    assert not matched and outcome.status == "timeout"
    assert elapsed < 2.0


def test_row_cap(concert):
    outcome = run_query(concert, "SELECT * FROM singer a, singer b", max_rows=10)
    assert (outcome.status, outcome.rows) == ("too_many_rows", None)
    assert len(run_query(concert, "SELECT * FROM singer a, singer b", max_rows=36).rows) == 36


@pytest.mark.parametrize(
    "pred, status",
    [
        ("SELEC name FROM singer", "syntax_error"),
        ("SELECT name FROM singer WHERE", "syntax_error"),
        ("SELECT name FROM singer WHERE name = 'open", "syntax_error"),
        ("SELECT nme FROM singer", "unknown_table_or_column"),
        ("SELECT name FROM singers", "unknown_table_or_column"),
        ("SELECT singer_id FROM singer JOIN singer_in_concert ON 1", "unknown_table_or_column"),  # ambiguous
        ("SELECT no_such_function(name) FROM singer", "error"),
        ("", "no_sql"),
        ("   \n", "no_sql"),
        ("-- SELECT name FROM singer", "no_sql"),
        (";", "no_sql"),
    ],
)
def test_prediction_failures_are_classified(concert, pred, status):
    matched, outcome = execution_match(concert, "SELECT name FROM singer", pred)
    assert not matched and outcome.status == status and outcome.rows is None


def test_failing_gold_raises_naming_db_and_sql(concert):
    with pytest.raises(GoldError, match=r"concert_singer\.sqlite.*SELECT nme FROM singer"):
        execution_match(concert, "SELECT nme FROM singer", "SELECT name FROM singer")
    with pytest.raises(GoldError):
        execution_match(concert, "  ", "SELECT name FROM singer")


def test_missing_database_is_a_setup_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.sqlite"):
        run_query(tmp_path / "nowhere.sqlite", "SELECT 1")
    assert not (tmp_path / "nowhere.sqlite").exists()


def test_invalid_utf8_is_dropped_like_the_official(concert):
    assert run_query(concert, "SELECT CAST(x'C3A9FF41' AS TEXT)").rows == [("\u00e9A",)]


def test_official_text_cleanup():
    # Expected strings are the official remove_distinct(postprocess(...)) outputs, spaces included.
    assert official_cleanup("SELECT DISTINCT a FROM t WHERE b > = 1; SELECT 2") == "SELECT  a FROM t WHERE b >= 1; "
    assert official_cleanup("SELECT count(distinct a) FROM t") == "SELECT count( a) FROM t"
    # Quoted text, comments and qualified names that merely contain the word are kept.
    assert official_cleanup("SELECT 'distinct' FROM t -- distinct") == "SELECT 'distinct' FROM t -- distinct"
    assert official_cleanup("SELECT a FROM t WHERE x = 'a;b'; DROP TABLE t") == "SELECT a FROM t WHERE x = 'a;b'; "
    assert official_cleanup("SELECT 1;  -- note\nSELECT 2") == "SELECT 1;  -- note\n"
    assert official_cleanup("SELECT CASE WHEN a THEN 1 END FROM t; SELECT 2") == "SELECT CASE WHEN a THEN 1 END FROM t; "
    # sqlparse's split: no ';' inside an open parenthesis ends a statement, but END closes a level.
    assert official_cleanup("SELECT count(a; SELECT 2") == "SELECT count(a; SELECT 2"
    assert official_cleanup("SELECT count(CASE WHEN a THEN 1 END; SELECT 2") == "SELECT count(CASE WHEN a THEN 1 END; "
    assert official_cleanup(" \n\t") is None


def test_current_year_is_pinned_to_2020(concert):
    assert ex(concert, "SELECT 2020 - 20", "SELECT YEAR(CURDATE()) - 20")


def test_result_comparison_quirks_of_the_official():
    assert results_match([(1,), (2,)], [(1.0,), (2.0,)], order_matters=False)
    # The official sorts each row's values by their text before comparing: an INTEGER 1 beside 1.5
    # sorts after it, a REAL 1.0 before it, so these rows do not match although they are equal.
    assert not results_match([(1, 1.5)], [(1.0, 1.5)], order_matters=False)
    assert results_match([(1, "a"), (1, "a"), (2, "b")], [("a", 1), ("b", 2), ("a", 1)], order_matters=False)
    assert not results_match([(1, "a"), (1, "a"), (2, "b")], [("a", 1), ("b", 2), ("b", 2)], order_matters=False)
    assert not results_match([(1, "a"), (2, "b")], [("b", 2), ("a", 1)], order_matters=True)
    # Each row holds the same values and each column the same bag, yet no column permutation works.
    assert not results_match([(3, 2, 2), (1, 2, 2), (2, 1, 1)], [(3, 2, 2), (2, 1, 2), (1, 2, 1)], order_matters=False)
    assert results_match([], [], order_matters=True)
