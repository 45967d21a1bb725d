import pytest

from ray_spider.evaluation.extract import extract_sql, one_line


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


@pytest.mark.parametrize(
    ("raw", "sql", "flat"),
    [
        # a comment before the query: its "Select" is not where the SQL starts
        ("-- Select the singers older than 40\nSELECT Name FROM singer WHERE Age > 40", "SELECT Name FROM singer WHERE Age > 40", "SELECT Name FROM singer WHERE Age > 40"),
        ("/* Select the old ones */ SELECT Name FROM singer", "SELECT Name FROM singer", "SELECT Name FROM singer"),
        # a ';' inside a comment does not end the statement
        ("SELECT Name FROM singer -- names only; no ages\nWHERE Age > 40", "SELECT Name FROM singer -- names only; no ages\nWHERE Age > 40", "SELECT Name FROM singer WHERE Age > 40"),
        # a '--' comment mid-query must not comment out the rest once flattened
        ("SELECT Name -- the singer name\nFROM singer\nWHERE Age > 40", "SELECT Name -- the singer name\nFROM singer\nWHERE Age > 40", "SELECT Name FROM singer WHERE Age > 40"),
        ("SELECT Name\n-- only the old ones\nFROM singer WHERE Age > 40;", "SELECT Name\n-- only the old ones\nFROM singer WHERE Age > 40", "SELECT Name FROM singer WHERE Age > 40"),
        # strings and quoted identifiers keep their ';', '--' and spacing
        ("SELECT a FROM t WHERE b = 'x -- y;  z'; SELECT 2", "SELECT a FROM t WHERE b = 'x -- y;  z'", "SELECT a FROM t WHERE b = 'x -- y;  z'"),
        ('SELECT "a;b", [c  d] FROM t', 'SELECT "a;b", [c  d] FROM t', 'SELECT "a;b", [c  d] FROM t'),
        ("SELECT name FROM t WHERE n LIKE '%it''s%'", "SELECT name FROM t WHERE n LIKE '%it''s%'", "SELECT name FROM t WHERE n LIKE '%it''s%'"),
        # a trailing comment is not part of the query; prose with an apostrophe after it is cut
        ("SELECT a FROM t -- done", "SELECT a FROM t", "SELECT a FROM t"),
        ("Here's the query:\nSELECT a\nFROM t\nLet's check it.", "SELECT a\nFROM t", "SELECT a FROM t"),
        ("```sql\n-- Count them\nSELECT count(*)\nFROM singer;\n```", "SELECT count(*)\nFROM singer", "SELECT count(*) FROM singer"),
        ("-- no query here, select nothing", None, None),
    ],
)
def test_extraction_lexes_sql(raw, sql, flat):
    extraction = extract_sql(raw)
    assert extraction.sql == sql
    assert (one_line(extraction.sql) if extraction.sql else None) == flat


def test_one_line_keeps_meaning_of_a_broken_query():
    assert one_line("SELECT a FROM t WHERE b = 'open\n  string") == "SELECT a FROM t WHERE b = 'open string"
