import pytest

from ray_spider.evaluation.extract import extract_sql


@pytest.mark.parametrize(
    ("raw", "sql", "pure"),
    [
        ("SELECT count(*) FROM singer", "SELECT count(*) FROM singer", True),
        ("SELECT count(*) FROM singer;\n", "SELECT count(*) FROM singer", True),
        ("```sql\nSELECT name FROM singer;\n```", "SELECT name FROM singer", False),
        ("```\nSELECT name\nFROM singer\n```\nThis lists names.", "SELECT name\nFROM singer", False),
        ("SQL: SELECT name FROM singer", "SELECT name FROM singer", False),
        ("Here is the query with the answer:\nSELECT a FROM t WHERE b = 'x;y'; SELECT 2", "SELECT a FROM t WHERE b = 'x;y'", False),
        ("SELECT a\nFROM t\n\nExplanation: it selects a.", "SELECT a\nFROM t", False),
        ("SELECT item_id\nFROM t\nThis query returns ids", "SELECT item_id\nFROM t", False),
        ("WITH x AS (SELECT 1) SELECT * FROM x", "WITH x AS (SELECT 1) SELECT * FROM x", True),
        ("The answer is 42.", None, False),
        ("", None, False),
        (None, None, False),
        ("```sql\n```", None, False),
    ],
)
def test_extract_sql(raw, sql, pure):
    extraction = extract_sql(raw)
    assert extraction.sql == sql
    assert extraction.pure is pure
