"""train.padding_free: the same loss and LoRA gradients as padded micro-batches, through the trainer
the product builds (train.build_trainer: TRL's collator and compute_loss), on real Spider rows of
different lengths and the tiny random LLaMA (tests/conftest.py) in float32 on CPU, with sdpa."""

from __future__ import annotations

import logging

import pytest
import torch

from ray_spider.config import DataConfig, LoraConfig, ModelConfig, RunConfig, TrainConfig
from ray_spider.data import build_sft_dataset, train_examples
from ray_spider.model import apply_lora, load_model, load_tokenizer
from ray_spider.prompt import Prompter
from ray_spider.train import build_trainer, data_stats, tokenize_dataset, warn_dense_padding_free

ROWS = 4


def run_config(model_dir: str, padding_free: bool, **train) -> RunConfig:
    return RunConfig(
        model=ModelConfig(name=model_dir, quantization="none", attn_implementation="sdpa"),
        lora=LoraConfig(dropout=0.0),  # no dropout: both passes see the same network
        train=TrainConfig(per_device_batch_size=ROWS, effective_batch_size=ROWS, padding_free=padding_free, **train),
    )


def spider_rows(spider, tokenizer):
    """ROWS real training rows from several databases (tokenize_dataset)."""
    rows = train_examples(spider, DataConfig(max_train_examples=ROWS, train_sample_seed=3))
    return tokenize_dataset(build_sft_dataset(Prompter(spider, run_config("unused", False).prompt), rows), tokenizer)


def adapted_model(cfg: RunConfig):
    """The tiny model with LoRA whose B matrices are random, as after training (fresh B is zero,
    which would leave the gradients of A zero in both modes)."""
    model = apply_lora(load_model(cfg.model, device="cpu"), cfg.lora)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return model


def loss_and_grads(trainer, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """TRL's training loss of one micro-batch and the gradient of every LoRA weight."""
    model = trainer.model
    model.train()
    model.zero_grad()
    loss = trainer.compute_loss(model, dict(batch))
    loss.backward()
    grads = {name: param.grad.clone() for name, param in model.named_parameters() if param.requires_grad}
    return loss.detach(), grads


@pytest.fixture(scope="module")
def trainers(tiny_dir, spider, tmp_path_factory):
    """(padded trainer, padding-free trainer) over one LoRA model and the same tokenized rows."""
    padded_cfg, free_cfg = run_config(tiny_dir, False), run_config(tiny_dir, True)
    tokenizer = load_tokenizer(tiny_dir)
    tokenized = spider_rows(spider, tokenizer)
    model = adapted_model(padded_cfg)
    assert model.config._attn_implementation == "sdpa"
    out = tmp_path_factory.mktemp("padding-free")
    cpu = torch.device("cpu")
    return build_trainer(padded_cfg, model, tokenizer, tokenized, str(out / "padded"), cpu), build_trainer(free_cfg, model, tokenizer, tokenized, str(out / "free"), cpu)


def micro_batch(trainer) -> dict:
    return trainer.data_collator([trainer.train_dataset[i] for i in range(ROWS)])


def test_padding_free_batch_is_one_row_without_pad_tokens(trainers):
    padded_trainer, free_trainer = trainers
    padded, free = micro_batch(padded_trainer), micro_batch(free_trainer)
    lengths = padded["attention_mask"].sum(dim=1).tolist()
    assert len(set(lengths)) == ROWS  # rows of different lengths: the padded batch has pad tokens
    assert "attention_mask" not in free and free["input_ids"].shape == (1, sum(lengths))
    starts = (free["position_ids"][0] == 0).nonzero().flatten().tolist()
    assert starts == [sum(lengths[:i]) for i in range(ROWS)]  # positions restart at every row
    assert (free["labels"] != -100).sum() == (padded["labels"] != -100).sum()  # the same tokens are learned


def test_padding_free_gives_the_padded_loss_and_gradients(trainers):
    padded_trainer, free_trainer = trainers
    padded_loss, padded_grads = loss_and_grads(padded_trainer, micro_batch(padded_trainer))
    free_loss, free_grads = loss_and_grads(free_trainer, micro_batch(free_trainer))
    assert torch.allclose(free_loss, padded_loss, rtol=1e-5, atol=1e-6), (free_loss, padded_loss)
    assert padded_grads.keys() == free_grads.keys() and len(padded_grads) > 0
    assert all(grad.abs().sum() > 0 for grad in padded_grads.values())  # A and B both learn: a real comparison
    for name, grad in padded_grads.items():
        # float32 sums in another order: an error far below the gradient's own scale
        assert torch.allclose(free_grads[name], grad, rtol=1e-4, atol=1e-5 * grad.abs().max()), name


def test_the_comparison_sees_attention_across_rows(trainers):
    """The control: the same joined row with an all-ones attention_mask beside its position_ids is
    attended causally across the rows (transformers looks for joined rows only when attention_mask is
    None), and its loss differs from the padded one. So the equality above shows rows kept apart."""
    padded_trainer, free_trainer = trainers
    padded_loss, _ = loss_and_grads(padded_trainer, micro_batch(padded_trainer))
    free = micro_batch(free_trainer)
    mixed_loss, _ = loss_and_grads(free_trainer, {**free, "attention_mask": torch.ones_like(free["input_ids"])})
    assert not torch.allclose(mixed_loss, padded_loss, rtol=1e-3, atol=1e-4), (mixed_loss, padded_loss)


def test_rows_are_cut_to_max_length_padding_free_too(tiny_dir, spider, tmp_path):
    """TRL cuts rows only while SFTConfig.max_length is set, which padding_free forbids: the product
    cuts them itself (train.truncate_rows), the same way in both modes."""
    tokenizer = load_tokenizer(tiny_dir)
    tokenized = spider_rows(spider, tokenizer)
    max_length = min(len(ids) for ids in tokenized["input_ids"]) - 1  # every row is cut
    model = adapted_model(run_config(tiny_dir, False))
    kept = {}
    for padding_free in (False, True):
        cfg = run_config(tiny_dir, padding_free, max_length=max_length)
        trainer = build_trainer(cfg, model, tokenizer, tokenized, str(tmp_path / str(padding_free)), torch.device("cpu"))
        kept[padding_free] = trainer.train_dataset["input_ids"]
        assert all(any(label != -100 for label in labels) for labels in trainer.train_dataset["labels"])  # something to learn
        stats = data_stats(trainer, ROWS, max_length)
        assert stats["train_examples_truncated"] == len(kept[padding_free]) > 0
        assert stats["train_examples_truncated"] + stats["train_examples_dropped_prompt_too_long"] == ROWS
    assert kept[True] == kept[False] and all(len(ids) == max_length for ids in kept[True])


@pytest.mark.parametrize("padding_free", [False, True], ids=["padded", "padding-free"])
def test_trl_counts_the_tokens_of_the_kept_rows(padding_free, tiny_dir, spider, tmp_path):
    """The manifest's train_tokens (data_stats: the kept rows' tokens) and train_tokens_seen (TRL's
    num_tokens: attention-mask ones when padded, the joined row's length when padding-free) agree."""
    tokenizer = load_tokenizer(tiny_dir)
    cfg = run_config(tiny_dir, padding_free, max_steps=1, logging_steps=1)
    trainer = build_trainer(cfg, adapted_model(cfg), tokenizer, spider_rows(spider, tokenizer), str(tmp_path), torch.device("cpu"))
    trainer.train()
    logged = [row["num_tokens"] for row in trainer.state.log_history if "num_tokens" in row]
    assert logged and logged[-1] == data_stats(trainer, ROWS, cfg.train.max_length)["train_tokens"]


def test_a_gpu_worker_is_warned_that_sdpa_attends_over_the_joined_row(tiny_dir, caplog):
    model = load_model(run_config(tiny_dir, True).model, device="cpu")  # sdpa
    with caplog.at_level(logging.WARNING, logger="ray_spider.train"):
        warn_dense_padding_free(run_config(tiny_dir, False), model, torch.device("cuda"))
        warn_dense_padding_free(run_config(tiny_dir, True), model, torch.device("cpu"))
        assert not caplog.records  # padded rows, or a CPU: nothing to say
        warn_dense_padding_free(run_config(tiny_dir, True), model, torch.device("cuda"))  # the device is only named
    (record,) = caplog.records
    assert "sdpa attention attends over the whole joined micro-batch" in record.getMessage()
    assert "model.attn_implementation=flex_attention" in record.getMessage()
