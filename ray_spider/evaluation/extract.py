"""SQL extraction: exactly one SQL statement out of a raw model output, or "no SQL".

    extract_sql("```sql\\nSELECT 1;\\n```")  ->  Extraction(sql="SELECT 1", pure=False)

Never raises. ``pure`` records whether the raw output already was a bare SQL statement (an optional
trailing semicolon and whitespace aside): the playbook's SQL-only stability metric.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_FENCE = re.compile(r"```[ \t]*(?:sql|sqlite)?[ \t]*\n?(.*?)(?:```|$)", re.IGNORECASE | re.DOTALL)
_SQL_START = re.compile(r"\bSELECT\b|\bWITH\s+\w+\s+AS\s*\(", re.IGNORECASE)
# A line that starts like prose ends the statement: "This query ...", "Explanation: ...".
_PROSE_LINE = re.compile(
    r"^\s*(?:(?:this|the|here|note|explanation|it|above|which|these|i|to|output|result)\b|--|#)", re.IGNORECASE
)
_LABEL = re.compile(r"^\s*(?:sql(?:ite)?\s*(?:query)?|query|answer)\s*:\s*", re.IGNORECASE)


@dataclass(frozen=True)
class Extraction:
    sql: str | None  # None = no SQL found
    pure: bool  # the raw output was only the SQL statement


def _strip_trailing_semicolon(text: str) -> str:
    return text.strip().rstrip(";").strip()


def _cut_at_top_level_semicolon(text: str) -> str:
    """Text up to the first ';' outside quotes (one statement only)."""
    quote = None
    for position, char in enumerate(text):
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"`":
            quote = char
        elif char == ";":
            return text[:position]
    return text


def _cut_trailing_prose(text: str) -> str:
    kept = []
    for position, line in enumerate(text.split("\n")):
        if position and (not line.strip() or _PROSE_LINE.match(line)):
            break
        kept.append(line)
    return "\n".join(kept)


def extract_sql(raw: str | None) -> Extraction:
    if not raw or not raw.strip():
        return Extraction(None, False)
    text = raw
    fence = _FENCE.search(text)
    if fence and _SQL_START.search(fence.group(1)):
        text = fence.group(1)
    text = _LABEL.sub("", text.strip())
    start = _SQL_START.search(text)
    if not start:
        return Extraction(None, False)
    statement = _cut_at_top_level_semicolon(text[start.start():])
    statement = _cut_trailing_prose(statement).strip()
    if not statement:
        return Extraction(None, False)
    pure = _strip_trailing_semicolon(raw) == statement
    return Extraction(statement, pure)
