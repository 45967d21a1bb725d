"""Agreement of ray_spider's execution accuracy (EX) with the official test-suite evaluator.

Runs our ``execution_match`` and the official ``eval_exec_match`` (exec_eval.py, default flags as
evaluation.py passes them: plug_value=False, keep_distinct=False) on the same (db, gold, pred)
triples and reports, per source of pairs, how often the EX verdicts agree. Not run in CI.

    mkdir -p /tmp/ts_official
    git -C /work/.mirror/taoyds+test-suite-sql-eval/repo archive HEAD | tar -x -C /tmp/ts_official
    pip install tqdm sqlparse==0.6.0                 # for the official code only (the sqlparse our copy freezes)
    python tools/ex_agreement.py --official /tmp/ts_official --spider $SPIDER_DIR \
        [--preds PRED_FILE:GOLD_FILE ...] [--perturbations 6000] [--seed 0] [--timeout 5] [--show 15]

Sources of pairs:
- preds: each ``--preds`` file (one SQL per line) against its "SQL<TAB>db_id" gold file, line by
  line (blank gold lines skipped), e.g. the official evaluation_examples/predict.txt:gold.txt;
- self: dev-972 gold against itself;
- cross: dev gold against two other dev gold queries of the same database (mostly mismatches);
- perturb: seeded perturbations of dev and train gold as the prediction (column order, DISTINCT,
  ORDER BY, LIMIT, values, aggregates, joins, case, whitespace, comments, several statements,
  INTEGER vs REAL, YEAR(CURDATE()), typos, truncation, garbage, writes, ...);
- gold-side: perturbed gold (ORDER BY spacing, DISTINCT, several statements) against the original;
- result fuzz: our ``results_match`` against the official ``result_eq`` on random small tables;
- text fuzz: our ``official_cleanup`` against the official ``remove_distinct(postprocess(...))``.

The official code writes to the database it is given (its connection is read-write) and root
ignores file modes, so it runs on a scratch copy of the databases (and on a fresh copy for the
write cases); the copies are checked byte for byte at the end. A pair whose prediction hits our
timeout or row cap is not handed to the official (its timeout never fires and it would fetch
everything): those are counted as "guarded", not compared.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import re
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from em_agreement import split_top_level  # noqa: E402  (tools/ is on sys.path when run as a script)
from ray_spider.evaluation.execution import execution_match, official_cleanup, results_match  # noqa: E402
from ray_spider.evaluation.inputs import GoldError  # noqa: E402

GOLD_ERROR = "gold_error"  # gold failed: we raise GoldError, the official asserts
CRASH = "crash"  # the official raised something else (an empty prediction: sqlparse finds no statement)
OFFICIAL_LIMIT_S = 120  # an official call still running after this is counted as a crash


@dataclass(frozen=True)
class Pair:
    source: str
    kind: str
    db_id: str
    gold: str
    pred: str


# ---------------------------------------------------------------------------------------------
# Official side


def import_official(checkout: Path):
    sys.path.insert(0, str(checkout))
    try:
        import exec_eval
        import parse
    except ImportError as exc:
        sys.exit(f"cannot import the official exec_eval.py from {checkout} ({exc}); see the module docstring")
    return exec_eval, parse


def _alarm(signum, frame):
    raise TimeoutError("official call too slow")


def official_ex(exec_eval, db_path: Path, gold: str, pred: str):
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(OFFICIAL_LIMIT_S)
    try:
        return bool(exec_eval.eval_exec_match(str(db_path), pred, gold, False, False, False))
    except AssertionError:
        return GOLD_ERROR
    except Exception:
        return CRASH
    finally:
        signal.alarm(0)


def our_ex(db_path: Path, gold: str, pred: str, timeout_s: float):
    try:
        ex, outcome = execution_match(db_path, gold, pred, timeout_s=timeout_s)
    except GoldError:
        return GOLD_ERROR, "gold"
    return ex, outcome.status


# ---------------------------------------------------------------------------------------------
# Pairs from the gold files


def read_gold(path: Path) -> list[tuple[str, str]]:
    pairs = []
    for line in path.read_text().splitlines():
        if line.strip():
            sql, _, db_id = line.rstrip().rpartition("\t")
            pairs.append((sql.strip(), db_id.strip()))
    return pairs


def self_pairs(dev: list[tuple[str, str]]) -> list[Pair]:
    return [Pair("self", "gold", db, sql, sql) for sql, db in dev]


def file_pairs(spec: str) -> list[Pair]:
    pred_file, _, gold_file = spec.partition(":")
    preds = Path(pred_file).read_text().split("\n")
    pairs = []
    for number, gold_line in enumerate(Path(gold_file).read_text().splitlines()):
        if gold_line.strip():
            sql, _, db_id = gold_line.rstrip().rpartition("\t")
            pairs.append(Pair("preds", Path(pred_file).name, db_id.strip(), sql.strip(), preds[number].strip()))
    return pairs


def cross_pairs(dev: list[tuple[str, str]], rng: random.Random) -> list[Pair]:
    by_db = defaultdict(list)
    for sql, db in dev:
        by_db[db].append(sql)
    pairs = []
    for sql, db in dev:
        others = [other for other in by_db[db] if other != sql]
        for other in rng.sample(others, min(2, len(others))):
            pairs.append(Pair("cross", "other gold", db, sql, other))
    return pairs


# ---------------------------------------------------------------------------------------------
# Perturbations: each takes (sql, rng) and returns a new SQL text, or None where it does not apply


def _top_level_select_list(sql: str) -> tuple[int, int] | None:
    """Span of the first SELECT's column list (after an optional DISTINCT), up to its FROM."""
    start = re.search(r"\bselect\s+(distinct\s+)?", sql, re.IGNORECASE)
    if not start:
        return None
    depth = 0
    for position in range(start.end(), len(sql)):
        char = sql[position]
        depth += char == "("
        depth -= char == ")"
        if depth == 0 and re.match(r"\sfrom\b", sql[position:], re.IGNORECASE):
            return start.end(), position
    return None


def _select_columns(sql):
    """(span of the top-level select list, its columns), or (None, []) when there is none."""
    span = _top_level_select_list(sql)
    if not span:
        return None, []
    return span, [column.strip() for column in split_top_level(sql[span[0] : span[1]])]


def shuffle_columns(sql, rng):
    span, columns = _select_columns(sql)
    if len(columns) < 2:
        return None
    shuffled = columns[:]
    while shuffled == columns:
        rng.shuffle(shuffled)
    return sql[: span[0]] + " , ".join(shuffled) + sql[span[1] :]


def duplicate_column(sql, rng):
    span, columns = _select_columns(sql)
    if not columns:
        return None
    return sql[: span[0]] + " , ".join(columns + [rng.choice(columns)]) + sql[span[1] :]


def drop_column(sql, rng):
    span, columns = _select_columns(sql)
    if len(columns) < 2:
        return None
    columns.pop(rng.randrange(len(columns)))
    return sql[: span[0]] + " , ".join(columns) + sql[span[1] :]


def star_columns(sql, rng):
    span = _top_level_select_list(sql)
    return sql[: span[0]] + "*" + sql[span[1] :] if span else None


def add_distinct(sql, rng):
    return re.sub(r"\bselect\b(?!\s+distinct)", "SELECT DISTINCT", sql, count=1, flags=re.IGNORECASE)


def remove_distinct_word(sql, rng):
    return re.sub(r"\bdistinct\b", "", sql, flags=re.IGNORECASE) if re.search(r"\bdistinct\b", sql, re.I) else None


def count_distinct(sql, rng):
    return re.sub(r"count\s*\(\s*(?!\*)", "count(DISTINCT ", sql, count=1, flags=re.IGNORECASE) if re.search(r"count\s*\(\s*(?!\*)", sql, re.I) else None


def drop_order_by(sql, rng):
    if not re.search(r"order\s+by", sql, re.I):
        return None
    return re.sub(r"\border\s+by\s+.*?(?=\blimit\b|$)", "", sql, count=1, flags=re.IGNORECASE | re.DOTALL)


def flip_direction(sql, rng):
    if re.search(r"\b(asc|desc)\b", sql, re.I):
        return re.sub(r"\b(asc|desc)\b", lambda m: "ASC" if m.group(1).lower() == "desc" else "DESC", sql, flags=re.I)
    if re.search(r"order\s+by", sql, re.I):
        return re.sub(r"(order\s+by\s+[^\s,]+(?:\s*\([^)]*\))?)", r"\1 DESC", sql, count=1, flags=re.I)
    return None


def add_order_by(sql, rng):
    if re.search(r"order\s+by|limit|union|intersect|except", sql, re.I):
        return None
    return sql + rng.choice([" ORDER BY 1", " ORDER BY 1 DESC", " order by 1 desc"])


def change_limit(sql, rng):
    match = re.search(r"\blimit\s+(\d+)", sql, re.I)
    if match:
        choice = rng.choice(["drop", "plus", "minus"])
        if choice == "drop":
            return sql[: match.start()] + sql[match.end() :]
        number = int(match.group(1)) + (1 if choice == "plus" else -1)
        return sql[: match.start(1)] + str(max(number, 0)) + sql[match.end(1) :]
    if re.search(r"union|intersect|except", sql, re.I):
        return None
    return sql + " LIMIT " + str(rng.choice([1, 2, 3, 100]))


def change_number(sql, rng):
    numbers = list(re.finditer(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])", sql))
    if not numbers:
        return None
    match = rng.choice(numbers)
    value = float(match.group()) if "." in match.group() else int(match.group())
    new = rng.choice([value + 1, value - 1, value * 10, 0])
    return sql[: match.start()] + str(new) + sql[match.end() :]


def change_string(sql, rng):
    strings = list(re.finditer(r"'([^']*)'|\"([^\"]*)\"", sql))
    if not strings:
        return None
    match = rng.choice(strings)
    text = match.group(1) if match.group(1) is not None else match.group(2)
    new = rng.choice([text.upper(), text.lower(), text + "x", text[:-1], "%" + text + "%"])
    return sql[: match.start()] + "'" + new.replace("'", "''") + "'" + sql[match.end() :]


_AGGREGATE_SWAPS = {"max": "min", "min": "max", "count": "sum", "sum": "avg", "avg": "sum"}


def swap_aggregate(sql, rng):
    found = list(re.finditer(r"\b(max|min|count|sum|avg)\s*\(", sql, re.I))
    if not found:
        return None
    match = rng.choice(found)
    new = _AGGREGATE_SWAPS[match.group(1).lower()]
    if new == "sum" and "*" in sql[match.end() : match.end() + 2]:
        new = "count"
    return sql[: match.start(1)] + new + sql[match.end(1) :]


def change_comparison(sql, rng):
    found = list(re.finditer(r"(?<![<>!=])(>=|<=|!=|=|<|>)(?![<>=])", sql))
    if not found:
        return None
    match = rng.choice(found)
    new = rng.choice([op for op in (">=", "<=", "!=", "=", "<", ">", "> =", "< =", "! =") if op != match.group()])
    return sql[: match.start()] + new + sql[match.end() :]


def change_join(sql, rng):
    if not re.search(r"\bjoin\b", sql, re.I):
        return None
    choice = rng.choice(["left", "drop_on", "swap_alias"])
    if choice == "left":
        return re.sub(r"\bjoin\b", "LEFT JOIN", sql, count=1, flags=re.I)
    if choice == "drop_on":
        return re.sub(r"\bon\s+[\w.]+\s*=\s*[\w.]+", "", sql, count=1, flags=re.I)
    return re.sub(r"\bT([12])\.", lambda m: "T" + ("2" if m.group(1) == "1" else "1") + ".", sql, count=1)


def drop_where(sql, rng):
    if not re.search(r"\bwhere\b", sql, re.I):
        return None
    return re.sub(r"\bwhere\b.*?(?=\bgroup\b|\border\b|\blimit\b|\bunion\b|\bintersect\b|\bexcept\b|\)|$)", "", sql, count=1, flags=re.I | re.S)


def drop_group_by(sql, rng):
    if not re.search(r"group\s+by", sql, re.I):
        return None
    return re.sub(r"\bgroup\s+by\s+[\w.]+(\s*,\s*[\w.]+)*", "", sql, count=1, flags=re.I)


def swap_set_operator(sql, rng):
    found = list(re.finditer(r"\b(union|intersect|except)\b", sql, re.I))
    if not found:
        return None
    match = rng.choice(found)
    new = rng.choice([op for op in ("UNION", "INTERSECT", "EXCEPT", "UNION ALL") if op != match.group().upper()])
    return sql[: match.start()] + new + sql[match.end() :]


def change_case(sql, rng):
    return rng.choice([sql.lower(), sql.upper(), re.sub(r"\b(select|from|where|order by|group by)\b", lambda m: m.group().swapcase(), sql, flags=re.I)])


def change_whitespace(sql, rng):
    choice = rng.choice(["spaces", "newlines", "order", "tabs"])
    if choice == "spaces":
        return re.sub(r" ", "  ", sql)
    if choice == "newlines":
        return re.sub(r" (?=from|where|order|group|limit)", "\n", sql, flags=re.I)
    if choice == "order":
        return re.sub(r"order\s+by", rng.choice(["ORDER  BY", "order\nby", "ORDER\tBY"]), sql, flags=re.I)
    return "\t" + sql.replace(" ", "\t") + "\n"


def add_semicolons(sql, rng):
    return sql + rng.choice([";", " ;", ";;", "; ", ";\n", "; -- done", ";\nSELECT 1", "; SELECT 1", "; DROP TABLE x", "; garbage here"])


def prepend_statement(sql, rng):
    return rng.choice(["SELECT 1; ", ";", "SELECT * FROM nothing_here; ", "-- comment\n", "/* c; */ "]) + sql


def add_comment(sql, rng):
    return sql + rng.choice([" -- DISTINCT", " /* order by */", " -- ; SELECT 1", "\n-- trailing", " # hash"])


def int_to_real(sql, rng):
    span = _top_level_select_list(sql)
    if not span:
        return None
    columns = split_top_level(sql[span[0] : span[1]])
    index = rng.randrange(len(columns))
    wrapped = rng.choice(["({}) * 1.0", "CAST({} AS REAL)", "({}) + 0.0", "({}) * 1", "CAST({} AS TEXT)", "round({}, 1)"])
    if columns[index].strip() == "*":
        return None
    columns[index] = " " + wrapped.format(columns[index].strip()) + " "
    return sql[: span[0]] + ",".join(columns) + sql[span[1] :]


def current_year(sql, rng):
    years = list(re.finditer(r"(?<![\w.])(19|20)\d\d(?![\w.])", sql))
    if not years:
        return sql + rng.choice([" AND YEAR(CURDATE()) = 2020", " -- YEAR(CURDATE())"]) if " where " in sql.lower() else None
    match = rng.choice(years)
    expression = rng.choice(["YEAR(CURDATE()) - {}", "year ( curdate ( ) ) - {}"]).format(2020 - int(match.group()))
    return sql[: match.start()] + expression + sql[match.end() :]


def typo(sql, rng):
    words = list(re.finditer(r"\b[A-Za-z_]{4,}\b", sql))
    if not words:
        return None
    match = rng.choice(words)
    word = match.group()
    index = rng.randrange(len(word))
    return sql[: match.start()] + word[:index] + word[index + 1 :] + sql[match.end() :]


def truncate(sql, rng):
    return sql[: rng.randrange(1, len(sql))]


def delete_token(sql, rng):
    tokens = sql.split()
    if len(tokens) < 2:
        return None
    del tokens[rng.randrange(len(tokens))]
    return " ".join(tokens)


def garbage(sql, rng):
    return rng.choice([
        "", " ", "\n", "-- nothing", "/* */", ";", "SELECT", "I don't know", "SELECT * FROM", "DISTINCT",
        "SELECT 1", "SELECT NULL", "SELECT count(*) FROM sqlite_master", "SELECT 'distinct'", "select distinct 1",
        "SELECT * FROM sqlite_master WHERE 0", "```sql\n" + sql + "\n```", "SQL: " + sql, sql + " ```",
        "SELECT " + "(" * 3, "SELECT x'ff'", "SELECT 1 UNION SELECT 2", "VALUES (1)", "SELECT '\u00e9' , 1.5",
    ])


def write_statement(sql, rng):
    table = re.search(r"\bfrom\s+(\w+)", sql, re.I)
    if not table:
        return None
    name = table.group(1)
    return rng.choice([f"DROP TABLE {name}", f"DELETE FROM {name}", f"DELETE FROM {name} WHERE 0", f"UPDATE {name} SET rowid = rowid",
                       f"INSERT INTO {name} SELECT * FROM {name} WHERE 0", "ATTACH DATABASE ':memory:' AS other", "CREATE TABLE t_new(a)",
                       "PRAGMA user_version", "BEGIN", "VACUUM"])


PERTURBATIONS = [
    shuffle_columns, duplicate_column, drop_column, star_columns, add_distinct, remove_distinct_word, count_distinct,
    drop_order_by, flip_direction, add_order_by, change_limit, change_number, change_string, swap_aggregate,
    change_comparison, change_join, drop_where, drop_group_by, swap_set_operator, change_case, change_whitespace,
    add_semicolons, prepend_statement, add_comment, int_to_real, current_year, typo, truncate, delete_token, garbage,
]
WRITE_KIND = write_statement.__name__


def perturbation_pairs(golds: list[tuple[str, str]], count: int, rng: random.Random) -> list[Pair]:
    pairs = []
    while len(pairs) < count:
        sql, db = rng.choice(golds)
        perturb = rng.choice(PERTURBATIONS)
        pred = perturb(sql, rng)
        if pred is not None:
            pairs.append(Pair("perturb", perturb.__name__, db, sql, pred))
    # Writes are few and run on a fresh copy each (see main).
    for _ in range(max(count // 100, 10)):
        sql, db = rng.choice(golds)
        pred = write_statement(sql, rng)
        if pred is not None:
            pairs.append(Pair("perturb", WRITE_KIND, db, sql, pred))
    return pairs


def gold_side_pairs(dev: list[tuple[str, str]], rng: random.Random) -> list[Pair]:
    """The gold text varies: the official "order by" substring rule, DISTINCT, extra statements."""
    pairs = []
    for sql, db in dev:
        if re.search(r"order\s+by", sql, re.I):
            spaced = re.sub(r"order\s+by", rng.choice(["ORDER  BY", "order\nBY", "Order By"]), sql, flags=re.I)
            pairs.append(Pair("gold-side", "order by spacing", db, spaced, flip_direction(sql, rng) or sql))
            pairs.append(Pair("gold-side", "order by spacing", db, spaced, sql))
    for sql, db in rng.sample(dev, 300):
        pairs.append(Pair("gold-side", "distinct gold", db, add_distinct(sql, rng), sql))
        pairs.append(Pair("gold-side", "two statements", db, sql + "; SELECT 1", sql))
        pairs.append(Pair("gold-side", "comment in gold", db, sql + " -- order by", sql))
        pairs.append(Pair("gold-side", "broken gold", db, typo(sql, rng) or sql, sql))
    return pairs


# ---------------------------------------------------------------------------------------------
# Running the pairs


class Databases:
    """Scratch copies for the official code (it opens the file read-write)."""

    def __init__(self, spider: Path, scratch: Path):
        self.spider, self.scratch = spider, scratch
        self.hashes: dict[str, str] = {}

    def original(self, db_id: str) -> Path:
        return self.spider / "database" / db_id / f"{db_id}.sqlite"

    def copy(self, db_id: str) -> Path:
        target = self.scratch / db_id / f"{db_id}.sqlite"
        if not target.exists():
            target.parent.mkdir(parents=True)
            shutil.copyfile(self.original(db_id), target)
            self.hashes[db_id] = _sha256(target)
        return target

    def fresh_copy(self, db_id: str) -> Path:
        target = self.scratch / "fresh" / db_id / f"{db_id}.sqlite"
        shutil.rmtree(target.parent, ignore_errors=True)
        target.parent.mkdir(parents=True)
        shutil.copyfile(self.original(db_id), target)
        return target

    def changed(self) -> list[str]:
        return [db_id for db_id, digest in self.hashes.items() if _sha256(self.copy(db_id)) != digest]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Result:
    pair: Pair
    ours: object  # True / False / GOLD_ERROR
    status: str  # our pred status
    official: object  # True / False / GOLD_ERROR / CRASH / None (not run: guarded)


def run_pairs(pairs: list[Pair], databases: Databases, exec_eval, timeout_s: float) -> list[Result]:
    results = []
    for number, pair in enumerate(pairs, 1):
        ours, status = our_ex(databases.original(pair.db_id), pair.gold, pair.pred, timeout_s)
        if status in ("timeout", "too_many_rows"):
            official = None
        else:
            db_path = databases.fresh_copy(pair.db_id) if pair.kind == WRITE_KIND else databases.copy(pair.db_id)
            official = official_ex(exec_eval, db_path, pair.gold, pair.pred)
        results.append(Result(pair, ours, status, official))
        if number % 1000 == 0:
            print(f"  {number}/{len(pairs)}", file=sys.stderr)
    return results


def explained(result: Result) -> str | None:
    """Why a disagreement is by design, or None when it is unexplained."""
    if result.official == CRASH and result.status == "no_sql":
        return "empty prediction: the official crashes (sqlparse finds no statement), ours is no_sql"
    if result.official is True and result.status == "no_sql":
        return "comment-only prediction vs empty gold result: official matches, ours is no_sql"
    if result.official is True and result.pair.kind == WRITE_KIND:
        return "write/non-query prediction vs empty gold result: official runs it (and writes), ours denies it"
    return None


# ---------------------------------------------------------------------------------------------
# Fuzzing the pieces directly


def result_fuzz(exec_eval, count: int, rng: random.Random) -> tuple[int, list]:
    pool = [0, 1, 2, 1.0, 2.0, 1.5, 10, 10.0, -0.0, "a", "b", "1", "", None, b"x"]
    disagreements = []
    for _ in range(count):
        width, height = rng.randint(1, 5), rng.randint(0, 5)
        gold = [tuple(rng.choice(pool) for _ in range(width)) for _ in range(height)]
        pred = _mutate_table(gold, pool, rng)
        for order in (False, True):
            ours = results_match(gold, pred, order)
            official = exec_eval.result_eq(gold, pred, order_matters=order)
            if ours != official:
                disagreements.append((gold, pred, order, ours, official))
    return count * 2, disagreements


def _mutate_table(gold: list[tuple], pool: list, rng: random.Random) -> list[tuple]:
    rows = [list(row) for row in gold]
    width = len(gold[0]) if gold else rng.randint(1, 3)
    for _ in range(rng.randint(0, 3)):
        choice = rng.choice(["columns", "rows", "value", "numeric", "dup", "drop", "none"])
        if choice == "columns" and rows:
            permutation = rng.sample(range(width), width)
            rows = [[row[i] for i in permutation] for row in rows]
        elif choice == "rows":
            rng.shuffle(rows)
        elif choice == "value" and rows:
            rng.choice(rows)[rng.randrange(width)] = rng.choice(pool)
        elif choice == "numeric" and rows:
            row = rng.choice(rows)
            index = rng.randrange(width)
            if isinstance(row[index], (int, float)):
                row[index] = float(row[index]) if isinstance(row[index], int) else int(row[index])
        elif choice == "dup" and rows:
            rows.append(list(rng.choice(rows)))
        elif choice == "drop" and rows:
            rows.pop(rng.randrange(len(rows)))
    return [tuple(row) for row in rows]


def text_fuzz(parse, golds: list[str], count: int, rng: random.Random) -> tuple[int, list]:
    pieces = ["SELECT", " ", "DISTINCT", "distinct", "(", ")", ";", "'", '"', "`", "--", "# ", "/*", "*/", "\n", "END",
              "GO", "t1.", ".", "a", "$", "$$", "[", "]", "1", "1.5", "-", "\\", "count", "CASE", "x", "#", "@", ":", "?",
              "> =", "< =", "! =", "=", ",", "DiStInCt", "\r", "\t", "FROM", "AS", "'distinct'", "--+", "é"]
    texts = list(golds)
    for _ in range(count):
        texts.append("".join(rng.choice(pieces) for _ in range(rng.randint(1, 14))))
    disagreements = []
    for text in texts:
        try:
            official = parse.remove_distinct(parse.postprocess(text))
        except IndexError:  # sqlparse found no statement
            official = None
        if official_cleanup(text) != official:
            disagreements.append((text, official, official_cleanup(text)))
    return len(texts), disagreements


# ---------------------------------------------------------------------------------------------
# Report


def _agrees(result: Result, crash_is_no_match: bool = False) -> bool:
    official = False if crash_is_no_match and result.official == CRASH else result.official
    return result.ours == official


def report(results: list[Result], show: int) -> int:
    """Print the agreement table and the differences; return the number of unexplained ones."""
    by_source = defaultdict(list)
    for result in results:
        by_source[result.pair.source].append(result)
    print(f"{'source':<10} {'pairs':>6} {'compared':>8} {'agree':>6} {'by design':>9} {'unexplained':>11} {'guarded':>7} {'EX ours':>7} {'EX off.':>7}")
    for source, rows in [*by_source.items(), ("all", results)]:
        compared = [r for r in rows if r.official is not None]
        differ = [r for r in compared if not _agrees(r)]
        unexplained = [r for r in differ if not explained(r)]
        ours_rate = sum(r.ours is True for r in compared) / max(len(compared), 1)
        official_rate = sum(r.official is True for r in compared) / max(len(compared), 1)
        print(f"{source:<10} {len(rows):>6} {len(compared):>8} {len(compared) - len(differ):>6} {len(differ) - len(unexplained):>9} "
              f"{len(unexplained):>11} {len(rows) - len(compared):>7} {ours_rate:>7.3f} {official_rate:>7.3f}")

    compared = [r for r in results if r.official is not None]
    differ = [r for r in compared if not _agrees(r)]
    unexplained = [r for r in differ if not explained(r)]
    n = max(len(compared), 1)
    strict = len(compared) - len(differ)
    lenient = sum(_agrees(r, crash_is_no_match=True) for r in compared)
    print(f"\nEX agreement, same verdict: {strict}/{len(compared)} = {strict / n:.4%}")
    print(f"EX agreement, an official crash counted as no match: {lenient}/{len(compared)} = {lenient / n:.4%}")
    print(f"EX agreement, by-design differences included: {len(compared) - len(unexplained)}/{len(compared)}")
    for reason, count in Counter(explained(r) for r in differ if explained(r)).items():
        print(f"  by design ({count}): {reason}")
    guarded = [r for r in results if r.official is None]
    print(f"  guarded (our timeout / row cap, not compared): {len(guarded)}")
    for r in guarded[:show]:
        print(f"    [{r.pair.kind}] {r.pair.db_id} {r.status}: {r.pair.pred[:150]!r}")
    for r in unexplained[:show]:
        print(f"\nUNEXPLAINED [{r.pair.source}/{r.pair.kind}] {r.pair.db_id}: ours={r.ours} ({r.status}) official={r.official}")
        print(f"  gold: {r.pair.gold!r}\n  pred: {r.pair.pred!r}")
    kinds = Counter((r.pair.kind, _agrees(r)) for r in compared if r.pair.source == "perturb")
    print("\nperturbation kinds (same verdict/compared): " + ", ".join(
        f"{kind} {kinds[(kind, True)]}/{kinds[(kind, True)] + kinds[(kind, False)]}" for kind in sorted({k for k, _ in kinds})))
    return len(unexplained)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", type=Path, default=Path("/tmp/ts_official"), help="extracted test-suite-sql-eval checkout")
    parser.add_argument("--spider", type=Path, required=True, help="Spider folder (dev_gold.sql, train_gold.sql, database/)")
    parser.add_argument("--preds", action="append", default=[], metavar="PRED_FILE:GOLD_FILE", help="real predictions, line-aligned")
    parser.add_argument("--perturbations", type=int, default=6000, help="perturbed predictions to generate")
    parser.add_argument("--result-fuzz", type=int, default=20000, help="random table pairs for results_match vs result_eq")
    parser.add_argument("--text-fuzz", type=int, default=50000, help="random texts for the DISTINCT / first-statement clean-up")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=5.0, help="our per-query timeout in seconds")
    parser.add_argument("--show", type=int, default=15, help="unexplained disagreements to print")
    args = parser.parse_args()

    exec_eval, parse = import_official(args.official)
    rng = random.Random(args.seed)
    random.seed(args.seed)  # the official samples rows for wide results; its answer does not depend on it
    with tempfile.TemporaryDirectory() as scratch:
        databases = Databases(args.spider, Path(scratch))
        usable = lambda pairs: [(sql, db) for sql, db in pairs if databases.original(db).is_file()]  # noqa: E731
        dev = usable(read_gold(args.spider / "dev_gold.sql"))
        train = usable(read_gold(args.spider / "train_gold.sql"))
        from_files = [pair for spec in args.preds for pair in file_pairs(spec) if databases.original(pair.db_id).is_file()]
        pairs = from_files + self_pairs(dev) + cross_pairs(dev, rng) + perturbation_pairs(dev + train, args.perturbations, rng) + gold_side_pairs(dev, rng)
        started = time.time()
        results = run_pairs(pairs, databases, exec_eval, args.timeout)
        print(f"{len(pairs)} pairs in {time.time() - started:.0f} s (dev-972 usable: {len(dev)})\n")
        changed = databases.changed()
    unexplained = report(results, args.show)

    n, table_disagreements = result_fuzz(exec_eval, args.result_fuzz, rng)
    print(f"\nresult fuzz: results_match vs result_eq agree on {n - len(table_disagreements)}/{n}")
    for case in table_disagreements[: args.show]:
        print("  ", case)
    n, text_disagreements = text_fuzz(parse, [sql for sql, _ in dev + train], args.text_fuzz, rng)
    print(f"text fuzz: official_cleanup vs remove_distinct(postprocess) agree on {n - len(text_disagreements)}/{n}")
    for case in text_disagreements[: args.show]:
        print("  ", case)
    if changed:
        print(f"WARNING: the official code changed the scratch copies of {changed}")
    return 1 if unexplained or table_disagreements or text_disagreements or changed else 0


if __name__ == "__main__":
    sys.exit(main())
