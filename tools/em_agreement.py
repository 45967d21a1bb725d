"""Agreement of ray_spider's exact match (EM) and hardness with the official Spider evaluator.

Runs both on the same (gold, pred, db_id) triples and reports, per source of pairs, how often
they agree on EM, on the gold's hardness, on the pred's hardness, and on the parse itself
(official ``get_sql`` vs our ``parse_sql``: same structure, or both fail). Not run in CI.

    git -C /work/.mirror/taoyds+spider/repo archive HEAD evaluation.py process_sql.py \
        | tar -x -C /tmp/spider_official            # (mkdir it first)
    pip install nltk==3.10.3                         # for the official code only (the nltk our copy freezes)
    python tools/em_agreement.py --official /tmp/spider_official --spider $SPIDER_DIR \
        [--preds FILE[:GOLD_FILE] ...] [--perturbations 8000] [--seed 0] [--show 15]

Sources: dev-972 gold against itself; usable train gold against itself and against other gold
of the same database; each ``--preds`` file (one SQL per line; aligned to GOLD_FILE
"SQL<TAB>db_id" if given, else to dev_gold.sql when it has as many lines, else each line is
paired with the nearest dev gold whose database it parses against); and seeded perturbations
of dev and train gold (column swaps, ops, aggregates, values, dropped clauses, case,
whitespace, quotes, aliases, join order, DISTINCT, LIMIT, nested edits, garbage, truncation,
prose around the SQL, ...).

How the official code is run here:
- nltk's punkt model cannot be downloaded on this machine, so the official ``word_tokenize`` is
  called with ``preserve_line=True`` (no sentence split first). The two differ only where punkt
  would end a sentence inside the SQL ("... singer. Then ..."), which the parser rejects either
  way.
- As in the official main loop, a pred that fails to parse becomes the empty query (never a
  match); where the official code crashes after parsing (an unhashable or unsortable nested
  query, an irregular condition list), the pair counts as not matched ("crash" in the report).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import random
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray_spider.evaluation.exact_match import ExactMatcher, hardness_of
from ray_spider.evaluation.spider_sql import SqlParseError, parse_sql, tokenize

CRASH = "crash"
FAIL = "fail"
EMPTY_SQL = {
    "except": None,
    "from": {"conds": [], "table_units": []},
    "groupBy": [],
    "having": [],
    "intersect": None,
    "limit": None,
    "orderBy": [],
    "select": [False, []],
    "union": None,
    "where": [],
}


@dataclass(frozen=True)
class Pair:
    source: str
    kind: str
    db_id: str
    gold: str
    pred: str


# ---------------------------------------------------------------------------------------------
# Official side


class Official:
    """The official evaluation.py / process_sql.py, imported from a checkout."""

    def __init__(self, checkout: Path, db_dir: Path, tables_json: Path, tokenizer: str = "line"):
        import nltk
        from nltk.tokenize import TreebankWordTokenizer

        sys.path.insert(0, str(checkout))
        self.psql = importlib.import_module("process_sql")
        self.ev = importlib.import_module("evaluation")
        # punkt is not available: tokenize as one line (see module docstring).
        if tokenizer == "line":
            self.psql.word_tokenize = lambda text: nltk.word_tokenize(text, preserve_line=True)
        else:  # the older Treebank tokenizer: differs on '*', unicode quotes, dashes, '..'
            self.psql.word_tokenize = TreebankWordTokenizer().tokenize
        self.db_dir = db_dir
        self.kmaps = self.ev.build_foreign_key_map_from_json(str(tables_json))
        self._schemas: dict = {}

    def schema(self, db_id: str):
        if db_id not in self._schemas:
            path = self.db_dir / db_id / f"{db_id}.sqlite"
            self._schemas[db_id] = self.psql.Schema(self.psql.get_schema(str(path)))
        return self._schemas[db_id]

    def tokens(self, sql: str):
        try:
            return self.psql.tokenize(sql)
        except Exception:
            return FAIL

    def parse(self, sql: str, db_id: str):
        try:
            return self.psql.get_sql(self.schema(db_id), sql)
        except Exception:
            return FAIL

    def hardness(self, sql_struct) -> str:
        try:
            return self.ev.Evaluator().eval_hardness(sql_struct)
        except Exception:
            return CRASH

    def exact(self, gold: str, pred: str, db_id: str):
        """(gold hardness, EM as True/False/'crash') the way the official main loop gets them."""
        schema = self.schema(db_id)
        g_sql = self.psql.get_sql(schema, gold)
        hardness = self.ev.Evaluator().eval_hardness(g_sql)
        p_sql = self.parse(pred, db_id)
        if p_sql is FAIL:
            p_sql = copy.deepcopy(EMPTY_SQL)
        try:
            kmap = self.kmaps[db_id]
            g_valid = self.ev.build_valid_col_units(g_sql["from"]["table_units"], schema)
            g_sql = self.ev.rebuild_sql_col(g_valid, self.ev.rebuild_sql_val(g_sql), kmap)
            p_valid = self.ev.build_valid_col_units(p_sql["from"]["table_units"], schema)
            p_sql = self.ev.rebuild_sql_col(p_valid, self.ev.rebuild_sql_val(p_sql), kmap)
            return hardness, bool(self.ev.Evaluator().eval_exact_match(p_sql, g_sql))
        except Exception:
            return hardness, CRASH


# ---------------------------------------------------------------------------------------------
# Our side


def ours_parse(sql: str, matcher: ExactMatcher, db_id: str):
    try:
        return parse_sql(sql, matcher.schema(db_id))
    except SqlParseError:
        return FAIL


def ours_tokens(sql: str):
    try:
        return tokenize(sql)
    except SqlParseError:
        return FAIL


def ours_hardness(sql_struct) -> str:
    try:
        return hardness_of(sql_struct)
    except Exception:
        return CRASH


# ---------------------------------------------------------------------------------------------
# Pair sources


def read_gold(path: Path, db_dir: Path) -> list[tuple[str, str]]:
    """(sql, db_id) lines whose database exists."""
    out = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        sql, _, db_id = line.strip().rpartition("\t")
        if (db_dir / db_id / f"{db_id}.sqlite").is_file():
            out.append((sql.strip(), db_id.strip()))
    return out


def self_pairs(source: str, golds: list[tuple[str, str]]) -> list[Pair]:
    return [Pair(source, "self", db, sql, sql) for sql, db in golds]


def cross_pairs(golds: list[tuple[str, str]], rng: random.Random, limit: int) -> list[Pair]:
    """Gold of one question as the 'prediction' for another question on the same database."""
    by_db = defaultdict(list)
    for sql, db in golds:
        by_db[db].append(sql)
    pairs = []
    for sql, db in rng.sample(golds, min(limit, len(golds))):
        other = rng.choice(by_db[db])
        pairs.append(Pair("train-cross", "cross", db, sql, other))
    return pairs


def pred_file_pairs(spec: str, dev: list[tuple[str, str]], all_dev: list[tuple[str, str]], official: Official, db_dir: Path) -> list[Pair]:
    path_text, _, gold_text = spec.partition(":")
    path = Path(path_text)
    preds = [line.strip() for line in path.read_text().split("\n")]
    if preds and preds[-1] == "":
        preds.pop()
    name = path.stem
    if gold_text:
        golds = [(sql, db) for sql, db in (line.rsplit("\t", 1) for line in Path(gold_text).read_text().splitlines() if line.strip())]
        return [Pair(name, "aligned", db, g, p) for (g, db), p in zip(golds, preds) if (db_dir / db / f"{db}.sqlite").is_file()]
    if len(preds) == len(all_dev):
        return [Pair(name, "aligned", db, g, p) for (g, db), p in zip(all_dev, preds) if (db_dir / db / f"{db}.sqlite").is_file()]
    # Unaligned: find a database the pred parses against, near its position in dev order.
    pairs = []
    for i, pred in enumerate(preds):
        centre = min(i, len(dev) - 1)
        order = sorted(range(len(dev)), key=lambda j: abs(j - centre))
        db_order = list(dict.fromkeys(dev[j][1] for j in order))
        chosen = next((db for db in db_order[:8] if official.parse(pred, db) is not FAIL), dev[centre][1])
        gold = next(dev[j][0] for j in order if dev[j][1] == chosen)
        pairs.append(Pair(name, "unaligned", chosen, gold, pred))
    return pairs


# ---------------------------------------------------------------------------------------------
# Perturbations: crude string edits that hit the parser's and the metric's corners.

_CLAUSE_RE = r"(?=\b(?:where|group\s+by|having|order\s+by|limit|intersect|union|except)\b|\)|$)"
_AGGS = ["count", "max", "min", "sum", "avg"]
_OPS = ["=", "!=", ">", "<", ">=", "<=", "<>", "==", " like ", " not like ", " in "]
_PROSE = [
    ("Here is the SQL query: ", ""),
    ("", " This returns the answer."),
    ("```sql\n", "\n```"),
    ("SQL: ", ""),
    ("", ";"),
    ("", " ;"),
    ("", "."),
    ("", ";;"),
    ("The answer is ", "."),
    ("", "\n-- comment"),
    ("", " /* note */"),
    ("", "\nExplanation: the query selects rows."),
]
_GARBAGE = [
    "",
    " ",
    "SELECT",
    "select from",
    "SELECT * FROM",
    "I don't know",
    "SELECT 1",
    "select count(*)",
    "null",
    "SELECT * FROM nonexistent_table",
    "((((",
    "SELECT ' FROM x",
    ";",
    "SELECT * FROM singer AS T1 JOIN",
    "union select",
    "select * from t1 as",
    "as",
    "= = =",
    "select a.b.c from d",
]


def split_top_level(text: str) -> list[str]:
    """Split at the commas outside parentheses (a SELECT list into its items); also used by ex_agreement."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return parts + [current]


def _split_select_items(sql: str) -> tuple[str, list[str], str] | None:
    match = re.match(r"(?is)(\s*select\s+(?:distinct\s+)?)(.*?)(\s+from\s.*)$", sql)
    if not match:
        return None
    head, body, tail = match.groups()
    return head, [item.strip() for item in split_top_level(body)], tail


def _edit_one_select_item(sql: str, rng, edit) -> str | None:
    """Replace one SELECT item, picked with rng, by ``edit(item)``; None when there is no select list."""
    parts = _split_select_items(sql)
    if not parts:
        return None
    head, items, tail = parts
    i = rng.randrange(len(items))
    items[i] = edit(items[i])
    return head + ", ".join(items) + tail


def _sub_nth(pattern: str, repl, text: str, rng: random.Random, flags=re.I) -> str | None:
    matches = list(re.finditer(pattern, text, flags))
    if not matches:
        return None
    m = rng.choice(matches)
    new = repl(m) if callable(repl) else m.expand(repl)
    return text[: m.start()] + new + text[m.end() :]


def _tokens_ws(sql: str) -> list[str]:
    return re.findall(r"\S+", sql)


def perturb(sql: str, schema_cols: dict[str, list[str]], rng: random.Random) -> tuple[str, str | None]:
    """One random edit of ``sql``: (kind, new sql or None if the edit does not apply)."""
    kind = rng.choice(PERTURBATIONS)
    return kind, _EDITS[kind](sql, schema_cols, rng)


def _swap_select(sql, _cols, rng):
    parts = _split_select_items(sql)
    if not parts or len(parts[1]) < 2:
        return None
    head, items, tail = parts
    i, j = rng.sample(range(len(items)), 2)
    items[i], items[j] = items[j], items[i]
    return head + " , ".join(items) + tail


def _dup_select(sql, _cols, rng):
    parts = _split_select_items(sql)
    if not parts:
        return None
    head, items, tail = parts
    return head + ", ".join(items + [rng.choice(items)]) + tail


def _drop_select(sql, _cols, rng):
    parts = _split_select_items(sql)
    if not parts or len(parts[1]) < 2:
        return None
    head, items, tail = parts
    items.pop(rng.randrange(len(items)))
    return head + ", ".join(items) + tail


def _change_op(sql, _cols, rng):
    return _sub_nth(r"\s*(!=|>=|<=|<>|=|>|<|\blike\b|\bin\b)\s*", lambda m: f" {rng.choice(_OPS).strip()} ", sql, rng)


def _change_agg(sql, _cols, rng):
    return _sub_nth(r"\b(count|max|min|sum|avg)\s*\(", lambda m: rng.choice(_AGGS) + "(", sql, rng)


def _add_agg(sql, cols, rng):
    def edit(item):
        return re.sub(r"^\w+\s*\((.*)\)$", r"\1", item) if "(" in item else f"{rng.choice(_AGGS)}({item})"

    return _edit_one_select_item(sql, rng, edit)


def _change_value(sql, _cols, rng):
    if rng.random() < 0.5:
        return _sub_nth(r"(?<![\w.])\d+(\.\d+)?(?![\w.])", lambda m: str(rng.choice([0, 1, 3, 10, 2.5, -4, 1e3])), sql, rng)
    return _sub_nth(r"(['\"])[^'\"]*\1", lambda m: rng.choice(["'x'", '"Y Z"', "'%a%'", "''", "'it''s'", '"a,b"', "'A.B'"]), sql, rng)


def _drop_clause(sql, _cols, rng):
    clause = rng.choice([r"where", r"group\s+by", r"having", r"order\s+by", r"limit", r"(?:intersect|union|except)"])
    if clause.startswith("(?:inter"):
        return _sub_nth(r"\s+\b(intersect|union|except)\b.*$", "", sql, rng, re.I | re.S)
    return _sub_nth(rf"\s+\b{clause}\b.*?{_CLAUSE_RE}", " ", sql, rng, re.I | re.S)


def _case(sql, _cols, rng):
    mode = rng.randrange(3)
    if mode == 0:
        return sql.upper()
    if mode == 1:
        return sql.lower()
    return " ".join(tok.upper() if rng.random() < 0.5 else tok.lower() for tok in _tokens_ws(sql))


def _whitespace(sql, _cols, rng):
    mode = rng.randrange(6)
    if mode == 0:
        return re.sub(r"\s+", " ", sql)
    if mode == 1:
        return re.sub(r"\s*(=|!=|>=|<=|>|<)\s*", r"\1", sql)
    if mode == 2:
        return re.sub(r"\s*,\s*", ",", sql)
    if mode == 3:
        return re.sub(r"\s+", lambda m: rng.choice(["\n", "\t", "  ", " \n "]), sql)
    if mode == 4:
        return re.sub(r"\(\s*", "( ", re.sub(r"\s*\)", " )", sql))
    return "  " + sql + "  \n"


def _quotes(sql, _cols, rng):
    mode = rng.randrange(4)
    if mode == 0:
        return sql.translate(str.maketrans({"'": '"', '"': "'"}))
    if mode == 1:
        return _sub_nth(r"['\"]", "", sql, rng)
    if mode == 2:
        return _sub_nth(r"(['\"])([^'\"]*)\1", lambda m: f"`{m.group(2)}`", sql, rng)
    return _sub_nth(r"\b(T\d)\.(\w+)", lambda m: f'{m.group(1)}."{m.group(2)}"', sql, rng)


def _alias_rename(sql, cols, rng):
    aliases = sorted(set(re.findall(r"(?i)\bas\s+(\w+)", sql)))
    if not aliases:
        return None
    old = rng.choice(aliases)
    new = rng.choice(["x", "a1", "tt", "alias_" + old.lower(), old.swapcase(), rng.choice(list(cols) or ["y"]), "T9"])
    return re.sub(rf"\b{re.escape(old)}\b", new, sql)


def _drop_as(sql, _cols, rng):
    return _sub_nth(r"\s+as\s+", " ", sql, rng)


def _join_order(sql, _cols, rng):
    m = re.search(r"(?is)\bfrom\s+(\w+(?:\s+as\s+\w+)?)\s+join\s+(\w+(?:\s+as\s+\w+)?)", sql)
    if not m:
        return None
    return sql[: m.start(1)] + m.group(2) + " JOIN " + m.group(1) + sql[m.end(2) :]


def _on_swap(sql, _cols, rng):
    return _sub_nth(r"\bon\s+([\w.]+)\s*=\s*([\w.]+)", lambda m: f"ON {m.group(2)} = {m.group(1)}", sql, rng)


def _fk_column(sql, _cols, rng):
    """Use the other side of a join equality in SELECT / WHERE (FK-equivalent column)."""
    m = re.search(r"(?i)\bon\s+([\w.]+)\s*=\s*([\w.]+)", sql)
    if not m:
        return None
    a, b = m.group(1), m.group(2)
    head, sep, tail = sql.partition(m.group(0))
    if rng.random() < 0.5:
        a, b = b, a
    return re.sub(rf"(?<![\w.]){re.escape(a)}(?![\w.])", b, head) + sep + re.sub(rf"(?<![\w.]){re.escape(a)}(?![\w.])", b, tail)


def _distinct(sql, _cols, rng):
    if re.search(r"(?i)\bdistinct\b", sql) and rng.random() < 0.5:
        return re.sub(r"(?i)\bdistinct\s+", "", sql, count=1)
    if rng.random() < 0.5:
        return re.sub(r"(?i)^\s*select\s+", "SELECT DISTINCT ", sql, count=1)
    return _sub_nth(r"\b(count|max|min|sum|avg)\s*\(\s*", lambda m: f"{m.group(1)}(DISTINCT ", sql, rng)


def _limit(sql, _cols, rng):
    if re.search(r"(?i)\blimit\s+\d+", sql):
        return re.sub(r"(?i)\blimit\s+\d+", rng.choice(["LIMIT 3", "LIMIT 1", "", "LIMIT 1.0", "LIMIT x", "LIMIT"]), sql, count=1)
    return sql.rstrip(" ;") + rng.choice([" LIMIT 1", " LIMIT 5", " ORDER BY 1 LIMIT 1"])


def _order(sql, cols, rng):
    if re.search(r"(?i)\b(asc|desc)\b", sql):
        return _sub_nth(r"\b(asc|desc)\b", lambda m: "DESC" if m.group(1).lower() == "asc" else rng.choice(["ASC", ""]), sql, rng)
    if re.search(r"(?i)\border\s+by\b", sql):
        return re.sub(r"(?i)(\border\s+by\s+[\w.()*]+)", r"\1 ASC", sql, count=1)
    table = rng.choice(list(cols)) if cols else "x"
    col = rng.choice(cols.get(table) or ["x"])
    return sql.rstrip(" ;") + f" ORDER BY {col} {rng.choice(['DESC', 'ASC', ''])}"


def _nested(sql, _cols, rng):
    mode = rng.randrange(4)
    if mode == 0:
        return _sub_nth(r"\bnot\s+in\b|\bin\b(?=\s*\()", lambda m: "IN" if m.group(0).lower().startswith("not") else "NOT IN", sql, rng)
    if mode == 1:
        return _sub_nth(r"\(\s*select\s+([\w.()*]+)", lambda m: "(SELECT count(*)", sql, rng)
    if mode == 2:
        return _sub_nth(r"\(\s*select\b", "( SELECT DISTINCT", sql, rng)
    return _sub_nth(r"\(\s*(select\b.*?)\)", lambda m: f"(({m.group(1)}))", sql, rng, re.I | re.S)


def _set_op(sql, _cols, rng):
    if re.search(r"(?i)\b(intersect|union|except)\b", sql):
        return _sub_nth(r"\b(intersect|union|except)\b", lambda m: rng.choice(["INTERSECT", "UNION", "EXCEPT", "UNION ALL"]), sql, rng)
    return f"{sql} {rng.choice(['UNION', 'EXCEPT', 'INTERSECT'])} {sql}"


def _and_or(sql, _cols, rng):
    return _sub_nth(r"\b(and|or)\b", lambda m: "OR" if m.group(1).lower() == "and" else "AND", sql, rng)


def _cond_swap(sql, _cols, rng):
    m = re.search(r"(?is)\bwhere\s+(.+?)\s+(and|or)\s+(.+?)" + _CLAUSE_RE, sql)
    if not m or re.search(r"(?i)\bbetween\b", m.group(0)):
        return None
    return sql[: m.start(1)] + f"{m.group(3)} {m.group(2)} {m.group(1)}" + sql[m.end(3) :]


def _drop_connective(sql, _cols, rng):
    return _sub_nth(r"\s+\b(and|or)\b\s+", " ", sql, rng)


def _col_alias(sql, _cols, rng):
    return _edit_one_select_item(sql, rng, lambda item: item + rng.choice([" AS cnt", " AS total", " total"]))


def _join_style(sql, _cols, rng):
    return _sub_nth(r"\bjoin\b", lambda m: rng.choice([",", "INNER JOIN", "LEFT JOIN", "join", "JOIN"]), sql, rng)


def _null_and_ne(sql, _cols, rng):
    if rng.random() < 0.5:
        return _sub_nth(r"(\S+)\s*(!=|=)\s*(\S+)", lambda m: f"{m.group(1)} IS {'NOT ' if m.group(2) == '!=' else ''}NULL", sql, rng)
    return _sub_nth(r"!=", "<>", sql, rng)


def _qualify(sql, cols, rng):
    m = re.search(r"(?i)\bfrom\s+(\w+)", sql)
    if not m or m.group(1).lower() not in cols:
        return None
    table = m.group(1)
    names = [c for c in cols[table.lower()] if re.search(rf"(?i)(?<![\w.]){re.escape(c)}(?![\w.])", sql)]
    if not names:
        return None
    name = rng.choice(names)
    return _sub_nth(rf"(?<![\w.]){re.escape(name)}(?![\w.])", lambda mm: f"{table}.{mm.group(0)}", sql, rng)


def _star(sql, _cols, rng):
    if "count(*)" in sql.lower():
        return re.sub(r"(?i)count\(\*\)", rng.choice(["count(1)", "COUNT( * )", "count(*) ", "count(id)"]), sql, count=1)
    parts = _split_select_items(sql)
    if not parts:
        return None
    return parts[0] + "*" + parts[2]


def _paren(sql, _cols, rng):
    mode = rng.randrange(4)
    if mode == 0:
        return f"({sql})"
    if mode == 1:
        return _edit_one_select_item(sql, rng, lambda item: f"({item})")
    if mode == 2:
        return _sub_nth(r"\bwhere\s+(.+?)" + _CLAUSE_RE, lambda m: f"WHERE ({m.group(1)}) ", sql, rng, re.I | re.S)
    return _sub_nth(r"\b(count|max|min|sum|avg)\s*\(([^()]*)\)", lambda m: f"({m.group(0)})", sql, rng)


def _arith(sql, _cols, rng):
    return _edit_one_select_item(sql, rng, lambda item: item + rng.choice([" + 1", " - x", " * 2", "/ 2", "+" + item]))


def _between(sql, _cols, rng):
    return _sub_nth(r"(\S+)\s*(>=|>|<|<=|=)\s*(\d+)", lambda m: f"{m.group(1)} BETWEEN {m.group(3)} AND {int(m.group(3)) + 10}", sql, rng)


def _truncate(sql, _cols, rng):
    toks = _tokens_ws(sql)
    if len(toks) < 2:
        return None
    if rng.random() < 0.7:
        return " ".join(toks[: rng.randrange(1, len(toks))])
    return sql[: rng.randrange(1, len(sql))]


def _prose(sql, _cols, rng):
    before, after = rng.choice(_PROSE)
    return before + sql + after


def _garbage(sql, _cols, rng):
    mode = rng.randrange(3)
    if mode == 0:
        return rng.choice(_GARBAGE)
    toks = _tokens_ws(sql)
    if mode == 1:
        rng.shuffle(toks)
        return " ".join(toks)
    i = rng.randrange(len(toks) + 1)
    return " ".join(toks[:i] + [rng.choice(["blah", ",", "(", ")", "as", "on", "not", "'", "select", "*", "==", "!"])] + toks[i:])


def _delete_token(sql, _cols, rng):
    toks = _tokens_ws(sql)
    if len(toks) < 2:
        return None
    toks.pop(rng.randrange(len(toks)))
    return " ".join(toks)


def _sqlglot(sql, _cols, rng):
    import sqlglot

    try:
        return sqlglot.transpile(sql, read="sqlite", write="sqlite", pretty=rng.random() < 0.3)[0]
    except Exception:
        return None


def _table_swap(sql, cols, rng):
    tables = [t for t in cols if re.search(rf"(?i)\b{re.escape(t)}\b", sql)]
    if not tables or len(cols) < 2:
        return None
    old = rng.choice(tables)
    new = rng.choice([t for t in cols if t != old])
    return re.sub(rf"(?i)\b{re.escape(old)}\b", new, sql, count=1)


def _column_swap(sql, cols, rng):
    every = sorted({c for names in cols.values() for c in names})
    present = [c for c in every if re.search(rf"(?i)(?<![\w\"'])\b{re.escape(c)}\b", sql)]
    if not present:
        return None
    old = rng.choice(present)
    return _sub_nth(rf"\b{re.escape(old)}\b", lambda m: rng.choice(every), sql, rng)


def _unicode(sql, _cols, rng):
    return _sub_nth(
        r"\s+", lambda m: rng.choice(["\u00a0", "\u2003", " “ ", "’", " « ", "—", "...", "--", " ` ", "``", "? ", "!"]), sql, rng
    )


def _group_edit(sql, cols, rng):
    if re.search(r"(?i)\bgroup\s+by\b", sql):
        return re.sub(
            r"(?i)(\bgroup\s+by\s+)([\w.]+)",
            lambda m: m.group(1) + rng.choice([m.group(2) + ", " + m.group(2), m.group(2).split(".")[-1], "1"]),
            sql,
            count=1,
        )
    parts = _split_select_items(sql)
    if not parts:
        return None
    return sql.rstrip(" ;") + f" GROUP BY {parts[1][0]}"


def _having_edit(sql, _cols, rng):
    if re.search(r"(?i)\bhaving\b", sql):
        return _sub_nth(r"\bhaving\b", rng.choice(["HAVING NOT", "WHERE", "HAVING"]), sql, rng)
    if re.search(r"(?i)\bgroup\s+by\b", sql):
        return re.sub(r"(?i)(\bgroup\s+by\s+[\w.]+)", r"\1 HAVING count(*) > 1", sql, count=1)
    return sql.rstrip(" ;") + " HAVING count(*) > 1"


# fmt: off
_NOISE = [
    ".", ",", ":", ";", "@", "#", "$", "%", "&", "?", "!", "*", "(", ")", "[", "]", "{", "}", "<", ">",
    "-", "--", "\u2013", "\u2014", "...", "..", "'", '"', "`", "```", "\u201c", "\u201d", "\u2018",
    "\u2019", "\u00ab", "\u00bb", "\u201e", " cannot ", " gonna ", " wanna ", " gimme ", "3,000", ",5",
    "1.5.", "T1..name", " !=", " = ", "<>", "=>", "=<", "!", "\n", "\t", " as ", " AS T1 ", "__val_1_2__",
    " none ", " nan ", " 1e3 ", " inf ", " 1_0 ", " ;", " is ", " exists ", " not ", "\u00e9", "\u0130",
]
# fmt: on


def _char_noise(sql, _cols, rng):
    """Drop tokenizer-sensitive characters and words into the SQL (nltk corner cases)."""
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(sql) + 1)
        sql = sql[:i] + rng.choice(_NOISE) + sql[i:]
    return sql


_EDITS = {
    "char_noise": _char_noise,
    "swap_select": _swap_select,
    "dup_select": _dup_select,
    "drop_select": _drop_select,
    "change_op": _change_op,
    "change_agg": _change_agg,
    "add_agg": _add_agg,
    "change_value": _change_value,
    "drop_clause": _drop_clause,
    "case": _case,
    "whitespace": _whitespace,
    "quotes": _quotes,
    "alias_rename": _alias_rename,
    "drop_as": _drop_as,
    "join_order": _join_order,
    "on_swap": _on_swap,
    "fk_column": _fk_column,
    "distinct": _distinct,
    "limit": _limit,
    "order": _order,
    "nested": _nested,
    "set_op": _set_op,
    "and_or": _and_or,
    "cond_swap": _cond_swap,
    "drop_connective": _drop_connective,
    "col_alias": _col_alias,
    "join_style": _join_style,
    "null_ne": _null_and_ne,
    "qualify": _qualify,
    "star": _star,
    "paren": _paren,
    "arith": _arith,
    "between": _between,
    "truncate": _truncate,
    "prose": _prose,
    "garbage": _garbage,
    "delete_token": _delete_token,
    "sqlglot": _sqlglot,
    "table_swap": _table_swap,
    "column_swap": _column_swap,
    "unicode": _unicode,
    "group_edit": _group_edit,
    "having_edit": _having_edit,
}
PERTURBATIONS = sorted(_EDITS)


def perturbation_pairs(golds: list[tuple[str, str]], count: int, matcher: ExactMatcher, rng: random.Random, source: str) -> list[Pair]:
    pairs, seen, tries = [], set(), 0
    while len(pairs) < count and tries < count * 5:
        tries += 1
        gold, db = rng.choice(golds)
        cols = matcher.schema(db).columns
        pred, kind = gold, ""
        for _ in range(1 if rng.random() < 0.7 else rng.randint(2, 3)):  # sometimes stack edits
            step, new = perturb(pred, cols, rng)
            if new is not None:
                pred, kind = new, f"{kind}+{step}" if kind else step
        if not kind or (db, gold, pred) in seen:
            continue
        seen.add((db, gold, pred))
        pairs.append(Pair(source, kind, db, gold, pred))
    return pairs


# ---------------------------------------------------------------------------------------------
# Comparison


def canonical(value) -> str:
    """repr with dict keys sorted (the two parsers build dicts in different key orders)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {canonical(value[k])}" for k in sorted(value)) + "}"
    if isinstance(value, (list, tuple)):
        inner = ", ".join(canonical(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner})"
    return repr(value)


def compare(pairs: list[Pair], official: Official, matcher: ExactMatcher) -> tuple[dict, list[dict]]:
    stats: dict = defaultdict(Counter)
    bad: list[dict] = []
    for pair in pairs:
        s = stats[pair.source]
        s["pairs"] += 1
        off_hard, off_em = official.exact(pair.gold, pair.pred, pair.db_id)
        our_hard = matcher.hardness(pair.gold, pair.db_id)
        our_em = matcher.match(pair.gold, pair.pred, pair.db_id)
        s["official_em"] += off_em is True
        s["official_crash"] += off_em == CRASH
        s["ours_em"] += our_em
        issues = []
        if (off_em is True) != our_em:
            issues.append("em")
        else:
            s["em_agree"] += 1
        if off_hard != our_hard:
            issues.append("gold_hardness")
        else:
            s["gold_hardness_agree"] += 1
        off_tok, our_tok = official.tokens(pair.pred), ours_tokens(pair.pred)
        if off_tok != our_tok:
            issues.append("tokens")
        else:
            s["tokens_agree"] += 1
        off_parse, our_parse = official.parse(pair.pred, pair.db_id), ours_parse(pair.pred, matcher, pair.db_id)
        s["official_parse_fail"] += off_parse is FAIL
        if canonical(off_parse) != canonical(our_parse):
            issues.append("parse")
        else:
            s["parse_agree"] += 1
        if off_parse is not FAIL and our_parse is not FAIL:
            s["pred_hardness_n"] += 1
            if official.hardness(off_parse) != ours_hardness(our_parse):
                issues.append("pred_hardness")
            else:
                s["pred_hardness_agree"] += 1
        if issues:
            bad.append(
                {
                    **pair.__dict__,
                    "issues": issues,
                    "official_em": off_em,
                    "ours_em": our_em,
                    "official_hardness": off_hard,
                    "ours_hardness": our_hard,
                }
            )
    return stats, bad


def tokenizer_fuzz(official: Official, rng: random.Random, count: int) -> list[str]:
    """Random strings over SQL words and nltk-sensitive characters; returns those tokenized differently."""
    words = ["select", "from", "where", "T1.name", "count", "3", "3.5", "a", "__val_1_2__", "cannot", "gonna", "wanna"]
    alphabet = [*_NOISE, *words, " ", " ", " ", "x", "1", "'", '"']
    bad = []
    for _ in range(count):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 25)))
        if official.tokens(text) != ours_tokens(text):
            bad.append(text)
    return bad


def print_report(stats: dict, bad: list[dict], show: int) -> None:
    total = Counter()
    for s in stats.values():
        total.update(s)
    rows = [*stats.items(), ("ALL", total)]
    print(
        f"{'source':<28}{'pairs':>7}{'EM agree':>11}{'hard(gold)':>12}{'hard(pred)':>12}{'parse':>9}{'tokens':>9}{'EM off/ours':>14}{'off fail':>9}{'crash':>7}"
    )
    for name, s in rows:
        n = s["pairs"]
        print(
            f"{name:<28}{n:>7}{s['em_agree'] / n:>11.4%}{s['gold_hardness_agree'] / n:>12.4%}"
            f"{s['pred_hardness_agree'] / max(s['pred_hardness_n'], 1):>12.4%}{s['parse_agree'] / n:>9.3%}"
            f"{s['tokens_agree'] / n:>9.3%}{s['official_em']:>7}/{s['ours_em']:<6}{s['official_parse_fail']:>9}{s['official_crash']:>7}"
        )
    kinds = Counter(issue for row in bad for issue in row["issues"])
    print(f"\ndisagreements: {len(bad)} pairs; by issue: {dict(kinds)}")
    for row in bad[:show]:
        print(json.dumps(row, ensure_ascii=False, default=str))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official", type=Path, required=True, help="folder holding the official evaluation.py and process_sql.py")
    ap.add_argument("--spider", type=Path, required=True, help="Spider folder (dev_gold.sql, train_gold.sql, tables.json, database/)")
    ap.add_argument("--preds", action="append", default=[], help="FILE[:GOLD_FILE] of real predictions, one SQL per line (repeatable)")
    ap.add_argument("--perturbations", type=int, default=8000, help="number of perturbed pairs (half from dev gold, half from train)")
    ap.add_argument("--train-cross", type=int, default=2000, help="number of train gold-vs-other-gold pairs on the same database")
    ap.add_argument("--tokenizer-fuzz", type=int, default=20000, help="random strings for the tokenizer-only check")
    ap.add_argument(
        "--official-tokenizer",
        choices=("line", "treebank"),
        default="line",
        help="line: nltk word_tokenize(preserve_line=True), the reference; treebank: TreebankWordTokenizer (to measure the gap)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--show", type=int, default=15, help="disagreements to print")
    ap.add_argument("--out", type=Path, help="write every disagreement to this JSON file")
    args = ap.parse_args()
    for name in ("evaluation.py", "process_sql.py"):
        if not (args.official / name).is_file():
            sys.exit(f"--official {args.official}: {name} not found (extract it from the taoyds/spider repository)")

    db_dir, tables = args.spider / "database", args.spider / "tables.json"
    official = Official(args.official, db_dir, tables, args.official_tokenizer)
    matcher = ExactMatcher(db_dir, tables)
    rng = random.Random(args.seed)

    all_dev = [
        (sql, db)
        for sql, _, db in (
            line.strip().rpartition("\t") for line in (args.spider / "dev_gold.sql").read_text().splitlines() if line.strip()
        )
    ]
    dev = read_gold(args.spider / "dev_gold.sql", db_dir)
    # Gold the official parser itself cannot take (3 broken train queries) cannot be compared.
    train = [(sql, db) for sql, db in read_gold(args.spider / "train_gold.sql", db_dir) if official.parse(sql, db) is not FAIL]
    pairs = self_pairs("dev-972 gold=gold", dev) + self_pairs("train gold=gold", train) + cross_pairs(train, rng, args.train_cross)
    for spec in args.preds:
        pairs += pred_file_pairs(spec, dev, all_dev, official, db_dir)
    half = args.perturbations // 2
    pairs += perturbation_pairs(dev, half, matcher, rng, "perturbed dev")
    pairs += perturbation_pairs(train, args.perturbations - half, matcher, rng, "perturbed train")

    stats, bad = compare(pairs, official, matcher)
    print_report(stats, bad, args.show)
    fuzz_bad = tokenizer_fuzz(official, rng, args.tokenizer_fuzz)
    print(f"\ntokenizer fuzz: {args.tokenizer_fuzz - len(fuzz_bad)}/{args.tokenizer_fuzz} random strings tokenized alike")
    for text in fuzz_bad[: args.show]:
        print(f"  {text!r}: official {official.tokens(text)!r} ours {ours_tokens(text)!r}")
    if args.out:
        args.out.write_text(json.dumps(bad, indent=1, ensure_ascii=False, default=str))


if __name__ == "__main__":
    main()
