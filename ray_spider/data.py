"""Spider -> chat SFT data, and the dev questions used for evaluation.

    ray-spider data build --out data/sft [--tokenizer smollm2-135m-instruct] [--max-length 2048]

Each SFT row holds the conversation twice: ``messages`` (system, user, assistant) and the
prompt/completion split that TRL trains on (loss on the completion only). Both come from
``Prompter.conversation``, so the inference prompt is exactly the training prompt.
"""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path

import datasets

from ray_spider.config import DataConfig
from ray_spider.prompt import Prompter, tokenize_example
from ray_spider.spider import Example, Spider

PREVIEW_ROWS = 20


def train_examples(spider: Spider, cfg: DataConfig) -> list[Example]:
    examples = spider.examples("train")
    if cfg.include_train_others:
        examples += spider.examples("train_others")
    return examples[: cfg.max_train_examples] if cfg.max_train_examples else examples


def dev_examples(spider: Spider, subset: int | None = None, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """(dev questions whose database exists, skipped ones); a fixed seeded subset when asked."""
    present, missing = spider.executable(spider.examples("dev"))
    if subset and subset < len(present):
        present = sorted(random.Random(seed).sample(present, subset), key=lambda e: e.index)
    return present, missing


def scored_dev_examples(spider: Spider, cfg: DataConfig) -> list[Example]:
    """The dev questions a run is scored on: all of dev-972, or the sample set by dev_subset(_seed)."""
    return dev_examples(spider, cfg.dev_subset, seed=cfg.dev_subset_seed)[0]


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
