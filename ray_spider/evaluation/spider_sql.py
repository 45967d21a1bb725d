"""Spider's SQL parser: SQL text -> the structured form that Spider's exact-match metric compares.

This reproduces the behaviour of Spider's official ``process_sql.py`` (taoyds/spider), quirks
included, because exact match (EM) is defined by what that parser accepts and how it shapes a
query. It is our own implementation; ``tools/em_agreement.py`` checks it against the official one.

    from ray_spider.evaluation.spider_sql import SqlSchema, parse_sql
    schema = SqlSchema.from_sqlite(Path("database/concert_singer/concert_singer.sqlite"))
    parse_sql("SELECT count(*) FROM singer", schema)   # -> dict, or raises SqlParseError

The structured form (names and nesting exactly as in Spider's ``sql`` field):

    sql         {'select': (distinct, [(agg_id, val_unit), ...]),
                 'from': {'table_units': [table_unit, ...], 'conds': condition},
                 'where': condition, 'groupBy': [col_unit, ...],
                 'orderBy': [] or ('asc'|'desc', [val_unit, ...]), 'having': condition,
                 'limit': None or int, 'intersect' / 'union' / 'except': None or sql}
    table_unit  ('table_unit', '__table__') or ('sql', sql)
    condition   [cond_unit, 'and'|'or', cond_unit, ...]   (flat; may be irregular, see below)
    cond_unit   (negated, op_id, val_unit, val1, val2)     val: float, quoted str, col_unit or sql
    val_unit    (unit_op_id, col_unit, col_unit or None)
    col_unit    (agg_id, '__table.column__' or '__all__', distinct)

Quirks kept on purpose (each changes EM on real predictions):
- Tokens come from nltk's ``word_tokenize`` after quoted strings are pulled out, and every ``'``
  is first turned into ``"``. So ``a='x'`` (no spaces) is one token and fails to parse, an odd
  number of quotes fails, and ``<``/``>`` are split off and glued back to ``<=``/``>=``/``!=``.
- Aliases are collected from every ``X AS Y`` in the whole query (later ones win), including
  column aliases; an alias equal to a table name is an error.
- A SELECT item followed by ``AS name`` fails; JOIN must be a bare ``JOIN`` (no comma, LEFT,
  INNER); a table alias needs ``AS``; ``IS NULL`` fails; HAVING without GROUP BY fails.
- A non-numeric, non-string value is read as a column, stopping at ``,``, ``)``, ``and`` or a
  clause keyword; the rest of that stretch (an ``or``-branch, ``+ 1``...) is silently dropped.
- Two conditions with no AND/OR between them are both kept, side by side, in the flat list.
- Anything after the last clause that the grammar stops at is ignored.
Any failure, whatever its cause, is a parse error (the official tool catches them all).

``word_split`` is our copy of nltk 3.10.3's ``NLTKWordTokenizer`` (``word_tokenize`` with
``preserve_line=True``), frozen at that version on purpose: EM is defined by the tokens the
official parser got, and nltk's plain ``word_tokenize`` also needs the punkt model, a download at
run time. A new nltk release may split some text differently, which would silently move our EM
away from the official per example. Re-check with tools/em_agreement.py before changing the rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ray_spider.evaluation.inputs import read_only_connection

AGG_OPS = ("none", "max", "min", "count", "sum", "avg")
WHERE_OPS = ("not", "between", "=", ">", "<", ">=", "<=", "!=", "in", "like", "is", "exists")
UNIT_OPS = ("none", "-", "+", "*", "/")
SET_OPS = ("intersect", "union", "except")
CLAUSE_KEYWORDS = ("select", "from", "where", "group", "order", "limit", *SET_OPS)
JOIN_KEYWORDS = ("join", "on", "as")
ORDER_DIRECTIONS = ("desc", "asc")
STAR_ID = "__all__"

# A condition ends where a clause, a closing bracket, a statement end or a join word begins.
_CONDITION_END = (*CLAUSE_KEYWORDS, ")", ";", *JOIN_KEYWORDS)
# A column read in a value position runs until one of these (note: 'and' but not 'or').
_VALUE_COLUMN_END = (",", ")", "and", *CLAUSE_KEYWORDS, *JOIN_KEYWORDS)
_LIST_END = (*CLAUSE_KEYWORDS, ")", ";")


class SqlParseError(ValueError):
    """The SQL is outside what Spider's parser accepts."""


# ---------------------------------------------------------------------------------------------
# Schema


@dataclass
class SqlSchema:
    """Lower-cased table -> column names of one database, and the ids the parser emits for them."""

    columns: dict[str, list[str]]
    ids: dict[str, str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.ids = {"*": STAR_ID}
        for table, names in self.columns.items():
            for name in names:
                self.ids[f"{table}.{name}"] = f"__{table}.{name}__"
        for table in self.columns:
            self.ids[table] = f"__{table}__"

    @classmethod
    def from_sqlite(cls, path: Path) -> SqlSchema:
        """Read the schema the way the official tool does: from the database file itself."""
        with read_only_connection(path) as conn:
            tables = [row[0].lower() for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            columns: dict[str, list[str]] = {}
            for table in tables:
                info = conn.execute(f'PRAGMA table_info("{table}")').fetchall()
                columns[table] = [row[1].lower() for row in info]
        return cls(columns)


# ---------------------------------------------------------------------------------------------
# Tokenizer


def _pad(pattern: str) -> tuple[re.Pattern, str]:
    return re.compile(pattern), r" \g<0> "


# nltk's word_tokenize (NLTKWordTokenizer, one line, no sentence split), restricted to text that
# holds no ' or " characters, which is all the parser ever gives it: every rule of nltk's that
# needs a quote character is a no-op there and left out. Order matters, as in nltk.
_WORD_RULES: list[tuple[re.Pattern, str]] = [
    (re.compile(r"([«“‘„]|`+)"), r" \1 "),
    _pad(r"``"),  # a run of 3+ backticks splits into `` and the rest
    (re.compile(r"([^.])(\.)([\]\)}>»”’ ]*)\s*$"), r"\1 \2 \3 "),  # final period
    (re.compile(r"([:,])([^\d])"), r" \1 \2"),  # but not inside numbers like 3,000
    (re.compile(r"([:,])$"), r" \1 "),
    _pad(r"\.{2,}"),
    _pad(r"[;@#$%&]"),
    _pad(r"[\u2012-\u2015]"),
    (re.compile(r"([^.])(\.)([\]\)}>]*)\s*$"), r"\1 \2\3 "),
    _pad(r"[?!]"),
    _pad(r"\*"),
    _pad(r"[\]\[(){}<>]"),
    _pad(r"--"),
]
# Applied after the text is wrapped in spaces, as in nltk.
_LATE_RULES: list[tuple[re.Pattern, str]] = [_pad(r"[»”’]"), (re.compile(r"\s+"), " ")]
# nltk's MacIntyre contractions that need no apostrophe: "cannot" -> "can not", etc.
_CONTRACTIONS = [
    re.compile(r"(?i)\b(can)(not)\b"),
    re.compile(r"(?i)\b(gim)(me)\b"),
    re.compile(r"(?i)\b(gon)(na)\b"),
    re.compile(r"(?i)\b(got)(ta)\b"),
    re.compile(r"(?i)\b(lem)(me)\b"),
    re.compile(r"(?i)\b(wan)(na)(?=\s)"),
]


def word_split(text: str) -> list[str]:
    """nltk ``word_tokenize(text, preserve_line=True)`` for text without ' or " characters."""
    for pattern, repl in _WORD_RULES:
        text = pattern.sub(repl, text)
    text = f" {text} "
    for pattern, repl in _LATE_RULES:
        text = pattern.sub(repl, text)
    for pattern in _CONTRACTIONS:
        text = pattern.sub(r" \1 \2 ", text)
    return text.split()


def _hide_strings(sql: str) -> tuple[str, dict[str, str]]:
    """Swap each quoted string for a placeholder word; single quotes count as double quotes."""
    text = sql.replace("'", '"')
    quotes = [i for i, char in enumerate(text) if char == '"']
    if len(quotes) % 2:
        raise SqlParseError("unbalanced quotes")
    strings = {}
    # Right to left, so the offsets of the quotes still to replace stay valid.
    for end_pos in range(len(quotes) - 1, 0, -2):
        start, end = quotes[end_pos - 1], quotes[end_pos]
        placeholder = f"__val_{start}_{end}__"
        strings[placeholder] = text[start : end + 1]
        text = text[:start] + placeholder + text[end + 1 :]
    return text, strings


def tokenize(sql: str) -> list[str]:
    """Lower-cased tokens; quoted strings come back whole (with their quotes, case kept)."""
    text, strings = _hide_strings(str(sql))
    tokens = [word.lower() for word in word_split(text)]
    tokens = [strings.get(token, token) for token in tokens]
    # The word splitter cuts '<', '>' (brackets to it) and '!' off a following '='; glue them
    # back. Right to left over the original positions, as the official tool does; a '=' at
    # position 0 looks at the last token (Python's index -1), which we keep.
    equals = [i for i, token in enumerate(tokens) if token == "="]
    for i in reversed(equals):
        before = tokens[i - 1]
        if before in ("!", ">", "<"):
            tokens = tokens[: i - 1] + [before + "="] + tokens[i + 1 :]
    return tokens


def collect_aliases(tokens: list[str], schema: SqlSchema) -> dict[str, str]:
    """Every ``X as Y`` anywhere in the query maps Y -> X; every table maps to itself."""
    aliases = {}
    for i, token in enumerate(tokens):
        if token == "as":
            if i + 1 >= len(tokens):
                raise SqlParseError("'as' at the end of the query")
            aliases[tokens[i + 1]] = tokens[i - 1]  # i == 0 reads the last token, as upstream
    for table in schema.columns:
        if table in aliases:
            raise SqlParseError(f"alias {table!r} is also a table name")
        aliases[table] = table
    return aliases


# ---------------------------------------------------------------------------------------------
# Parser


class _Parser:
    """Recursive descent over a token list; ``pos`` is the next token to read.

    ``tok()`` fails past the end, ``peek()`` gives None there: which one each step uses decides
    which truncated queries fail, so it follows the official parser step by step.
    """

    def __init__(self, tokens: list[str], aliases: dict[str, str], schema: SqlSchema):
        self.tokens = tokens
        self.aliases = aliases
        self.schema = schema
        self.pos = 0

    # -- token access --------------------------------------------------------------------------

    def tok(self) -> str:
        if self.pos >= len(self.tokens):
            raise SqlParseError("unexpected end of query")
        return self.tokens[self.pos]

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, word: str) -> None:
        if self.tok() != word:
            raise SqlParseError(f"expected {word!r}, got {self.tok()!r} at token {self.pos}")
        self.pos += 1

    def take_if(self, word: str) -> bool:
        if self.peek() == word:
            self.pos += 1
            return True
        return False

    def take_if_strict(self, word: str) -> bool:
        """Like take_if, but reading past the end fails (the official code reads unguarded)."""
        if self.tok() == word:
            self.pos += 1
            return True
        return False

    def at_list_end(self) -> bool:
        return self.peek() is None or self.peek() in _LIST_END

    # -- names ---------------------------------------------------------------------------------

    def table_of(self, alias: str) -> str:
        if alias not in self.aliases:
            raise SqlParseError(f"unknown table or alias {alias!r}")
        return self.aliases[alias]

    def schema_id(self, key: str) -> str:
        if key not in self.schema.ids:
            raise SqlParseError(f"unknown table or column {key!r}")
        return self.schema.ids[key]

    def column(self, from_tables: list[str] | None) -> str:
        """A column id: ``*``, ``alias.column``, or a bare column found in the FROM tables."""
        word = self.tok()
        self.pos += 1
        if word == "*":
            return STAR_ID
        if "." in word:
            parts = word.split(".")
            if len(parts) != 2:
                raise SqlParseError(f"bad column {word!r}")
            return self.schema_id(f"{self.table_of(parts[0])}.{parts[1]}")
        if not from_tables:
            raise SqlParseError(f"column {word!r} with no table to look it up in")
        for name in from_tables:  # the first FROM table that has the column wins
            table = self.table_of(name)
            if table not in self.schema.columns:
                raise SqlParseError(f"unknown table {table!r}")
            if word in self.schema.columns[table]:
                return self.schema.ids[f"{table}.{word}"]
        raise SqlParseError(f"unknown column {word!r}")

    def col_unit(self, from_tables: list[str] | None) -> tuple:
        """``[(] agg ( [distinct] col )`` or ``[(] [distinct] col [)]``."""
        bracketed = self.take_if_strict("(")
        word = self.tok()
        if word in AGG_OPS:
            self.pos += 1
            if self.peek() != "(":
                raise SqlParseError(f"expected '(' after {word!r}")
            self.pos += 1
            distinct = self.take_if_strict("distinct")
            col = self.column(from_tables)
            if self.peek() != ")":
                raise SqlParseError(f"expected ')' after {word}(...")
            self.pos += 1
            # Upstream returns here without closing an opening bracket: "(max(x))" leaves a ')'.
            return (AGG_OPS.index(word), col, distinct)
        distinct = self.take_if_strict("distinct")
        col = self.column(from_tables)
        if bracketed:
            self.take(")")
        return (0, col, distinct)

    def val_unit(self, from_tables: list[str] | None) -> tuple:
        """``col_unit [op col_unit]``, optionally in brackets."""
        bracketed = self.take_if_strict("(")
        left = self.col_unit(from_tables)
        op, right = 0, None
        if self.peek() in UNIT_OPS:
            op = UNIT_OPS.index(self.tok())
            self.pos += 1
            right = self.col_unit(from_tables)
        if bracketed:
            self.take(")")
        return (op, left, right)

    # -- values and conditions ---------------------------------------------------------------

    def value(self, from_tables: list[str] | None):
        """A subquery, a quoted string, a number, or else a column."""
        start = self.pos
        bracketed = self.take_if_strict("(")
        word = self.tok()
        if word == "select":
            val = self.query()
        elif '"' in word:
            val = word
            self.pos += 1
        else:
            try:
                val = float(word)
                self.pos += 1
            except ValueError:
                val = self.column_value(start, from_tables)
        if bracketed:
            self.take(")")
        return val

    def column_value(self, start: int, from_tables: list[str] | None) -> tuple:
        """A column in value position: parsed from a cut-out stretch whose unparsed tail is lost.

        The stretch starts at ``start`` (before any '(' already taken, so a bracketed column
        value fails) and runs to the next stop word.
        """
        end = self.pos
        while end < len(self.tokens) and self.tokens[end] not in _VALUE_COLUMN_END:
            end += 1
        piece = _Parser(self.tokens[start:end], self.aliases, self.schema)
        val = piece.col_unit(from_tables)
        self.pos = end
        return val

    def condition(self, from_tables: list[str] | None) -> list:
        conds: list = []
        while self.peek() is not None:
            left = self.val_unit(from_tables)
            negated = self.take_if_strict("not")
            op = self.peek()
            if op not in WHERE_OPS:
                raise SqlParseError(f"expected a comparison, got {op!r}")
            self.pos += 1
            op_id = WHERE_OPS.index(op)
            val1 = self.value(from_tables)
            val2 = None
            if op == "between":
                self.take("and")
                val2 = self.value(from_tables)
            conds.append((negated, op_id, left, val1, val2))
            nxt = self.peek()
            if nxt is not None and nxt in _CONDITION_END:
                break
            # No connective: the next condition follows directly, with none recorded between.
            if nxt in ("and", "or"):
                conds.append(nxt)
                self.pos += 1
        return conds

    # -- clauses -------------------------------------------------------------------------------

    def select_clause(self, from_tables: list[str]) -> tuple:
        self.take("select")
        distinct = self.take_if("distinct")
        items = []
        while self.peek() is not None and self.peek() not in CLAUSE_KEYWORDS:
            agg = 0
            if self.tok() in AGG_OPS:
                agg = AGG_OPS.index(self.tok())
                self.pos += 1
            items.append((agg, self.val_unit(from_tables)))
            self.take_if(",")  # a missing comma is not an error upstream
        return (distinct, items)

    def from_clause(self, start: int) -> tuple[list, list, list[str]]:
        """Table units, join conditions and the names bare columns resolve against."""
        if "from" not in self.tokens[start:]:
            raise SqlParseError("no FROM clause")
        self.pos = self.tokens.index("from", start) + 1
        units: list = []
        conds: list = []
        tables: list[str] = []
        while self.peek() is not None:
            bracketed = self.take_if("(")
            if self.tok() == "select":
                units.append(("sql", self.query()))
            else:
                self.take_if("join")
                table_id, name = self.table_unit()
                units.append(("table_unit", table_id))
                tables.append(name)
            if self.take_if("on"):
                new = self.condition(tables)
                if conds:
                    conds.append("and")
                conds.extend(new)
            if bracketed:
                self.take(")")
            if self.peek() is not None and self.peek() in _LIST_END:
                break
        return units, conds, tables

    def table_unit(self) -> tuple[str, str]:
        name = self.table_of(self.tok())
        has_alias = self.pos + 1 < len(self.tokens) and self.tokens[self.pos + 1] == "as"
        self.pos += 3 if has_alias else 1
        return self.schema_id(name), name

    def group_by(self, from_tables: list[str]) -> list:
        if not self.take_if("group"):
            return []
        self.take("by")
        units = []
        while not self.at_list_end():
            units.append(self.col_unit(from_tables))
            if not self.take_if(","):
                break
        return units

    def order_by(self, from_tables: list[str]) -> list | tuple:
        if not self.take_if("order"):
            return []
        self.take("by")
        direction = "asc"
        units = []
        while not self.at_list_end():
            units.append(self.val_unit(from_tables))
            if self.peek() in ORDER_DIRECTIONS:
                direction = self.tok()  # one direction for the whole clause: the last one given
                self.pos += 1
            if not self.take_if(","):
                break
        return (direction, units)

    def limit(self) -> int | None:
        if not self.take_if("limit"):
            return None
        number = self.tok()
        self.pos += 1
        try:
            return int(number)
        except ValueError:
            raise SqlParseError(f"LIMIT needs an integer, got {number!r}") from None

    def skip_semicolons(self) -> None:
        while self.take_if(";"):
            pass

    def query(self) -> dict:
        """One SELECT (optionally in brackets) and any INTERSECT/UNION/EXCEPT that follows."""
        start = self.pos
        bracketed = self.take_if_strict("(")
        select_at = self.pos
        # FROM first: bare column names in SELECT resolve against its tables.
        units, join_conds, tables = self.from_clause(start)
        from_end = self.pos
        self.pos = select_at
        select = self.select_clause(tables)
        self.pos = from_end  # whatever SELECT did not consume before FROM is skipped
        sql = {"select": select, "from": {"table_units": units, "conds": join_conds}}
        sql["where"] = self.condition(tables) if self.take_if("where") else []
        sql["groupBy"] = self.group_by(tables)
        sql["having"] = self.condition(tables) if self.take_if("having") else []
        sql["orderBy"] = self.order_by(tables)
        sql["limit"] = self.limit()
        self.skip_semicolons()
        if bracketed:
            self.take(")")
        self.skip_semicolons()
        for op in SET_OPS:
            sql[op] = None
        if self.peek() in SET_OPS:
            op = self.tok()
            self.pos += 1
            sql[op] = self.query()
        return sql


def parse_sql(sql: str, schema: SqlSchema) -> dict:
    """Spider's structured form of ``sql``; raises SqlParseError where the official parser fails.

    Trailing tokens the grammar does not reach are ignored, as upstream.
    """
    try:
        tokens = tokenize(sql)
        parser = _Parser(tokens, collect_aliases(tokens, schema), schema)
        return parser.query()
    except SqlParseError:
        raise
    except Exception as exc:  # upstream counts any failure as "does not parse"
        # e.g. RecursionError on absurdly nested brackets; keep the cause in the message.
        raise SqlParseError(f"{type(exc).__name__}: {exc}") from exc
