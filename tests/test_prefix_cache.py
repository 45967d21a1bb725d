"""Prefix caching: prompts that share their first tokens (a database's system prompt and schema) are
grouped from their token ids, and generating with the shared prefixes' KV cache gives the same
tokens as reading every whole prompt: on the tiny random LLaMA and on the real SmolLM2, with rows
that stop early, pruning and the static tail, groups of one and several databases in one batch.
"""

from __future__ import annotations

import logging

import pytest
import torch

from ray_spider.config import GenerationConfig, ModelConfig, PromptConfig
from ray_spider.inference import generate, greedy_pruned, prefill_shared_prefixes
from ray_spider.model import load_for_inference
from ray_spider.prefix_cache import PrefixGroup, SharedPrefixBatch, batch_order, prefix_groups
from ray_spider.prompt import Prompter, render_generation_prompt

ROWS = [
    [1, 2, 3, 4, 5, 6, 7],
    [9, 8, 7],
    [1, 2, 3, 4, 5, 8],
    [1, 2, 3, 4, 5, 6, 7],  # the same prompt twice: the group's prefix still leaves each a token to read
    [1, 2, 9, 9, 9, 9, 9, 9, 9],  # shares 2 of 9 tokens with its neighbour: not enough to join
]


def test_prefix_groups_are_runs_of_rows_that_share_most_of_their_tokens():
    assert prefix_groups(ROWS) == [PrefixGroup(5, [0, 3, 2]), PrefixGroup(8, [4]), PrefixGroup(2, [1])]
    assert batch_order(ROWS) == [4, 0, 3, 2, 1]  # longest prefix first, longest row first within a group
    assert prefix_groups([[5, 6]]) == [PrefixGroup(1, [0])]


def test_shared_prefix_batch_puts_the_pad_gap_between_prefix_and_rest():
    batch = SharedPrefixBatch.of(ROWS, pad_id=0)
    assert batch.prefix_ids.tolist() == [[0, 0, 0, 1, 2, 3, 4, 5], [1, 2, 9, 9, 9, 9, 9, 9], [0, 0, 0, 0, 0, 0, 9, 8]]
    assert batch.group_of_row.tolist() == [0, 2, 0, 0, 1]
    assert batch.rest_ids.tolist() == [[6, 7], [0, 7], [0, 8], [6, 7], [0, 9]]
    assert batch.attention_mask.tolist()[1] == [0, 0, 0, 0, 0, 0, 1, 1, 0, 1]
    for index, row in enumerate(ROWS):  # the unmasked tokens of a row are its prompt, in order
        ids = torch.cat([batch.prefix_ids[batch.group_of_row[index]], batch.rest_ids[index]])
        assert ids[batch.attention_mask[index].bool()].tolist() == row
    with pytest.raises(ValueError, match="fewer than 2 tokens"):
        SharedPrefixBatch.of([[1, 2], [3]], pad_id=0)


def spider_prompts(spider, per_database: dict[str, int]) -> list[list[dict]]:
    """Dev questions of a few databases (as many as asked of each), interleaved as a caller might send them."""
    prompter = Prompter(spider, PromptConfig())
    chosen = {db_id: [e for e in spider.examples("dev") if e.db_id == db_id][:count] for db_id, count in per_database.items()}
    mixed = [e for position in range(max(per_database.values())) for e in (group[position] for group in chosen.values() if position < len(group))]
    return [prompter.conversation(e.db_id, e.question) for e in mixed]


PER_DATABASE = {"concert_singer": 4, "pets_1": 3, "car_1": 2, "flight_2": 1}  # flight_2: a group of one


def tiny(tiny_dir):
    return load_for_inference(ModelConfig(name=tiny_dir, quantization="none"), None, merge=False, device="cpu")


@pytest.mark.parametrize("batch_size", [3, 16])  # databases split over batches; all in one batch (flight_2 a group of one)
def test_generate_with_prefix_cache_answers_like_whole_prompts(tiny_dir, spider, batch_size):
    model, tokenizer = tiny(tiny_dir)
    prompts = spider_prompts(spider, PER_DATABASE)
    cached = GenerationConfig(max_new_tokens=10, batch_size=batch_size, prefix_cache=True)
    expected = generate(model, tokenizer, prompts, cached.model_copy(update={"prefix_cache": False}), progress=False)
    assert len(set(expected)) > 1  # a test that could see a mix-up
    assert generate(model, tokenizer, prompts, cached, progress=False) == expected


@pytest.mark.parametrize("static_rows", [0, 3, 16])  # never; after the first pruning; from the first step (padded)
def test_greedy_pruned_from_shared_prefixes_answers_like_whole_prompts_when_rows_stop_early(tiny_dir, spider, static_rows):
    """Rows stop at different steps (stop tokens picked from the answers), so finished rows leave the
    cache that started as copies of shared prefixes; with static_rows the last open rows move to a
    StaticDecoder (eagerly on a CPU)."""
    model, tokenizer = tiny(tiny_dir)
    texts = [render_generation_prompt(tokenizer, messages) for messages in spider_prompts(spider, PER_DATABASE)]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    whole = tokenizer.pad({"input_ids": encoded}, padding_side="left", return_tensors="pt")
    steps, pad = 12, tokenizer.pad_token_id
    unstopped = greedy_pruned(model, whole["input_ids"], whole["attention_mask"], steps, [-1], pad)
    stops = sorted({int(unstopped[0, 2]), int(unstopped[4, 2]), int(unstopped[5, 7])})
    expected = greedy_pruned(model, whole["input_ids"], whole["attention_mask"], steps, stops, pad)
    assert sum((row[:-1] == pad).any().item() for row in expected) >= 4  # rows stop early: prunings

    shared = SharedPrefixBatch.of(encoded, pad)
    assert len(shared.prefix_ids) == len(PER_DATABASE)  # one prefix per database
    cache = prefill_shared_prefixes(model, shared)
    answers = greedy_pruned(model, shared.rest_ids, shared.attention_mask, steps, stops, pad, static_rows, cache=cache)
    assert torch.equal(answers, expected)


@pytest.mark.slow
def test_prefix_cache_answers_like_whole_prompts_on_the_real_model(offline_dir, spider):
    """SmolLM2-135M (float32 on CPU) on dev questions of three databases (one of them a group of one), in one batch."""
    model, tokenizer = load_for_inference(ModelConfig(name=offline_dir, quantization="none"), None, merge=False, device="cpu")
    prompts = spider_prompts(spider, {"concert_singer": 3, "pets_1": 2, "world_1": 1})
    cached = GenerationConfig(max_new_tokens=16, batch_size=6, prefix_cache=True)
    expected = generate(model, tokenizer, prompts, cached.model_copy(update={"prefix_cache": False}), progress=False)
    assert len(set(expected)) == len(prompts)
    assert generate(model, tokenizer, prompts, cached, progress=False) == expected


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_prefix_cache_on_cuda_answers_like_whole_prompts_in_cuda_graphs(tiny_dir, spider, caplog):
    """On a GPU the static tail runs as a CUDA graph after starting from the shared prefixes' cache
    (float32, as on the CPU: bf16 rounds the two ways of reading a prompt differently)."""
    model, tokenizer = load_for_inference(ModelConfig(name=tiny_dir, quantization="none"), None, merge=False, device="cuda:0")
    model.float()
    prompts = spider_prompts(spider, PER_DATABASE)
    cached = GenerationConfig(max_new_tokens=24, batch_size=6, cuda_graph_rows=4, prefix_cache=True)
    expected = generate(model, tokenizer, prompts, cached.model_copy(update={"prefix_cache": False, "cuda_graph_rows": 0}), progress=False)
    with caplog.at_level(logging.WARNING, logger="ray_spider.inference"):
        assert generate(model, tokenizer, prompts, cached, progress=False) == expected
        assert generate(model, tokenizer, prompts, cached.model_copy(update={"batch_size": 16}), progress=False) == expected
    assert "capture failed" not in caplog.text
