"""Shared prefix KV (cascade attention): one copy of each prefix's keys and values per batch, merged
with each row's own suffix by log-sum-exp. The merge equals softmax attention over the
concatenated keys; generation gives the same tokens as prefix caching with per-row copies (fp32 on
CPU, on the tiny random LLaMA and real Spider databases), also constrained and with sampled
candidates; transformers' registries are left as they were; the config rule names both keys.
"""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import AttentionInterface, LlamaConfig
from transformers.masking_utils import AttentionMaskInterface
from transformers.models.llama.modeling_llama import LlamaAttention

from ray_spider.config import ConfigError, GenerationConfig, LoraConfig, ModelConfig, PromptConfig, load_run_config
from ray_spider.inference import generate, generate_candidates, greedy_pruned, prefill_shared_prefix_kv
from ray_spider.model import apply_lora, load_for_inference, load_model
from ray_spider.prefix_cache import SharedPrefixBatch
from ray_spider.prompt import Prompter, render_generation_prompt
from ray_spider.shared_prefix_kv import ATTENTION_NAME, SharedPrefixKV, attend, merge

HEADS, KV_HEADS, DIM = 4, 2, 8  # grouped-query attention: 2 query heads per KV head


def _reference(query, keys, values, mask, scaling):
    """Plain softmax attention of query (R, H, q, D) over keys (R, Hkv, S, D) under mask (R, q, S)."""
    repeat = query.shape[1] // keys.shape[1]
    keys, values = keys.repeat_interleave(repeat, dim=1), values.repeat_interleave(repeat, dim=1)
    scores = (query @ keys.transpose(-1, -2)) * scaling
    return torch.softmax(scores.masked_fill(~mask[:, None], -torch.inf), dim=-1) @ values


def _left_padded_mask(lengths: list[int], width: int) -> torch.Tensor:
    return torch.stack([torch.arange(width) >= width - length for length in lengths])


def test_merge_of_two_parts_is_softmax_over_the_concatenated_keys():
    torch.manual_seed(0)
    query = torch.randn(3, KV_HEADS, 5, DIM)
    keys, values = torch.randn(3, KV_HEADS, 9, DIM), torch.randn(3, KV_HEADS, 9, DIM)
    keys[..., :4, :] *= 4  # the parts' log-sum-exps differ widely: a plain average of the two outputs is far off
    mask = _left_padded_mask([9, 6, 2], 9)[:, None, None, :]  # the last row's keys all lie in the second part
    expected = torch.nn.functional.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=0.3)
    first, second = (attend(query, keys[..., part, :], values[..., part, :], mask[..., part], 0.3) for part in (slice(0, 4), slice(4, None)))
    assert torch.isinf(first[1][2]).all() and (first[0][2] == 0).all()  # nothing attended: lse -inf, out 0, not NaN
    torch.testing.assert_close(merge(*first, *second), expected)
    naive = (first[0] + second[0]) / 2
    assert not torch.allclose(naive, expected, atol=1e-3)


def test_cascade_attention_equals_attention_over_each_rows_prefix_and_suffix():
    """Rows of 3 groups (one group's prefix shorter: left padding), grouped-query heads, suffixes
    left-padded and causal over 3 query steps; padded query steps see the prefix only."""
    torch.manual_seed(1)
    groups, prefix_width, rows, steps, suffix_width = 3, 6, 5, 3, 4
    prefix_mask = _left_padded_mask([6, 3, 5], prefix_width)
    group_of_row = torch.tensor([2, 0, 0, 1, 0])
    prefix_keys, prefix_values = torch.randn(groups, KV_HEADS, prefix_width, DIM) * 2, torch.randn(groups, KV_HEADS, prefix_width, DIM)
    query = torch.randn(rows, HEADS, steps, DIM)
    keys, values = torch.randn(rows, KV_HEADS, suffix_width, DIM), torch.randn(rows, KV_HEADS, suffix_width, DIM)
    suffix_lengths = [4, 2, 3, 1, 4]
    padding = _left_padded_mask(suffix_lengths, suffix_width)
    causal = torch.ones(steps, suffix_width, dtype=torch.bool).tril(suffix_width - steps)  # the queries are the last 3 columns
    suffix_mask = padding[:, None, :] & causal
    module = LlamaAttention(LlamaConfig(hidden_size=HEADS * DIM, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS), layer_idx=0)
    prefix = SharedPrefixKV([prefix_keys], [prefix_values], prefix_mask, group_of_row)
    assert prefix.chunk_group.tolist() == [0, 0, 1, 2]  # 2 rows a chunk: group 0's 3 rows take two
    out, _ = prefix.attention(module, query, keys, values, suffix_mask[:, None], scaling=DIM**-0.5)

    whole_keys = torch.cat([prefix_keys[group_of_row], keys], dim=2)
    whole_values = torch.cat([prefix_values[group_of_row], values], dim=2)
    whole_mask = torch.cat([prefix_mask[group_of_row][:, None, :].expand(-1, steps, -1), suffix_mask], dim=2)
    expected = _reference(query, whole_keys, whole_values, whole_mask, DIM**-0.5)
    torch.testing.assert_close(out, expected.transpose(1, 2))

    prefix.keep(torch.tensor([4, 0, 3]))  # rows leave (pruning): the others keep their groups
    assert prefix.chunk_group is None  # a row per group: the prefixes are read in place
    out, _ = prefix.attention(module, query[[4, 0, 3]], keys[[4, 0, 3]], values[[4, 0, 3]], suffix_mask[[4, 0, 3], None], scaling=DIM**-0.5)
    torch.testing.assert_close(out, expected[[4, 0, 3]].transpose(1, 2))


def spider_prompts(spider, per_database: dict[str, int]) -> tuple[list[list[dict]], list[dict]]:
    """Dev questions of a few databases interleaved, and each one's schema."""
    prompter = Prompter(spider, PromptConfig())
    chosen = {db_id: [e for e in spider.examples("dev") if e.db_id == db_id][:count] for db_id, count in per_database.items()}
    mixed = [e for position in range(max(per_database.values())) for e in (group[position] for group in chosen.values() if position < len(group))]
    return [prompter.conversation(e.db_id, e.question) for e in mixed], [spider.tables[e.db_id] for e in mixed]


PER_DATABASE = {"concert_singer": 4, "pets_1": 3, "car_1": 2, "flight_2": 1}  # flight_2: a group of one


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_for_inference(ModelConfig(name=tiny_dir, quantization="none"), None, merge=False, device="cpu")


def _shared(cfg: GenerationConfig) -> GenerationConfig:
    return cfg.model_copy(update={"share_prefix_kv": True})


@pytest.mark.parametrize("batch_size", [3, 16])  # databases split over batches; all in one batch
def test_shared_prefix_kv_answers_like_copied_prefixes(tiny, spider, batch_size):
    model, tokenizer = tiny
    prompts, _ = spider_prompts(spider, PER_DATABASE)
    cfg = GenerationConfig(max_new_tokens=10, batch_size=batch_size, prefix_cache=True)
    expected = generate(model, tokenizer, prompts, cfg, progress=False)
    assert len(set(expected)) > 1
    assert generate(model, tokenizer, prompts, _shared(cfg), progress=False) == expected


@pytest.mark.parametrize("static_rows", [0, 3, 16])  # never; after pruning; from the first step (padded rows)
def test_greedy_pruned_on_shared_prefix_kv_with_pruning_and_the_static_decoder(tiny, spider, static_rows):
    """Rows stop at different steps (stop tokens taken from the answers), so rows leave the batch and
    the shared prefix follows; with static_rows the last rows move to a StaticDecoder (eager on CPU)."""
    model, tokenizer = tiny
    prompts, _ = spider_prompts(spider, PER_DATABASE)
    encoded = tokenizer([render_generation_prompt(tokenizer, messages) for messages in prompts], add_special_tokens=False)["input_ids"]
    steps, pad = 12, tokenizer.pad_token_id
    shared = SharedPrefixBatch.of(encoded, pad)
    unstopped = greedy_pruned(model, shared.rest_ids, shared.attention_mask, steps, [-1], pad, prefix=prefill_shared_prefix_kv(model, shared))
    whole = tokenizer.pad({"input_ids": encoded}, padding_side="left", return_tensors="pt")
    assert torch.equal(unstopped, greedy_pruned(model, whole["input_ids"], whole["attention_mask"], steps, [-1], pad))
    stops = sorted({int(unstopped[0, 2]), int(unstopped[4, 2]), int(unstopped[5, 7])})
    expected = greedy_pruned(model, whole["input_ids"], whole["attention_mask"], steps, stops, pad)
    assert sum((row[:-1] == pad).any().item() for row in expected) >= 4  # rows stop early: prunings
    prefix = prefill_shared_prefix_kv(model, shared)
    assert len(prefix.keys[0]) == len(PER_DATABASE)  # one copy per database, not per row
    answers = greedy_pruned(model, shared.rest_ids, shared.attention_mask, steps, stops, pad, static_rows, prefix=prefix)
    assert torch.equal(answers, expected)


def test_shared_prefix_kv_constrained_and_sampled_candidates_answer_like_copied_prefixes(tiny, spider):
    model, tokenizer = tiny
    prompts, schemas = spider_prompts(spider, {"concert_singer": 2, "pets_1": 2, "flight_2": 1})
    constrained = GenerationConfig(max_new_tokens=12, constrained=True, prefix_cache=True)
    expected = generate(model, tokenizer, prompts, constrained, progress=False, schemas=schemas)
    assert generate(model, tokenizer, prompts, _shared(constrained), progress=False, schemas=schemas) == expected

    sampled = GenerationConfig(max_new_tokens=12, candidates=4, temperature=2.0, batch_size=8, seed=7, prefix_cache=True)
    expected = generate_candidates(model, tokenizer, prompts, sampled, progress=False)
    assert any(answer != answers[0] for answers in expected for answer in answers[1:])  # samples, not copies of greedy
    assert generate_candidates(model, tokenizer, prompts, _shared(sampled), progress=False) == expected


def test_shared_prefix_kv_on_an_unmerged_adapter_answers_like_copied_prefixes(tiny_dir, spider):
    """Dev rounds on a short GPU decode on the base + adapter (a PeftModel, generation.merge_adapter
    false), as the 8B configs do with share_prefix_kv on: the hook must reach the wrapped model."""
    model = apply_lora(load_model(ModelConfig(name=tiny_dir, quantization="none"), "cpu", use_cache=True), LoraConfig(r=4, alpha=8))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # LoRA B starts at zero: give the adapter an effect
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    model.eval()
    _, tokenizer = load_for_inference(ModelConfig(name=tiny_dir, quantization="none"), None, merge=False, device="cpu")
    prompts, _ = spider_prompts(spider, {"concert_singer": 3, "pets_1": 2})
    cfg = GenerationConfig(max_new_tokens=10, batch_size=8, prefix_cache=True)
    implementation = model.get_base_model().config._attn_implementation
    expected = generate(model, tokenizer, prompts, cfg, progress=False)
    assert generate(model, tokenizer, prompts, _shared(cfg), progress=False) == expected
    assert model.get_base_model().config._attn_implementation == implementation


def _registries() -> tuple[dict, dict]:
    return dict(AttentionInterface._global_mapping), dict(AttentionMaskInterface._global_mapping)


def test_the_registries_and_the_model_are_left_as_they_were_also_when_generation_raises(tiny, spider):
    model, tokenizer = tiny
    before, implementation = _registries(), model.config._attn_implementation
    assert not any(name.startswith(ATTENTION_NAME) for name in before[0])
    prompts, _ = spider_prompts(spider, {"concert_singer": 2})
    generate(model, tokenizer, prompts, GenerationConfig(max_new_tokens=3, share_prefix_kv=True), progress=False)
    assert _registries() == before and model.config._attn_implementation == implementation

    encoded = tokenizer([render_generation_prompt(tokenizer, messages) for messages in prompts], add_special_tokens=False)["input_ids"]
    shared = SharedPrefixBatch.of(encoded, tokenizer.pad_token_id)
    prefix = prefill_shared_prefix_kv(model, shared)
    out_of_vocabulary = torch.full_like(shared.rest_ids, len(tokenizer) + 10)
    with pytest.raises(IndexError):
        greedy_pruned(model, out_of_vocabulary, shared.attention_mask, 3, [-1], tokenizer.pad_token_id, prefix=prefix)
    assert _registries() == before and model.config._attn_implementation == implementation


@pytest.mark.parametrize("override", ["generation.prefix_cache=false", "generation.engine=hf"])
def test_shared_prefix_kv_needs_the_prefix_cache_in_the_pruned_engine(override):
    with pytest.raises(ConfigError, match=r"generation.share_prefix_kv=true needs generation.prefix_cache=true and generation.engine=pruned"):
        load_run_config(None, ["generation.share_prefix_kv=true", override])
    assert load_run_config(None, ["generation.share_prefix_kv=true"]).generation.share_prefix_kv


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_shared_prefix_kv_on_cuda_answers_like_copied_prefixes_in_cuda_graphs(tiny_dir, spider, caplog):
    """The static tail runs as a CUDA graph that reads the shared prefix (float32: bf16 rounds the two
    ways of attending differently)."""
    model, tokenizer = load_for_inference(ModelConfig(name=tiny_dir, quantization="none"), None, merge=False, device="cuda:0")
    model.float()
    prompts, _ = spider_prompts(spider, PER_DATABASE)
    cfg = GenerationConfig(max_new_tokens=24, batch_size=6, cuda_graph_rows=4, prefix_cache=True)
    expected = generate(model, tokenizer, prompts, cfg, progress=False)
    with caplog.at_level(logging.WARNING, logger="ray_spider.inference"):
        assert generate(model, tokenizer, prompts, _shared(cfg), progress=False) == expected
        assert generate(model, tokenizer, prompts, _shared(cfg).model_copy(update={"batch_size": 16}), progress=False) == expected
    assert "capture failed" not in caplog.text
