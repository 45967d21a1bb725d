"""The `ray-spider` command line. `ray-spider --help` lists the commands; each has --help.

    ray-spider data build --out data/sft
    ray-spider prompt --db-id concert_singer --question "How many singers are there?"
    ray-spider eval --gold dev_gold.sql --pred preds.sql --db database --table tables.json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from ray_spider.config import ConfigError, DataConfig, PromptConfig, load_run_config
from ray_spider.spider import Spider, SpiderError

app = typer.Typer(help="Fine-tune LLaMA-family chat models into text-to-SQL models on Spider.", no_args_is_help=True)
data_app = typer.Typer(help="Spider -> SFT data.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console(stderr=True)

SpiderDir = Annotated[Optional[str], typer.Option("--spider-dir", help="Spider 1.0 folder (default: $SPIDER_DIR)")]
ConfigPath = Annotated[Optional[Path], typer.Option("--config", "-c", help="run YAML whose prompt/data sections to use")]


def fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


def _run_config(config: Path | None, overrides: list[str] = ()):
    try:
        return load_run_config(config, overrides)
    except ConfigError as exc:
        fail(str(exc))


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
    workers: Annotated[Optional[int], typer.Option(help="scoring processes (default: all cores)")] = None,
) -> None:
    """Score predictions: EX (execution) and EM (exact set match) per hardness level."""
    from ray_spider.evaluate import EvalInputError, per_example_records, read_gold_file, read_pred_file, score, summary_table

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
    _print_skips(summary, report)
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        Console().print(summary_table(summary))


def _print_skips(summary: dict, report) -> None:
    if summary["skipped_missing_db"]:
        console.print(
            f"[yellow]skipped {summary['skipped_missing_db']} question(s) whose database is missing: "
            f"{', '.join(summary['skipped_db_ids'])}[/]"
        )
    for index, db_id, message in report.data_errors:
        console.print(f"[bold red]DATA ERROR[/] gold query {index} ({db_id}) failed: {message}")

