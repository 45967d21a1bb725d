"""What users reach for after `best`: `ask`, `export`, `predict --questions`, `compare`, end to end
through the CLI on the tiny model (and the real offline model where an answer must be real SQL)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from ray_spider.config import ModelConfig, RunConfig, build_run_config, load_run_config
from ray_spider.model import apply_lora, load_model
from ray_spider.records import write_config

from test_train import run_cli

SMALL = {"generation": {"max_new_tokens": 8, "batch_size": 4}, "eval": {"workers": 1}}


def make_adapter(model_dir: str, out, random_lora: bool = True) -> RunConfig:
    """A LoRA adapter on ``model_dir`` saved with its run config beside it (as `best --out` does).
    random_lora: LoRA B drawn at random, so the adapter changes the outputs (PEFT starts B at 0)."""
    cfg = build_run_config({**SMALL, "model": {"name": model_dir, "quantization": "none"}, "lora": {"r": 4}})
    torch.manual_seed(0)
    model = apply_lora(load_model(cfg.model, device="cpu"), cfg.lora)
    if random_lora:
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.data.normal_(0, 0.5)
    model.save_pretrained(out)
    write_config(cfg, out)
    return cfg


def one_error_line(result, *fragments: str) -> None:
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr[-2000:]
    message = " ".join(result.stderr.split())  # rich wraps long lines
    for fragment in fragments:
        assert fragment in message, message


@pytest.fixture(scope="module")
def tiny_adapter(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapter")
    make_adapter(tiny_dir, out)
    return out


@pytest.mark.slow
def test_export_merges_the_adapter_into_a_plain_transformers_model(tiny_adapter, tiny_dir, tmp_path):
    result = run_cli("export", "--adapter", str(tiny_adapter), "--out", str(tmp_path / "merged"), "--merge", "--dtype", "float32")
    assert result.returncode == 0, result.stderr[-3000:]

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")  # no peft needed
    assert not any("lora" in name for name, _ in merged.named_parameters())
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    ids = tokenizer("SELECT count(*) FROM singer", return_tensors="pt")["input_ids"]
    adapted = PeftModel.from_pretrained(load_model(ModelConfig(name=tiny_dir, quantization="none"), device="cpu"), tiny_adapter)
    base = load_model(ModelConfig(name=tiny_dir, quantization="none"), device="cpu")
    with torch.no_grad():
        expected, got, unadapted = adapted(ids).logits, merged(ids).logits, base(ids).logits
    assert not torch.allclose(expected, unadapted, atol=1e-3)  # the adapter matters...
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)  # ...and the merged model has it

    bf16 = run_cli("export", "--adapter", str(tiny_adapter), "--out", str(tmp_path / "bf16"))
    assert bf16.returncode == 0, bf16.stderr[-3000:]
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "bf16").dtype == torch.bfloat16

    adapter_only = run_cli("export", "--adapter", str(tiny_adapter), "--out", str(tmp_path / "lora"), "--no-merge")
    assert adapter_only.returncode == 0, adapter_only.stderr[-3000:]
    assert (tmp_path / "lora" / "adapter_model.safetensors").read_bytes() == (tiny_adapter / "adapter_model.safetensors").read_bytes()
    assert load_run_config(tmp_path / "lora" / "config.yaml") == load_run_config(tiny_adapter / "config.yaml")  # its prompt goes with it
    assert AutoTokenizer.from_pretrained(tmp_path / "lora").chat_template == tokenizer.chat_template


def test_export_bad_input_is_one_error_line(tiny_adapter, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    one_error_line(run_cli("export", "--adapter", str(tiny_adapter), "--out", str(tmp_path / "full")), "--out", "already holds files")
    one_error_line(run_cli("export", "--adapter", str(tiny_adapter), "--out", str(tmp_path / "full" / "x" / "m")), "--out", "is a file, not a folder")
    one_error_line(run_cli("export", "--adapter", str(tmp_path), "--out", str(tmp_path / "m")), "adapter_config.json")
    one_error_line(run_cli("export", "--adapter", str(tiny_adapter), "--out", str(tmp_path / "m"), "--dtype", "int3"), "--dtype", "bfloat16")
    assert not (tmp_path / "m").exists()  # nothing half-written


def test_ask_bad_input_is_one_error_line(tiny_adapter, tmp_path):
    one_error_line(run_cli("ask", "--adapter", str(tiny_adapter), "--db-id", "no_such_db", "--question", "How many?"), "no_such_db", "tables.json")
    one_error_line(run_cli("ask", "--adapter", str(tiny_adapter), "--db-id", "concert_singer", "--question", " "), "--question")
    one_error_line(run_cli("ask", "--adapter", str(tmp_path), "--db-id", "concert_singer", "--question", "How many?"), "adapter_config.json")


def test_ask_without_sql_in_the_answer_says_so(tiny_adapter):
    result = run_cli("ask", "--adapter", str(tiny_adapter), "--db-id", "concert_singer", "--question", "How many singers do we have?")
    assert result.returncode == 1, result.stderr[-3000:]  # a random model writes no SQL: not a user error
    assert "no SQL in the answer" in result.stderr
    assert "warning: no config.yaml" not in result.stderr  # the adapter's own config.yaml was found


def test_predict_with_an_adapter_uses_the_run_config_saved_with_it(tiny_adapter, tmp_path):
    """Without --config, `predict --adapter` reads the adapter's config.yaml (its model, prompt and
    decoding), as `ask` does; before, it used the defaults (another model and prompt) without a word."""
    out = tmp_path / "preds"
    result = run_cli("predict", "--adapter", str(tiny_adapter), "--out", str(out), "data.dev_subset=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"run config: {tiny_adapter / 'config.yaml'}" in " ".join(result.stderr.split())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 2 and summary["generation"]["max_new_tokens"] == SMALL["generation"]["max_new_tokens"]


def test_ask_without_a_saved_run_config_warns_that_it_uses_the_defaults(tiny_adapter, tiny_dir, tmp_path):
    bare = tmp_path / "bare" / "adapter"  # a PEFT adapter alone: no config.yaml in it or above it
    bare.mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (bare / name).write_bytes((tiny_adapter / name).read_bytes())
    result = run_cli("ask", "--adapter", str(bare), "--db-id", "concert_singer", "--question", "How many singers?",
                     f"model.name={tiny_dir}", "model.quantization=none", "generation.max_new_tokens=4", "eval.workers=1")
    assert result.returncode == 1, result.stderr[-3000:]  # it ran (a random model writes no SQL)
    message = " ".join(result.stderr.split())
    assert "warning: no config.yaml in" in message and "--config RUN/config.yaml" in message


@pytest.mark.slow
def test_ask_prints_the_sql_and_its_rows(offline_dir, tmp_path):
    """The base model's own answers (PEFT's initial adapter changes nothing), phrased so that it writes SQL."""
    make_adapter(offline_dir, tmp_path / "adapter", random_lora=False)
    ask = ["ask", "--adapter", str(tmp_path / "adapter"), "--db-id", "concert_singer", "--question"]
    # `auto` batch and merge, as an adapter of the 8B configs saves them (ask used to pass them on unresolved: a TypeError)
    result = run_cli(*ask, "SELECT the name of every singer.", "generation.max_new_tokens=48", "generation.batch_size=auto", "generation.merge_adapter=auto")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    sql, *table = result.stdout.splitlines()
    assert sql.upper().startswith("SELECT") and "singer" in sql.lower()
    assert any("row(s)" in line for line in table), result.stdout
    failing = run_cli(*ask, "Show the SQL query that counts all singers.", "generation.max_new_tokens=48")  # the base writes SUBSTRING: not SQLite
    assert failing.returncode == 1 and failing.stdout.upper().startswith("SELECT"), failing.stderr[-3000:]
    assert "the query did not run (syntax_error)" in " ".join(failing.stderr.split())


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_predict_on_a_questions_file_without_gold_writes_answers_unscored(tiny_adapter, tmp_path):
    questions = write_jsonl(tmp_path / "my.jsonl", [
        {"db_id": "concert_singer", "question": "How many singers do we have?"},
        {"db_id": "pets_1", "question": "How many pets are there?"},
    ])
    out = tmp_path / "out"
    result = run_cli("predict", "--adapter", str(tiny_adapter), "--config", str(tiny_adapter / "config.yaml"), "--questions", str(questions), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "not scored" in result.stderr
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [(r["index"], r["db_id"]) for r in records] == [(1, "concert_singer"), (2, "pets_1")]
    assert len((out / "pred.sql").read_text().splitlines()) == 2 and not (out / "gold.sql").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scored"] is False and summary["generation"]["max_new_tokens"] > 0  # how they were decoded, as when scored
    one_error_line(run_cli("compare", str(out)), "not scored")


def test_predict_on_a_spider_format_file_with_gold_scores_it(tiny_adapter, spider, tmp_path):
    dev = json.loads((spider.root / "dev.json").read_text())[:3]
    questions = tmp_path / "mine.json"
    questions.write_text(json.dumps(dev))
    out = tmp_path / "out"
    result = run_cli("predict", "--adapter", str(tiny_adapter), "--config", str(tiny_adapter / "config.yaml"), "--questions", str(questions), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 3 and "ex" in summary
    assert len((out / "gold.sql").read_text().splitlines()) == 3

    compared = run_cli("compare", str(out), str(out), "--label", "a", "--label", "b")
    assert compared.returncode == 0, compared.stderr[-2000:]
    assert "SQL-only rate" in compared.stdout and "EX" in compared.stdout
    assert "warning" not in compared.stderr
    voted = tmp_path / "voted"  # each column names how its answers were decoded
    voted.mkdir()
    (voted / "summary.json").write_text(json.dumps({**summary, "generation": {**summary["generation"], "candidates": 16, "pick": "majority_rows"}}))
    decodings = run_cli("compare", str(out), str(voted))
    assert decodings.returncode == 0 and "greedy" in decodings.stdout and "16 sampled, majority_rows" in decodings.stdout, decodings.stdout

    other = tmp_path / "other"  # the same scores over another prompt: not comparable, and said so
    other.mkdir()
    (other / "summary.json").write_text(json.dumps({**summary, "prompt_version": "p0000000000"}))
    mixed = run_cli("compare", str(out), str(other))
    assert mixed.returncode == 0 and "differ in prompt versions" in " ".join(mixed.stderr.split())
    # `other` has no predictions.jsonl: whether both scored the same questions cannot be checked, and it says so
    assert f"unchecked: no readable predictions.jsonl in {other}" in " ".join(mixed.stderr.split()), mixed.stderr
    assert "unchecked" not in compared.stderr
    shuffled = tmp_path / "shuffled"  # as many questions, but other ones: said too
    shuffled.mkdir()
    (shuffled / "summary.json").write_text(json.dumps(summary))
    records = (out / "predictions.jsonl").read_text().splitlines()
    (shuffled / "predictions.jsonl").write_text("\n".join(records[:-1] + [records[-1].replace('"question": "', '"question": "Not ')]) + "\n")
    differing = run_cli("compare", str(out), str(shuffled))
    assert differing.returncode == 0 and "differ in questions (2 of 3 in common)" in " ".join(differing.stderr.split()), differing.stderr
    level = next(name for name, row in summary["by_hardness"].items() if row["n"])
    fewer = tmp_path / "fewer"  # a level without questions shows '-', not a rate of 0
    fewer.mkdir()
    (fewer / "summary.json").write_text(json.dumps({**summary, "by_hardness": {**summary["by_hardness"], level: {"n": 0, "ex": 0.0, "em": 0.0}}}))
    shown = run_cli("compare", str(out), str(fewer))
    assert shown.returncode == 0 and "- (0)" in shown.stdout, shown.stdout

    for name, text in (("cut", '{"n": 3'), ("list", "[1, 2]"), ("partial", '{"n": 3}'), ("typed", json.dumps({**summary, "ex": "high"}))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(text)
        one_error_line(run_cli("compare", str(out), str(tmp_path / name)), "not a summary.json that `predict` or a training run wrote")
    one_error_line(run_cli("compare", str(out / "summary.json")), "give the folder that holds it")
    one_error_line(run_cli("compare", str(tmp_path / "nowhere")), "nowhere: not found")
    run_folder = tmp_path / "run"  # a run folder: its scores are in dev_eval/, and the error says so
    shutil.copytree(out, run_folder / "dev_eval")
    one_error_line(run_cli("compare", str(run_folder)), f"a run folder's scores are in {run_folder / 'dev_eval'}")


def test_a_gold_query_that_fails_is_left_out_and_said(tiny_adapter, tmp_path):
    questions = tmp_path / "mine.jsonl"
    rows = [{"db_id": "concert_singer", "question": "How many singers?", "query": "SELECT count(*) FROM singer"},
            {"db_id": "concert_singer", "question": "Broken gold", "query": "SELEC count(* FROM"}]
    questions.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = run_cli("predict", "--adapter", str(tiny_adapter), "--questions", str(questions), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "warning: 1 gold queries failed to run" in " ".join(result.stderr.split())
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["n"] == 1


@pytest.mark.parametrize("content, fragments", [
    ('{"db_id": "no_such_db", "question": "q"}\n', ["line 1", "no_such_db"]),
    ('{"db_id": "concert_singer"}\n', ["line 1", "'question'"]),
    ('{"db_id": "concert_singer", "question": "q", "query": "SELECT 1"}\n{"db_id": "concert_singer", "question": "r"}\n', ["line 2", "query"]),
    ("not json\n", ["line 1", "not JSON"]),
    ("", ["no questions"]),
    (b'{"db_id": "concert_singer", "question": "caf\xe9"}\n', ["not UTF-8"]),
])
def test_predict_questions_file_errors_name_the_entry(tiny_dir, tiny_adapter, tmp_path, content, fragments):
    questions = tmp_path / "bad.jsonl"
    questions.write_bytes(content if isinstance(content, bytes) else content.encode())
    result = run_cli(
        "predict", "--model", tiny_dir, "--adapter", str(tiny_adapter), "--questions", str(questions), "--out", str(tmp_path / "out")
    )
    one_error_line(result, str(questions), *fragments)
    assert not (tmp_path / "out").exists()
