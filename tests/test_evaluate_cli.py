"""The `ray-spider eval` command end to end on real Spider databases (official evaluators' contract)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def run_eval(spider_dir, gold, pred, *extra):
    return subprocess.run(
        [sys.executable, "-m", "ray_spider", "eval", "--gold", str(gold), "--pred", str(pred),
         "--db", str(spider_dir / "database"), "--table", str(spider_dir / "tables.json"), *extra],
        capture_output=True, text=True,
    )


@pytest.fixture(scope="module")
def gold_as_pred(spider_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "pred.sql"
    lines = (spider_dir / "dev_gold.sql").read_text().splitlines()
    path.write_text("".join(line.split("\t")[0] + "\n" for line in lines if line.strip()))
    return path


def test_dev_gold_scores_itself_perfectly(spider_dir, gold_as_pred, tmp_path):
    per_example = tmp_path / "per_example.jsonl"
    result = run_eval(spider_dir, spider_dir / "dev_gold.sql", gold_as_pred, "--json", "--per-example", str(per_example))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["n"], summary["ex"], summary["em"]) == (972, 1.0, 1.0)
    assert summary["skipped_missing_db"] == 62 and summary["skipped_db_ids"] == ["wta_1"]
    assert sum(row["n"] for row in summary["by_hardness"].values()) == 972
    records = [json.loads(line) for line in per_example.read_text().splitlines()]
    assert len(records) == 972 and all(r["ex"] and r["em"] for r in records)
    assert {"index", "db_id", "hardness", "ex", "em"} <= set(records[0])


def test_wrong_and_empty_predictions(spider_dir, tmp_path):
    gold = tmp_path / "gold.sql"
    gold.write_text(
        "SELECT count(*) FROM singer\tconcert_singer\n"
        "SELECT name FROM singer ORDER BY age DESC\tconcert_singer\n"
        "SELECT name FROM singer\tconcert_singer\n"
        "SELECT count(*) FROM players\twta_1\n"
    )
    pred = tmp_path / "pred.sql"
    pred.write_text("SELECT count(*) FROM singer\nSELECT name FROM singer ORDER BY age ASC\n\nSELECT 1\n")
    result = run_eval(spider_dir, gold, pred, "--json", "--per-example", str(tmp_path / "rows.jsonl"))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["n"] == 3 and summary["skipped_missing_db"] == 1
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert [(r["ex"], r["em"]) for r in rows] == [(True, True), (False, False), (False, False)]
    assert rows[2]["error_type"] == "no_sql"


def test_line_count_mismatch_is_an_error(spider_dir, tmp_path):
    (tmp_path / "gold.sql").write_text("SELECT 1\tconcert_singer\nSELECT 2\tconcert_singer\n")
    (tmp_path / "pred.sql").write_text("SELECT 1\n")
    result = run_eval(spider_dir, tmp_path / "gold.sql", tmp_path / "pred.sql")
    assert result.returncode == 2
    assert "2 gold queries but 1 predictions" in result.stderr


def test_malformed_gold_line_is_named(spider_dir, tmp_path):
    (tmp_path / "gold.sql").write_text("SELECT 1 no tab here\n")
    (tmp_path / "pred.sql").write_text("SELECT 1\n")
    result = run_eval(spider_dir, tmp_path / "gold.sql", tmp_path / "pred.sql")
    assert result.returncode == 2
    assert "gold.sql:1" in result.stderr


@pytest.mark.parametrize("command", [["train", "sweeps/smoke_cpu.yaml"], ["predict", "--out", "unused"], ["sweep", "sweeps/sweep_smoke_cpu.yaml"]])
def test_missing_spider_folder_is_named_before_any_work(command, tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "SPIDER_DIR"}
    result = subprocess.run([sys.executable, "-m", "ray_spider", *command], capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert result.returncode == 2
    assert "SPIDER_DIR" in result.stdout + result.stderr and "Traceback" not in result.stderr


GOLD_LINES = "SELECT count(*) FROM singer\tconcert_singer\nSELECT name FROM singer WHERE age > 40\tconcert_singer\n"


def write_pair(tmp_path, gold: bytes | str = GOLD_LINES, pred: bytes | str = "SELECT count(*) FROM singer\nSELECT name FROM singer WHERE age > 40\n"):
    for name, content in (("gold.sql", gold), ("pred.sql", pred)):
        (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return tmp_path / "gold.sql", tmp_path / "pred.sql"


def eval_paths(gold, pred, db, table, *extra):
    return subprocess.run(
        [sys.executable, "-m", "ray_spider", "eval", "--gold", str(gold), "--pred", str(pred), "--db", str(db), "--table", str(table), *extra],
        capture_output=True, text=True, timeout=120,
    )


def assert_user_error(result, *needles):
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and result.stderr.startswith("error: ")
    for needle in needles:
        assert needle in result.stderr, result.stderr


def test_spider_root_as_db_folder_is_an_error(spider_dir, tmp_path):
    gold, pred = write_pair(tmp_path)
    result = eval_paths(gold, pred, spider_dir, spider_dir / "tables.json")
    assert_user_error(result, "<db_id>/<db_id>.sqlite", f"did you mean --db {spider_dir / 'database'}")


@pytest.mark.parametrize(
    "content, needle",
    [('[{"db_id": "concert_singer", "table_na', "not valid JSON"), ("not json at all", "not valid JSON"), ("{}", "expected a JSON list"), (None, "lacks table_names_original")],
    ids=["truncated", "text", "object", "dev.json"],
)
def test_bad_tables_file_is_one_error(spider_dir, tmp_path, content, needle):
    gold, pred = write_pair(tmp_path)
    table = spider_dir / "dev.json" if content is None else tmp_path / "tables.json"
    if content is not None:
        table.write_text(content)
    result = eval_paths(gold, pred, spider_dir / "database", table)
    assert_user_error(result, str(table), needle)
    assert "DATA ERROR" not in result.stderr


def test_gold_db_id_not_in_tables_is_an_error_but_a_missing_database_file_is_skipped(spider_dir, tmp_path):
    gold, pred = write_pair(tmp_path, gold=GOLD_LINES + "SELECT 1\tno_such_db\n", pred="SELECT 1\nSELECT 1\nSELECT 1\n")
    assert_user_error(eval_paths(gold, pred, spider_dir / "database", spider_dir / "tables.json"), "no_such_db", "not in")
    gold, pred = write_pair(tmp_path, gold=GOLD_LINES + "SELECT count(*) FROM players\twta_1\n", pred="SELECT 1\nSELECT 1\nSELECT 1\n")
    result = eval_paths(gold, pred, spider_dir / "database", spider_dir / "tables.json", "--json")
    assert result.returncode == 0 and json.loads(result.stdout)["skipped_db_ids"] == ["wta_1"]


def test_byte_order_marks_are_dropped(spider_dir, tmp_path):
    gold, pred = write_pair(tmp_path, gold=b"\xef\xbb\xbf" + GOLD_LINES.encode(), pred=b"\xef\xbb\xbfSELECT count(*) FROM singer\nSELECT name FROM singer WHERE age > 40\n")
    result = eval_paths(gold, pred, spider_dir / "database", spider_dir / "tables.json", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["n"], summary["ex"], summary["em"], summary["gold_errors"]) == (2, 1.0, 1.0, 0)


@pytest.mark.parametrize("which", ["gold", "pred"])
def test_a_file_that_is_not_utf8_is_named_with_its_line(spider_dir, tmp_path, which):
    latin1 = "SELECT name FROM singer WHERE name = 'Jos\xe9'".encode("latin-1")
    gold, pred = write_pair(
        tmp_path,
        gold=GOLD_LINES.encode() + (latin1 + b"\tconcert_singer\n" if which == "gold" else b"SELECT 1\tconcert_singer\n"),
        pred=b"SELECT 1\nSELECT 1\n" + (latin1 if which == "pred" else b"SELECT 1") + b"\n",
    )
    result = eval_paths(gold, pred, spider_dir / "database", spider_dir / "tables.json")
    assert_user_error(result, f"{which}.sql:3", "not UTF-8")


@pytest.mark.parametrize("target", ["gold", "pred"])
def test_per_example_never_overwrites_an_input(spider_dir, tmp_path, target):
    gold, pred = write_pair(tmp_path)
    before = {path: path.read_bytes() for path in (gold, pred)}
    result = eval_paths(gold, pred, spider_dir / "database", spider_dir / "tables.json", "--per-example", str(tmp_path / f"{target}.sql"))
    assert_user_error(result, "is also an input")
    assert {path: path.read_bytes() for path in (gold, pred)} == before


def wait_until_importing(process: subprocess.Popen, library: str = "pydantic_core", timeout_s: float = 60) -> None:
    """Until ``process`` has loaded ``library``'s shared object: it is then inside ``main()``,
    importing the CLI (ray_spider.config needs pydantic), whatever the machine's load."""
    deadline = time.monotonic() + timeout_s
    while library not in Path(f"/proc/{process.pid}/maps").read_text():
        assert process.poll() is None and time.monotonic() < deadline, f"the command never loaded {library}"
        time.sleep(0.01)


@pytest.mark.parametrize(
    "workers, when, signum",
    [("1", "scoring", signal.SIGINT), ("2", "scoring", signal.SIGINT), ("1", "importing", signal.SIGINT),
     ("1", "importing", signal.SIGTERM), ("2", "scoring", signal.SIGTERM)],
)
def test_ctrl_c_stops_scoring_at_once_and_writes_nothing(spider_dir, tmp_path, workers, when, signum):
    """Predictions that run until their 120 s timeout; SIGINT while scoring (after 4 s) or while the
    CLI is still importing must end the command within seconds, exit 130 (not a traceback, nor
    -2: death by the signal), and leave no per-example file. SIGTERM (`ray job stop`,
    `docker stop`) ends it the same way."""
    endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    gold, pred = write_pair(tmp_path, gold="SELECT count(*) FROM singer\tconcert_singer\n" * 40, pred=(endless + "\n") * 40)
    out = tmp_path / "rows.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "ray_spider", "eval", "--gold", str(gold), "--pred", str(pred), "--db", str(spider_dir / "database"),
         "--table", str(spider_dir / "tables.json"), "--timeout", "120", "--workers", workers, "--per-example", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        if when == "importing":
            wait_until_importing(process)
        else:
            time.sleep(4)
        process.send_signal(signum)
        started = time.monotonic()
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:  # a failed test must not leave endless queries running
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, stderr
    assert time.monotonic() - started < 15
    assert "interrupted:" in stderr and "Traceback" not in stderr
    assert not out.exists() and not list(tmp_path.glob(".*partial"))


def test_an_interrupt_handled_inside_a_string_eval_still_exits_130(tmp_path):
    """CPython kills a `python -m` process by SIGINT at exit (status -2) once a KeyboardInterrupt has
    left an eval of a string (typer evaluates annotations so), even when it was handled and the
    process exits 130; errors.forget_handled_interrupt clears that."""
    (tmp_path / "interrupted_in_eval.py").write_text(
        "from ray_spider.errors import forget_handled_interrupt\n"
        "try:\n"
        "    eval('(_ for _ in ()).throw(KeyboardInterrupt)')\n"
        "except KeyboardInterrupt:\n"
        "    forget_handled_interrupt()\n"
        "raise SystemExit(130)\n"
    )
    paths = os.pathsep.join([str(tmp_path), str(Path(__file__).parents[1])])
    result = subprocess.run([sys.executable, "-m", "interrupted_in_eval"], env={**os.environ, "PYTHONPATH": paths}, capture_output=True, text=True)
    assert result.returncode == 130, result.stderr


def test_failing_gold_query_is_a_data_error_left_out_of_the_scores(spider_dir, tmp_path):
    gold = tmp_path / "gold.sql"
    gold.write_text("SELECT nme FROM singer\tconcert_singer\nSELECT count(*) FROM singer\tconcert_singer\n")
    pred = tmp_path / "pred.sql"
    pred.write_text("SELECT name FROM singer\nSELECT count(*) FROM singer\n")
    result = run_eval(spider_dir, gold, pred, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["n"], summary["ex"], summary["gold_errors"]) == (1, 1.0, 1)
    assert "DATA ERROR" in result.stderr and "SELECT nme FROM singer" in result.stderr


def test_a_bug_of_ours_is_not_taken_for_a_data_error(spider_dir, monkeypatch):
    """Only GoldError marks bad gold data; any other exception is a bug and must surface."""
    from ray_spider.evaluation.exact_match import ExactMatcher
    from ray_spider.evaluation.score import GoldQuery, score

    def broken(self, gold_sql, db_id):
        raise ValueError("a bug in our code")

    monkeypatch.setattr(ExactMatcher, "hardness", broken)
    with pytest.raises(ValueError, match="a bug in our code"):
        score([GoldQuery("SELECT count(*) FROM singer", "concert_singer")], ["SELECT 1"],
              spider_dir / "database", spider_dir / "tables.json", workers=1, progress=False)


def test_summary_keeps_its_json_shape(spider_dir):
    from ray_spider.evaluation.score import GoldQuery, Summary, score

    report = score([GoldQuery("SELECT count(*) FROM singer", "concert_singer"), GoldQuery("SELECT 1", "wta_1")],
                   ["SELECT count(*) FROM singer"] * 2, spider_dir / "database", spider_dir / "tables.json", workers=1, progress=False)
    data = report.summary().to_dict()
    assert list(data) == ["n", "ex", "em", "by_hardness", "error_types", "skipped_missing_db", "skipped_db_ids", "gold_errors"]
    assert data["by_hardness"]["easy"] == {"n": 1, "ex": 1.0, "em": 1.0}
    assert list(data["by_hardness"]) == ["easy", "medium", "hard", "extra"]
    assert Summary.from_dict(json.loads(json.dumps(data))) == report.summary()


@pytest.mark.parametrize("flag, value", [("--timeout", "-1"), ("--timeout", "0"), ("--workers", "0")])
def test_a_timeout_or_pool_that_cannot_score_is_an_error(spider_dir, tmp_path, flag, value):
    gold, pred = write_pair(tmp_path)
    result = eval_paths(gold, pred, spider_dir / "database", spider_dir / "tables.json", flag, value)
    assert_user_error(result, value)


def test_the_evaluator_imports_nothing_from_the_training_side():
    """ray_spider/evaluation/ is a product of its own: only the standard library, rich, and itself."""
    import ast

    package = Path(__file__).resolve().parents[1] / "ray_spider" / "evaluation"
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert not name.startswith("ray_spider") or name.startswith("ray_spider.evaluation"), f"{path.name} imports {name}"
                assert name.split(".")[0] not in {"torch", "transformers", "ray", "peft", "trl", "datasets"}, f"{path.name} imports {name}"
