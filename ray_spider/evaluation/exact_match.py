"""Spider exact set match (EM) and hardness, as the official ``evaluation.py`` computes them.

    matcher = ExactMatcher(spider / "database", spider / "tables.json")
    matcher.hardness(gold_sql, "concert_singer")          # 'easy' | 'medium' | 'hard' | 'extra'
    matcher.match(gold_sql, pred_sql, "concert_singer")   # bool; a pred that fails to parse: False

Semantics are those of taoyds/spider ``Evaluator.eval_exact_match`` with its default settings,
quirks included; ``tools/em_agreement.py`` checks this module against the official code.
Both queries go through ``spider_sql.parse_sql`` and are then normalized:
- values are dropped from conditions (WHERE, HAVING, JOIN ON, and subqueries inside them), but
  not from subqueries in FROM, and LIMIT keeps its number;
- DISTINCT is dropped, and a column in a foreign-key group (tables.json) becomes the group's
  first column when its table is in the top-level FROM; neither happens inside subqueries in
  conditions or in FROM (INTERSECT/UNION/EXCEPT parts do get it, with the top-level FROM).
Then every component must agree: SELECT items as a bag; WHERE conditions as a bag;
GROUP BY column names (tables ignored) as a bag; GROUP BY columns in order together with HAVING;
ORDER BY items in order, with LIMIT present on both or neither; the set of WHERE AND/OR words;
each INTERSECT/UNION/EXCEPT part recursively; the set of SQL keywords used; and finally the
FROM tables as a sorted list. JOIN ON conditions are only seen through the keywords.

Hardness counts clauses, joins, ORs, LIKEs, nested queries and aggregates in the gold query
(before normalization) and buckets them with the official thresholds.

The official tool crashes on a few odd-but-parseable predictions (e.g. an unhashable nested
query where it builds a set); those count as not matched here.
"""

from __future__ import annotations

import json
from pathlib import Path

from ray_spider.evaluation.inputs import GoldError, database_file
from ray_spider.evaluation.spider_sql import SET_OPS, STAR_ID, WHERE_OPS, SqlSchema, parse_sql

# Spider's hardness levels, easiest first (evaluation.py's ``levels``, without its "all").
HARDNESS_LEVELS = ("easy", "medium", "hard", "extra")
_IN = WHERE_OPS.index("in")
_LIKE = WHERE_OPS.index("like")
_GOLD_CACHE_SIZE = 4096


# ---------------------------------------------------------------------------------------------
# Foreign keys


def foreign_key_map(entry: dict) -> dict[str, str]:
    """Column id -> the id of the lowest-numbered column in its foreign-key group.

    Groups are built as upstream does: each key pair joins the first group that already holds
    either end, and groups are never merged, so a chain can end up split in two.
    """
    tables = entry["table_names_original"]
    ids = [STAR_ID if t < 0 else f"__{tables[t].lower()}.{name.lower()}__" for t, name in entry["column_names_original"]]
    groups: list[set[int]] = []
    for a, b in entry["foreign_keys"]:
        group = next((g for g in groups if a in g or b in g), None)
        if group is None:
            group = set()
            groups.append(group)
        group.update((a, b))
    mapping = {}
    for group in groups:
        head = ids[min(group)]
        for index in group:
            mapping[ids[index]] = head
    return mapping


# ---------------------------------------------------------------------------------------------
# Normalization (values off, DISTINCT off, foreign-key columns merged)


def _conds_map(conds: list, fix) -> list:
    """Apply ``fix`` to the condition units; connectives sit at odd positions and stay."""
    return [fix(item) if i % 2 == 0 else item for i, item in enumerate(conds)]


def _without_values(sql: dict | None) -> dict | None:
    if sql is None:
        return None

    def cond(unit: tuple) -> tuple:
        negated, op, val_unit, val1, val2 = unit
        val1 = _without_values(val1) if isinstance(val1, dict) else None
        val2 = _without_values(val2) if isinstance(val2, dict) else None
        return (negated, op, val_unit, val1, val2)

    out = dict(sql)
    out["from"] = {**sql["from"], "conds": _conds_map(sql["from"]["conds"], cond)}
    out["where"] = _conds_map(sql["where"], cond)
    out["having"] = _conds_map(sql["having"], cond)
    for op in SET_OPS:
        out[op] = _without_values(sql[op])
    return out


def _from_columns(sql: dict, schema: SqlSchema) -> set[str]:
    """Ids of every column of the tables named (not subqueries) in the top-level FROM."""
    tables = {unit_id[2:-2] for kind, unit_id in sql["from"]["table_units"] if kind == "table_unit"}
    return {cid for cid in schema.ids.values() if "." in cid and cid[2 : cid.index(".")] in tables}


def _with_canonical_columns(sql: dict | None, from_columns: set[str], fk_map: dict[str, str]) -> dict | None:
    if sql is None:
        return None

    def col(unit: tuple | None) -> tuple | None:
        if unit is None:
            return None
        agg, col_id, _distinct = unit
        if col_id in fk_map and col_id in from_columns:
            col_id = fk_map[col_id]
        return (agg, col_id, None)

    def val(unit: tuple | None) -> tuple | None:
        if unit is None:
            return None
        op, left, right = unit
        return (op, col(left), col(right))

    def cond(unit: tuple) -> tuple:
        negated, op, val_unit, val1, val2 = unit  # nested queries in values are left alone
        return (negated, op, val(val_unit), val1, val2)

    out = dict(sql)
    out["select"] = (None, [(agg, val(unit)) for agg, unit in sql["select"][1]])
    out["from"] = {**sql["from"], "conds": _conds_map(sql["from"]["conds"], cond)}
    out["where"] = _conds_map(sql["where"], cond)
    out["groupBy"] = [col(unit) for unit in sql["groupBy"]]
    if sql["orderBy"]:
        direction, units = sql["orderBy"]
        out["orderBy"] = (direction, [val(unit) for unit in units])
    out["having"] = _conds_map(sql["having"], cond)
    for op in SET_OPS:  # set-operation parts use the outer query's FROM for the key map
        out[op] = _with_canonical_columns(sql[op], from_columns, fk_map)
    return out


def normalize(sql: dict, schema: SqlSchema, fk_map: dict[str, str]) -> dict:
    """The form EM compares: a new dict, ``sql`` is left untouched."""
    return _with_canonical_columns(_without_values(sql), _from_columns(sql, schema), fk_map)


# ---------------------------------------------------------------------------------------------
# Comparison


def _same_bag(pred: list, gold: list) -> bool:
    """Multiset equality by ``==`` (items may hold dicts, so no hashing)."""
    if len(pred) != len(gold):
        return False
    left = list(gold)
    for item in pred:
        if item not in left:
            return False
        left.remove(item)
    return True


def _same_select(pred: dict, gold: dict) -> bool:
    return _same_bag(pred["select"][1], gold["select"][1])


def _same_where(pred: dict, gold: dict) -> bool:
    return _same_bag(pred["where"][::2], gold["where"][::2])


def _group_column_names(sql: dict) -> list:
    # '__table.column__' -> 'column__': this component ignores which table a column is from.
    ids = [unit[1] for unit in sql["groupBy"]]
    return [cid.split(".")[1] if "." in cid else cid for cid in ids]


def _same_group_columns(pred: dict, gold: dict) -> bool:
    return _same_bag(_group_column_names(pred), _group_column_names(gold))


def _same_group_and_having(pred: dict, gold: dict) -> bool:
    if bool(pred["groupBy"]) != bool(gold["groupBy"]):
        return False
    if not gold["groupBy"]:
        return True  # HAVING is only looked at together with GROUP BY
    same_columns = [unit[1] for unit in pred["groupBy"]] == [unit[1] for unit in gold["groupBy"]]
    return same_columns and pred["having"] == gold["having"]


def _same_order(pred: dict, gold: dict) -> bool:
    if bool(pred["orderBy"]) != bool(gold["orderBy"]):
        return False
    if not gold["orderBy"]:
        return True  # a LIMIT without ORDER BY is caught by the keywords check
    # The LIMIT number does not matter, only whether there is one.
    same_limit = (pred["limit"] is None) == (gold["limit"] is None)
    return pred["orderBy"] == gold["orderBy"] and same_limit


def _same_connectives(pred: dict, gold: dict) -> bool:
    return set(pred["where"][1::2]) == set(gold["where"][1::2])


def _same_set_operations(pred: dict, gold: dict) -> bool:
    matched = 0
    for op in SET_OPS:
        if (pred[op] is None) != (gold[op] is None):
            return False
        if gold[op] is not None:
            matched += exact_set_match(pred[op], gold[op])
    return matched == sum(gold[op] is not None for op in SET_OPS)


def keywords(sql: dict) -> set[str]:
    """The SQL keywords EM requires to agree (ORDER BY's direction counts as one)."""
    found = set()
    for clause, word in (("where", "where"), ("groupBy", "group"), ("having", "having")):
        if sql[clause]:
            found.add(word)
    if sql["orderBy"]:
        found.update(("order", sql["orderBy"][0]))
    if sql["limit"] is not None:
        found.add("limit")
    found.update(op for op in SET_OPS if sql[op] is not None)
    conds = sql["from"]["conds"], sql["where"], sql["having"]
    connectives = [item for c in conds for item in c[1::2]]
    units = [item for c in conds for item in c[::2]]
    if "or" in connectives:
        found.add("or")
    # item[0] / item[1] also run on a stray 'and'/'or' in an irregular list, as upstream does.
    if any(unit[0] for unit in units):
        found.add("not")
    if any(unit[1] == _IN for unit in units):
        found.add("in")
    if any(unit[1] == _LIKE for unit in units):
        found.add("like")
    return found


def _same_keywords(pred: dict, gold: dict) -> bool:
    return keywords(pred) == keywords(gold)


_COMPONENTS = (
    _same_select,
    _same_where,
    _same_group_columns,
    _same_group_and_having,
    _same_order,
    _same_connectives,
    _same_set_operations,
    _same_keywords,
)


def exact_set_match(pred: dict, gold: dict) -> bool:
    """EM of two normalized queries. May raise on irregular structures (upstream crashes too)."""
    if not all(same(pred, gold) for same in _COMPONENTS):
        return False
    gold_tables = gold["from"]["table_units"]
    if not gold_tables:
        return True
    return sorted(gold_tables) == sorted(pred["from"]["table_units"])


# ---------------------------------------------------------------------------------------------
# Hardness


def _cond_units(sql: dict) -> list:
    return [item for c in (sql["from"]["conds"], sql["where"], sql["having"]) for item in c[::2]]


def _connectives(sql: dict) -> list:
    return [item for c in (sql["from"]["conds"], sql["where"], sql["having"]) for item in c[1::2]]


def _clause_count(sql: dict) -> int:
    """WHERE, GROUP BY, ORDER BY, LIMIT, each extra FROM table, each OR and each LIKE."""
    count = sum(bool(sql[clause]) for clause in ("where", "groupBy", "orderBy")) + (sql["limit"] is not None)
    count += max(len(sql["from"]["table_units"]) - 1, 0)
    count += sum(word == "or" for word in _connectives(sql))
    count += sum(unit[1] == _LIKE for unit in _cond_units(sql))
    return count


def _nested_count(sql: dict) -> int:
    """Subqueries used as condition values, plus INTERSECT/UNION/EXCEPT parts."""
    values = [v for unit in _cond_units(sql) for v in (unit[3], unit[4])]
    return sum(isinstance(v, dict) for v in values) + sum(sql[op] is not None for op in SET_OPS)


def _other_count(sql: dict) -> int:
    """More than one aggregate, SELECT item, WHERE condition or GROUP BY column: one each."""
    # "Aggregate" is item[0] != 0 everywhere, as upstream: for a condition that is its NOT flag,
    # and HAVING is counted item by item, its 'and'/'or' words included.
    flagged = list(sql["select"][1]) + sql["where"][::2] + sql["groupBy"]
    if sql["orderBy"]:
        val_units = sql["orderBy"][1]
        flagged += [vu[1] for vu in val_units if vu[1]] + [vu[2] for vu in val_units if vu[2]]
    flagged += sql["having"]
    aggregates = sum(item[0] != 0 for item in flagged)
    return (aggregates > 1) + (len(sql["select"][1]) > 1) + (len(sql["where"]) > 1) + (len(sql["groupBy"]) > 1)


def hardness_of(sql: dict) -> str:
    """Spider's hardness level of a parsed (not normalized) gold query."""
    clauses, nested, others = _clause_count(sql), _nested_count(sql), _other_count(sql)
    if clauses <= 1 and others == 0 and nested == 0:
        return "easy"
    if nested == 0 and ((clauses <= 1 and others <= 2) or (clauses <= 2 and others < 2)):
        return "medium"
    if nested == 0 and ((others > 2 and clauses <= 2) or (2 < clauses <= 3 and others <= 2)):
        return "hard"
    if clauses <= 1 and others == 0 and nested <= 1:
        return "hard"
    return "extra"


# ---------------------------------------------------------------------------------------------
# Public entry point


class ExactMatcher:
    """EM and hardness against Spider databases; schemas and key maps are cached per db_id.

    Picklable (for process pools): the caches are dropped when pickled and rebuilt lazily.
    """

    def __init__(self, db_dir: Path, tables_json: Path):
        self.db_dir = Path(db_dir)
        self.tables_json = Path(tables_json)
        if not self.db_dir.is_dir():
            raise FileNotFoundError(f"Spider database folder not found: {self.db_dir}")
        if not self.tables_json.is_file():
            raise FileNotFoundError(f"Spider tables file not found: {self.tables_json}")
        self._reset_caches()

    def _reset_caches(self) -> None:
        self._schemas: dict[str, SqlSchema] = {}
        self._tables: dict[str, dict] | None = None
        self._fk_maps: dict[str, dict[str, str]] = {}
        self._gold: dict[tuple[str, str], tuple[str, dict]] = {}

    def __getstate__(self) -> dict:
        return {"db_dir": self.db_dir, "tables_json": self.tables_json}

    def __setstate__(self, state: dict) -> None:
        self.db_dir, self.tables_json = state["db_dir"], state["tables_json"]
        self._reset_caches()

    def hardness(self, gold_sql: str, db_id: str) -> str:
        """'easy' | 'medium' | 'hard' | 'extra'; raises GoldError if the gold does not parse."""
        return self._gold_forms(gold_sql, db_id)[0]

    def match(self, gold_sql: str, pred_sql: str, db_id: str) -> bool:
        """Exact set match; never raises for the prediction (unparsable -> False)."""
        gold = self._gold_forms(gold_sql, db_id)[1]
        schema = self.schema(db_id)
        try:
            pred = normalize(parse_sql(pred_sql, schema), schema, self.fk_map(db_id))
            return bool(exact_set_match(pred, gold))
        except Exception:  # unparsable, or odd enough that upstream crashes: wrong
            return False

    def schema(self, db_id: str) -> SqlSchema:
        if db_id not in self._schemas:
            path = database_file(self.db_dir, db_id)
            if not path.is_file():
                raise GoldError(f"database file for db_id {db_id!r} not found: {path}")
            self._schemas[db_id] = SqlSchema.from_sqlite(path)
        return self._schemas[db_id]

    def fk_map(self, db_id: str) -> dict[str, str]:
        if db_id not in self._fk_maps:
            if self._tables is None:
                self._tables = {entry["db_id"]: entry for entry in json.loads(self.tables_json.read_text())}
            if db_id not in self._tables:
                raise GoldError(f"db_id {db_id!r} is not in {self.tables_json}")
            self._fk_maps[db_id] = foreign_key_map(self._tables[db_id])
        return self._fk_maps[db_id]

    def _gold_forms(self, gold_sql: str, db_id: str) -> tuple[str, dict]:
        """(hardness, normalized form) of a gold query, cached; the form is shared, never mutated."""
        key = (db_id, gold_sql)
        if key not in self._gold:
            schema, fk_map = self.schema(db_id), self.fk_map(db_id)
            try:
                parsed = parse_sql(gold_sql, schema)
                forms = (hardness_of(parsed), normalize(parsed, schema, fk_map))
            except Exception as exc:  # any failure on a gold query is a data bug
                raise GoldError(f"gold SQL for db_id {db_id!r} does not parse ({exc}): {gold_sql}") from exc
            if len(self._gold) >= _GOLD_CACHE_SIZE:
                self._gold.clear()
            self._gold[key] = forms
        return self._gold[key]
