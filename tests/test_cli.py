"""The `prompt`, `data build`, `predict` and `baseline` commands end to end: the real CLI on the tiny
random LLaMA (tests/conftest.py) and real Spider databases, a few questions each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
FEW_DEV = ["data.dev_subset=3", "generation.max_new_tokens=8", "model.quantization=none", "eval.workers=1"]


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([sys.executable, "-m", "ray_spider", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_prompt_prints_the_training_conversation(spider):
    from ray_spider.config import PromptConfig
    from ray_spider.prompt import Prompter

    result = run_cli("prompt", "--db-id", "concert_singer", "--question", "How many singers do we have?", "--sql", "SELECT count(*) FROM singer")
    prompter = Prompter(spider, PromptConfig())
    assert json.loads(result.stdout) == prompter.conversation("concert_singer", "How many singers do we have?", "SELECT count(*) FROM singer")
    assert f"prompt version {prompter.version}" in result.stderr


@pytest.mark.slow
def test_data_build_counts_tokens_as_training_does(tiny_dir, spider, tmp_path):
    """With a Llama-3-style template, tokenizing the joined conversation merges tokens across the
    prompt/answer boundary; the statistics must count what training sees (prompt and answer apart)."""
    import torch
    from test_train import llama3_style

    from ray_spider.config import load_run_config
    from ray_spider.data import build_sft_dataset, train_examples
    from ray_spider.model import apply_lora, load_model, load_tokenizer
    from ray_spider.prompt import Prompter
    from ray_spider.train import build_trainer, tokenize_dataset

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"data": {"max_train_examples": 12}}))
    model_dir = llama3_style(tiny_dir, tmp_path / "llama3")
    out = tmp_path / "sft"
    run_cli("data", "build", "--out", str(out), "--tokenizer", model_dir, "--max-length", "400", "--config", str(config))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_examples"] == 12 and summary["dev_scorable"] == 972 and summary["dev_skipped_missing_db"] == 62
    assert len((out / "preview.jsonl").read_text().splitlines()) == 12

    cfg = load_run_config(config, [f"model.name={model_dir}", "model.quantization=none", "train.max_length=4096"])
    dataset = build_sft_dataset(Prompter(spider, cfg.prompt), train_examples(spider, cfg.data))
    model = apply_lora(load_model(cfg.model, device="cpu"), cfg.lora)
    tokenizer = load_tokenizer(model_dir)
    trainer = build_trainer(cfg, model, tokenizer, tokenize_dataset(dataset, tokenizer), str(tmp_path / "trainer"), torch.device("cpu"))
    trained = sorted(len(ids) for ids in trainer.train_dataset["input_ids"])
    lengths = summary["token_lengths"]
    assert (lengths["min"], lengths["max"], lengths["p50"]) == (trained[0], trained[-1], trained[len(trained) // 2])
    assert lengths["over_max_length"] == sum(length > 400 for length in trained)


@pytest.mark.slow
def test_predict_answers_scores_and_writes_the_official_files(tiny_dir, spider_dir, tmp_path):
    out = tmp_path / "preds"
    result = run_cli("predict", "--model", tiny_dir, "--out", str(out), *FEW_DEV)
    assert "generated 3 answers" in result.stderr  # the logging set-up lets log.info through
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 3 and set(summary["by_hardness"]) == {"easy", "medium", "hard", "extra"}
    assert {"sql_only_rate", "generate_s", "score_s", "prompt_version"} <= set(summary)
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all({"raw_output", "sql", "ex", "em", "hardness"} <= set(r) for r in records)
    # The files are in the official format: `ray-spider eval` on them gives the same scores.
    scored = run_cli("eval", "--gold", str(out / "gold.sql"), "--pred", str(out / "pred.sql"),
                     "--db", str(spider_dir / "database"), "--table", str(spider_dir / "tables.json"), "--json", "--workers", "1")
    again = json.loads(scored.stdout)
    assert {key: again[key] for key in ("n", "ex", "em", "by_hardness")} == {key: summary[key] for key in ("n", "ex", "em", "by_hardness")}


@pytest.mark.slow
def test_baseline_writes_a_run_folder_without_adapter(tiny_dir, tmp_path):
    run_cli("baseline", "sweeps/smoke_cpu.yaml", f"model.name={tiny_dir}", f"output_dir={tmp_path}", *FEW_DEV)
    (run_dir,) = tmp_path.iterdir()
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["lora"]["enabled"] is False
    manifest = json.loads((run_dir / "manifest.json").read_text())
    summary = json.loads((run_dir / "dev_eval" / "summary.json").read_text())
    assert manifest["prompt_version"] == summary["prompt_version"] and summary["n"] == 3
    report = (run_dir / "report.md").read_text()
    assert "LoRA off" in report and "## Dev (3 questions scored" in report and "Decoding: greedy" in report
    assert manifest["decoding"]["candidates"] == 1
    assert not (run_dir / "adapter").exists()


@pytest.mark.parametrize("given, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_the_entry_point_makes_openmp_threads_wait_passively_unless_told(given, expected):
    """Spin-waiting OpenMP threads on shared cores made CPU predict 6x slower (docs/benchmarks.md)."""
    script = (
        "import os, sys\nsys.argv = ['ray-spider', '--help']\nfrom ray_spider.__main__ import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\nprint('policy', os.environ.get('OMP_WAIT_POLICY'))"
    )
    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"} | ({"OMP_WAIT_POLICY": given} if given else {})
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.stdout.splitlines()[-1] == f"policy {expected}", result.stderr
