"""SQL extraction: exactly one SQL statement out of a raw model output, or "no SQL".

    extract_sql("```sql\\nSELECT 1;\\n```")  ->  Extraction(sql="SELECT 1", pure=False)
    one_line("SELECT name -- the name\\nFROM singer")  ->  "SELECT name FROM singer"

Never raises. ``pure`` records whether the raw output already was a bare SQL statement (an optional
trailing semicolon and whitespace aside): the playbook's SQL-only stability metric.

Where SQL starts, where its first statement ends and its one-line form are decided by sqlglot's
SQLite tokenizer (a maintained lexer that knows comments, strings with doubled quotes and quoted
identifiers), not by regular expressions: a ``;`` or ``--`` inside a comment or string must neither
end the statement nor, once the query is flattened to one line, comment out the rest of it. Only
the surroundings are matched by pattern: a Markdown fence, a "SQL:" label, lines of prose.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlglot.dialects.sqlite import SQLite
from sqlglot.errors import TokenError

_FENCE = re.compile(r"```[ \t]*(?:sql|sqlite)?[ \t]*\n?(.*?)(?:```|$)", re.IGNORECASE | re.DOTALL)
# Candidates only: the tokenizer then rejects those inside a comment ("-- Select the singers ...").
_SQL_START = re.compile(r"\bSELECT\b|\bWITH\s+\w+\s+AS\s*\(", re.IGNORECASE)
# A line that starts like prose ends the statement: "This query ...", "Explanation: ...", "# Notes".
# (A line starting with "--" is an SQL comment, part of the statement as far as the tokenizer goes.)
_PROSE_LINE = re.compile(r"^\s*(?:(?:this|the|here|note|explanation|it|above|which|these|i|to|output|result)\b|#)", re.IGNORECASE)
_LABEL = re.compile(r"^\s*(?:sql(?:ite)?\s*(?:query)?|query|answer)\s*:\s*", re.IGNORECASE)
_TOKENIZER = SQLite.Tokenizer


@dataclass(frozen=True)
class Extraction:
    sql: str | None  # None = no SQL found
    pure: bool  # the raw output was only the SQL statement


def _tokens(text: str) -> list | None:
    """sqlglot tokens of ``text`` (comments are attached to tokens, not tokens), None when it does not
    lex (an unterminated string or comment: prose with an apostrophe, or broken SQL)."""
    try:
        return _TOKENIZER().tokenize(text)
    except TokenError:
        return None


def _is_code(text: str, position: int) -> bool:
    """Whether a keyword at ``position`` would be SQL code, not inside a comment or string of what
    precedes it. Lexed from the start of the text, else (prose with an apostrophe before it) from
    the start of its line; a prefix that lexes neither way is prose, so the keyword is code unless
    it sits inside an unclosed /* comment."""
    line_start = text.rfind("\n", 0, position) + 1
    for begin in (0, line_start):
        prefix = text[begin:position]
        tokens = _tokens(prefix + "SELECT")
        if tokens is not None:
            return bool(tokens) and tokens[-1].start == len(prefix)
        if prefix.rfind("/*") > prefix.rfind("*/"):
            return False
    return True


def _first_statement(text: str) -> str:
    """The first statement of ``text`` (which starts with SQL): its lines up to a blank or prose line,
    cut at the first ``;`` token and after the last token (a trailing comment is not the query)."""
    lines = text.split("\n")
    kept = [lines[0]]
    for line in lines[1:]:
        if not line.strip() or _PROSE_LINE.match(line):
            break
        kept.append(line)
    for count in range(len(kept), 0, -1):  # prose the pattern missed ("Let's ...") may not lex: drop it
        candidate = "\n".join(kept[:count])
        tokens = _tokens(candidate)
        if tokens:
            end = next((token.start for token in tokens if token.token_type.name == "SEMICOLON"), None)
            code = [token for token in tokens if end is None or token.start < end]
            return candidate[: code[-1].end + 1] if code else ""
    return "\n".join(kept)  # broken SQL (an unterminated string): kept as written, it scores as an error


def extract_sql(raw: str | None) -> Extraction:
    if not raw or not raw.strip():
        return Extraction(None, False)
    text = raw
    fence = _FENCE.search(text)
    if fence and _SQL_START.search(fence.group(1)):
        text = fence.group(1)
    text = _LABEL.sub("", text.strip())
    start = next((match.start() for match in _SQL_START.finditer(text) if _is_code(text, match.start())), None)
    if start is None:
        return Extraction(None, False)
    statement = _first_statement(text[start:]).strip()
    if not statement:
        return Extraction(None, False)
    pure = raw.strip().rstrip(";").strip() == statement
    return Extraction(statement, pure)


def one_line(sql: str) -> str:
    """``sql`` on one line with the same meaning: comments dropped, whitespace between tokens made one
    space, strings and quoted identifiers kept as written (a line break inside one becomes a space:
    the one-query-per-line files have no other way to hold it). Plain whitespace folding would turn
    ``SELECT a -- note\\nFROM t`` into a query commented out after ``a``."""
    tokens = _tokens(sql)
    if tokens is None:  # does not lex: broken SQL, an error whichever way it is folded
        return " ".join(sql.split())
    pieces = []
    for previous, token in zip([None, *tokens], tokens):
        if previous is not None and token.start > previous.end + 1:
            pieces.append(" ")
        pieces.append(" ".join(sql[token.start : token.end + 1].splitlines()) if "\n" in sql[token.start : token.end + 1] else sql[token.start : token.end + 1])
    return "".join(pieces)
