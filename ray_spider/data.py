"""Spider -> chat SFT data, and the dev questions used for evaluation.

    ray-spider data build --out data/sft [--tokenizer smollm2-135m-instruct] [--max-length 2048]

Each SFT row holds the conversation twice: ``messages`` (system, user, assistant) and the
prompt/completion split that TRL trains on (loss on the completion only). Both come from
``Prompter.conversation``, so the inference prompt is exactly the training prompt.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import statistics
from pathlib import Path

import datasets

from ray_spider.config import DataConfig
from ray_spider.errors import UserError
from ray_spider.evaluation.exact_match import ExactMatcher
from ray_spider.evaluation.inputs import GoldError
from ray_spider.prompt import Prompter, tokenize_example
from ray_spider.spider import Example, Spider

PREVIEW_ROWS = 20


def train_examples(spider: Spider, cfg: DataConfig) -> list[Example]:
    """The training questions of a run: train (+ train_others), of cfg.train_hardness's levels, then
    the first cfg.max_train_examples of them, or a seeded sample of that many (cfg.train_sample_seed)."""
    examples = spider.examples("train")
    if cfg.include_train_others:
        examples += spider.examples("train_others")
    if cfg.max_train_examples and cfg.train_sample_seed is not None:
        examples = random.Random(cfg.train_sample_seed).sample(examples, len(examples))  # a seeded order
    if cfg.train_hardness:
        keep = of_hardness(spider, set(cfg.train_hardness))
        examples = (example for example in examples if keep(example))  # lazy: a few hundred parses, not 7,000
    return list(itertools.islice(examples, cfg.max_train_examples))


def of_hardness(spider: Spider, levels: set[str]):
    """A predicate: is the gold query's Spider hardness (the evaluator's rule) one of ``levels``?
    False when it cannot be judged (no database file to read the schema from, or a gold query that
    does not parse): such a question is left out, never guessed."""
    matcher = ExactMatcher(spider.root / "database", spider.root / "tables.json")

    def keep(example: Example) -> bool:
        try:
            return matcher.hardness(example.query, example.db_id) in levels
        except GoldError:
            return False

    return keep


def dev_examples(
    spider: Spider, subset: int | None = None, seed: int = 0, hardness: list[str] | None = None
) -> tuple[list[Example], list[Example]]:
    """(dev questions whose database exists, skipped ones); only those of the ``hardness`` levels when
    given, then a fixed seeded subset of them when asked."""
    present, missing = spider.executable(spider.examples("dev"))
    if hardness:
        present = list(filter(of_hardness(spider, set(hardness)), present))
    if subset and subset < len(present):
        present = sorted(random.Random(seed).sample(present, subset), key=lambda e: e.index)
    return present, missing


def scored_dev_examples(spider: Spider, cfg: DataConfig) -> list[Example]:
    """The dev questions a run is scored on: all of dev-972, or those of cfg.dev_hardness, or the
    sample of them set by dev_subset(_seed)."""
    return dev_examples(spider, cfg.dev_subset, seed=cfg.dev_subset_seed, hardness=cfg.dev_hardness)[0]


class QuestionsFileError(UserError, ValueError):
    """A questions file is malformed; the message names the file, the entry and what would be valid."""


def read_questions(path: str | os.PathLike, spider: Spider) -> list[Example]:
    """A user's questions for `predict --questions`: a ``.jsonl`` file of ``{"db_id": ..., "question": ...}``
    lines, or a Spider-format ``.json`` list (dev.json's shape); ``"query"`` (the gold SQL) is optional
    but all or none: with it the answers are scored, without it they are only written.

    Returns Examples of split "questions" whose index is the entry's line (jsonl, from 1) or position
    (json, from 0). Raises QuestionsFileError naming file and entry: missing or empty keys, a db_id
    that tables.json lacks or whose database file is missing, gold on some entries only.
    """
    path = Path(path)
    if not path.is_file():
        raise QuestionsFileError(f"questions file not found: {path}")
    entries = _question_entries(path)
    if not entries:
        raise QuestionsFileError(f"{path}: no questions in it")
    examples = [_question(path, where, entry, spider) for where, entry in entries]
    with_gold = [example.query is not None for example in examples]
    if any(with_gold) and not all(with_gold):
        where = entries[with_gold.index(False)][0]
        raise QuestionsFileError(f"{path}: {where} has no \"query\" but others do: give the gold SQL for every question or for none")
    return examples


def _question_entries(path: Path) -> list[tuple[str, object]]:
    """(where, parsed entry) pairs: 'line N' of a .jsonl file, 'entry N' of a .json list."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise QuestionsFileError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if path.suffix == ".jsonl":
        entries = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    entries.append((f"line {number}", json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise QuestionsFileError(f"{path}: line {number} is not JSON ({exc.msg})") from None
        return entries
    if path.suffix != ".json":
        raise QuestionsFileError(f"{path}: expected a .jsonl file (one question per line) or a Spider-format .json list")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise QuestionsFileError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, list):
        raise QuestionsFileError(f"{path}: expected a JSON list of questions (like Spider's dev.json), got {type(data).__name__}")
    return [(f"entry {position}", entry) for position, entry in enumerate(data)]


def _question(path: Path, where: str, entry, spider: Spider) -> Example:
    if not isinstance(entry, dict):
        raise QuestionsFileError(f"{path}: {where} must be an object with db_id and question, got {type(entry).__name__}")
    for key in ("db_id", "question"):
        if not isinstance(entry.get(key), str) or not entry[key].strip():
            raise QuestionsFileError(f"{path}: {where} needs a non-empty string {key!r}, got {entry.get(key)!r}")
    db_id, gold = entry["db_id"], entry.get("query")
    if db_id not in spider.tables:
        raise QuestionsFileError(f"{path}: {where}: db_id {db_id!r} is not in {spider.root / 'tables.json'}")
    if not spider.has_database(db_id):
        raise QuestionsFileError(f"{path}: {where}: db_id {db_id!r} has no database file ({spider.db_path(db_id)})")
    if gold is not None and (not isinstance(gold, str) or not gold.strip()):
        raise QuestionsFileError(f"{path}: {where}: \"query\" must be the gold SQL as a non-empty string, got {gold!r}")
    index = int(where.split()[1])
    return Example("questions", index, db_id, entry["question"].strip(), gold)


def sft_row(prompter: Prompter, example: Example) -> dict:
    messages = prompter.conversation(example.db_id, example.question, example.query)
    return {
        "split": example.split,
        "index": example.index,
        "db_id": example.db_id,
        "question": example.question,
        "query": example.query,
        "messages": messages,
        "prompt": messages[:-1],
        "completion": messages[-1:],
        "prompt_version": prompter.version,
    }


def build_sft_dataset(prompter: Prompter, examples: list[Example]) -> datasets.Dataset:
    return datasets.Dataset.from_list([sft_row(prompter, example) for example in examples])


def token_length_stats(dataset: datasets.Dataset, tokenizer, max_length: int) -> dict:
    """Length in tokens of each training example, tokenized as training does (``tokenize_example``)."""
    lengths = [len(tokenize_example(row, tokenizer)["input_ids"]) for row in dataset]
    ordered = sorted(lengths)
    return {
        "min": ordered[0],
        "mean": round(statistics.fmean(ordered), 1),
        "p50": ordered[len(ordered) // 2],
        "p95": ordered[int(len(ordered) * 0.95)],
        "max": ordered[-1],
        "max_length": max_length,
        "over_max_length": sum(length > max_length for length in lengths),
    }


def write_sft_dataset(dataset: datasets.Dataset, out_dir: Path, summary: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset.save_to_disk(str(out_dir / "dataset"))
    with open(out_dir / "preview.jsonl", "w") as preview:
        for row in dataset.select(range(min(PREVIEW_ROWS, len(dataset)))):
            preview.write(json.dumps(row["messages"]) + "\n")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
