"""The `ray-spider eval` command end to end on real Spider databases (official evaluators' contract)."""

import json
import os
import subprocess
import sys
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
