"""User mistakes on every command end in one named `error:` (exit 2), before Ray starts or a model
loads, with user text shown as typed (never read as markup); tracebacks only with --debug."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SMOKE = "sweeps/smoke_cpu.yaml"
SWEEP = "sweeps/sweep_smoke_cpu.yaml"


def cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ray_spider", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def write(path: Path, text: str | bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def mistakes(tmp: Path) -> list[tuple[list[str], str]]:
    """(command line, what the error must say): one of each kind of mistake, command by command."""
    not_a_model = tmp / "not-a-model"
    not_a_model.mkdir(exist_ok=True)
    a_file = write(tmp / "a-file.txt", "x")
    broken_spider = tmp / "broken-spider"
    if not broken_spider.exists():
        broken_spider.mkdir()
        (broken_spider / "tables.json").symlink_to(Path(os.environ["SPIDER_DIR"]) / "tables.json")
        write(broken_spider / "dev.json", '[{"db_id": "concert_singer", "question": "How many?", "que')
    no_databases = tmp / "no-databases"
    if not no_databases.exists():
        no_databases.mkdir()
        for name in ("tables.json", "dev.json"):
            (no_databases / name).symlink_to(Path(os.environ["SPIDER_DIR"]) / name)
    return [
        (["baseline", SMOKE, f"data.spider_dir={broken_spider}"], "dev.json: not valid JSON"),
        (["predict", "--out", str(tmp / "preds"), f"data.spider_dir={no_databases}"], "holds none of the dev databases"),
        (["prompt", "--db-id", "x[/b]", "--question", "q"], "'x[/b]' is not in"),
        (["prompt", "--db-id", "concert_singe", "--question", "q"], "did you mean concert_singer"),
        (["train", SMOKE, "train.learnin_rate=1e-4"], "did you mean learning_rate"),
        (["train", SMOKE, "lora.r=0"], "from the override 'lora.r=0'"),
        (["train", SMOKE, "train.learning_rate=[1"], "not valid YAML"),
        (["train", str(tmp / "missing.yaml")], "config file not found"),
        (["train", write(tmp / "list.yaml", "- a\n- b\n")], "must be a mapping"),
        (["train", write(tmp / "latin1.yaml", "name: Jos\xe9\n".encode("latin-1"))], "not UTF-8"),
        (["train", SMOKE, f"model.name={not_a_model}"], "no config.json"),
        (["train", SMOKE, f"model.name={tmp / 'missing.gguf'}"], "GGUF file not found"),
        (["train", SMOKE, f"output_dir={a_file}"], "is a file"),
        (["baseline", SMOKE, f"model.name={tmp / 'nowhere'}"], "not a model folder"),
        (["predict", "--out", str(tmp / "preds"), "--adapter", str(tmp / "no-adapter")], "adapter folder not found"),
        (["predict", "--out", str(tmp / "preds"), "--adapter", str(not_a_model)], "no adapter_config.json"),
        (["predict", "--out", a_file], "is a file"),
        (["predict", "--out", str(tmp / "preds"), "--split", "test"], "--split must be dev or train"),
        (["sweep", write(tmp / "frac.yaml", "name: x\nsearch_space:\n  lora.r: {uniform: [1, 64]}\n")], "use randint or choice"),
        (["sweep", write(tmp / "drop.yaml", "name: x\nsearch_space:\n  lora.dropout: {uniform: [2, 3]}\n")], "uniform [2.0, 3.0] can give 2.0"),
        (["sweep", write(tmp / "bounds.yaml", "name: x\nsearch_space:\n  lora.r: {randint: [8, 8]}\n")], "randint needs [low, high] with low < high, got [8, 8]"),
        (["sweep", SWEEP, "train.max_steps=2"], "base.train.max_steps=2"),
        (["sweep", SWEEP, "base.train.max_stepz=2"], "did you mean max_steps"),
        (["sweep", SWEEP, f"storage={tmp}", "--resume"], "no sweep to resume"),
        (["sweep", SWEEP, f"storage={a_file}"], "is a file"),
        (["submit", SWEEP, "storage=s3://bucket/sweeps", "--address", "http://127.0.0.1:9"], "no Ray job server answers at http://127.0.0.1:9"),
        (["trials", str(tmp / "nowhere")], "sweep folder not found"),
        (["trials", str(REPO / "docs")], "is not a sweep folder"),
        (["trials", a_file], "is a file, not a sweep folder"),
        (["best", str(REPO / "docs"), "--out", str(tmp / "best")], "is not a sweep folder"),
        (["best", str(REPO / "docs" / "results" / "sweep-h200-attempt1"), "--out", str(tmp / "best")], "holds the sweep's trials table (trials.parquet"),
        (["data", "build", "--out", a_file], "is a file"),
        (["data", "build", "--out", str(not_a_model.parent)], "already holds files"),
        (["predict", "--out", str(not_a_model.parent)], "already holds files"),
        (["train", "sweeps/smoke_cpu.yaml", "output_dir=/proc/ray-spider-runs"], "/proc is not writable"),
        (["predict", "--out", "/proc/ray-spider/preds"], "/proc is not writable"),
        (["sweep", "sweeps/sweep_smoke_cpu.yaml", "storage=/proc/ray-spider-sweeps"], "/proc is not writable"),
        (["prompt", "--db-id", "concert_singer", "--question", " "], "--question is empty"),
        (["sweep", "sweeps/sweep_smoke_cpu.yaml", f"storage={tmp}", "search_space.model.name={choice: [/no/such/model]}"], "/no/such/model"),
        (["sweep", "sweeps/sweep_smoke_cpu.yaml", f"storage={tmp}", "search_space.name={choice: [a, b]}"], "names and stores its trials itself"),
        (["best", str(REPO / "docs" / "results" / "sweep-h200-attempt1"), "--out", str(not_a_model.parent)], "already holds files"),
        (["train", write(tmp / "empty.yaml", "# nothing yet\n")], "empty.yaml is empty: it sets nothing"),
        (["sweep", write(tmp / "empty-sweep.yaml", "")], "empty-sweep.yaml is empty"),
        (["train", write(tmp / "twice.yaml", "train:\n  learning_rate: 1.0e-4\n  learning_rate: 2.0e-4\n")], "the key 'learning_rate' is given twice"),
        (["data", "build", "--out", str(tmp / "sft"), "--tokenizer", "/no/such/tokenizer"], "--tokenizer='/no/such/tokenizer' is not a model folder"),
        (["submit", SWEEP, "storage=s3://bucket/sweeps", "--address", "notaurl"], "--address 'notaurl' is not a dashboard URL"),
        (["submit", SWEEP, "storage=s3://bucket/sweeps", "--address", "127.0.0.1:9"], "--address '127.0.0.1:9' is not a dashboard URL"),
        (["submit", SWEEP, "storage=s3://bucket/sweeps", "--address", "http://127.0.0.1:99999"], "is not a dashboard URL: give http://HOST:PORT"),
        (["submit", SWEEP, "storage=s3://bucket/sweeps", "--address", "http://[::1"], "--address 'http://[::1' is not a dashboard URL"),
    ]


CASES = 49  # len(mistakes(...)); the list needs a tmp folder, so it is built inside each test


@pytest.mark.parametrize("case", range(CASES))
def test_each_mistake_is_one_named_error(case, spider_dir, tmp_path):
    table = mistakes(tmp_path)
    assert len(table) == CASES
    args, message = table[case]
    result = cli(*args)
    assert result.returncode == 2, (args, result.stdout[-2000:], result.stderr[-2000:])
    assert result.stderr.startswith("error: "), result.stderr[-2000:]
    assert message in " ".join(result.stderr.split()), result.stderr
    assert "Traceback" not in result.stderr


def test_debug_shows_the_traceback_of_a_user_error(spider_dir):
    result = cli("--debug", "prompt", "--db-id", "nope", "--question", "q")
    assert "Traceback" in result.stderr and "SpiderError" in result.stderr
    assert result.returncode == 2 and "error:" in result.stderr  # the same exit status as without --debug


def test_committed_sweep_results_are_readable(spider_dir):
    result = cli("trials", str(REPO / "docs" / "results" / "sweep-h200-attempt1"))
    assert result.returncode == 0, result.stderr
    assert "trials, best dev EX first" in result.stdout


def test_config_reference_lists_every_key_with_default_and_description():
    from ray_spider.config import RunConfig, SweepConfig, config_reference

    result = cli("config")
    assert result.returncode == 0
    rows = config_reference()
    assert {key for key, *_ in rows} >= {"train.learning_rate", "lora.r", "generation.batch_size", "eval.workers"}
    assert all(description for *_, description in rows + config_reference(SweepConfig))
    assert "train.learning_rate" in result.stdout and "0.0001" in result.stdout
    sections = [field.annotation for field in RunConfig.model_fields.values() if hasattr(field.annotation, "model_fields")]
    top_level = len(RunConfig.model_fields) - len(sections)  # name, output_dir
    assert len(rows) == sum(len(section.model_fields) for section in sections) + top_level


def test_debug_shows_where_a_command_found_a_mistake_itself(tmp_path):
    """A command's own check (no exception: `compare` of a folder without summary.json) shows its stack under --debug."""
    plain = cli("compare", str(tmp_path))
    debug = cli("--debug", "compare", str(tmp_path))
    assert plain.returncode == debug.returncode == 2
    assert "File " not in plain.stderr and 'in compare' in debug.stderr and "no summary.json" in debug.stderr.splitlines()[-1]
