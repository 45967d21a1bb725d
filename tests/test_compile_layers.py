"""train.compile_layers (model.compile_decoder_layers): the trainer's loss and LoRA gradients of a
padding-free micro-batch with gradient checkpointing equal the eager model's, one compilation
serves every layer and micro-batch length, and a layer in eval mode runs eagerly. The tiny random
LLaMA (tests/conftest.py) in float32 on CPU, real Spider rows (tests/test_padding_free.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from test_padding_free import ROWS, adapted_model, loss_and_grads, run_config, spider_rows

from ray_spider.config import ConfigError, load_run_config
from ray_spider.model import compile_decoder_layers, load_tokenizer
from ray_spider.records import memory_line
from ray_spider.train import build_trainer


@pytest.fixture(scope="module")
def trainers(tiny_dir, spider, tmp_path_factory):
    """(eager trainer, compiled trainer): two copies of one LoRA model (same seed), the same rows."""
    tokenizer = load_tokenizer(tiny_dir)
    tokenized = spider_rows(spider, tokenizer)
    out = tmp_path_factory.mktemp("compile-layers")
    built = []
    for compiled in (False, True):
        cfg = run_config(tiny_dir, True, gradient_checkpointing=True, compile_layers=compiled)
        torch.manual_seed(0)  # LoRA's A matrices: the same in both copies
        model = adapted_model(cfg)
        if compiled:
            assert compile_decoder_layers(model) == 2
        built.append(build_trainer(cfg, model, tokenizer, tokenized, str(out / str(compiled)), torch.device("cpu")))
    return built


def batch_of(trainer, rows: range) -> dict:
    return trainer.data_collator([trainer.train_dataset[i] for i in rows])


def fresh_compiler() -> None:
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()


def test_compiled_layers_give_the_eager_loss_and_gradients(trainers):
    fresh_compiler()
    eager, compiled = trainers
    assert compiled.args.gradient_checkpointing  # the recomputed forward is the compiled one too
    for rows in (range(ROWS), range(1, ROWS)):  # two joined lengths: the second reuses the dynamic graph
        eager_loss, eager_grads = loss_and_grads(eager, batch_of(eager, rows))
        compiled_loss, compiled_grads = loss_and_grads(compiled, batch_of(compiled, rows))
        assert torch.allclose(compiled_loss, eager_loss, rtol=1e-5, atol=1e-6), (compiled_loss, eager_loss)
        assert eager_grads.keys() == compiled_grads.keys() and all(grad.abs().sum() > 0 for grad in eager_grads.values())
        for name, grad in eager_grads.items():
            assert torch.allclose(compiled_grads[name], grad, rtol=1e-4, atol=1e-5 * grad.abs().max()), name
    # one frame compiled for both layers, both lengths, forward and recomputation: no recompiles
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1, dict(torch._dynamo.utils.counters["stats"])


def test_a_layer_in_eval_mode_runs_eagerly(trainers):
    """Dev rounds generate with a KV cache in eval mode: nothing is compiled for them, and greedy
    tokens match the eager model's."""
    eager, compiled = trainers
    fresh_compiler()
    prompt = torch.tensor([eager.train_dataset[0]["input_ids"][:20]])
    outputs = []
    for trainer in (eager, compiled):
        trainer.model.eval()
        with torch.no_grad():
            outputs.append(trainer.model.generate(input_ids=prompt, max_new_tokens=6, do_sample=False))
    assert torch.equal(outputs[0], outputs[1])
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 0


def test_compiled_layers_and_liger_kernels_are_one_error():
    """torch.compile cannot trace Liger's autograd functions: asking for both is refused when the config loads."""
    with pytest.raises(ConfigError, match="train.liger_kernel to auto or false"):
        load_run_config("sweeps/smoke_cpu.yaml", ["train.compile_layers=true", "train.liger_kernel=true"])
    assert load_run_config("sweeps/smoke_cpu.yaml", ["train.compile_layers=true"]).train.liger_kernel == "auto"


def test_the_run_report_says_the_layers_were_compiled():
    """report.md's memory line (from the manifest's compiled_layers) names the compiled layers, else says nothing of them."""
    plan = {"budget_gb": 48, "micro_batch": 32, "gradient_checkpointing": True, "merge_adapter": False, "generation_batch": 8,
            "estimate_train_gb": 28.17, "estimate_dev_gb": 8.9}
    info = {"memory_plan": plan, "gradient_accumulation_steps": 1, "liger_kernel": False}
    assert "Liger kernels off, 32 decoder layers compiled, dev rounds" in memory_line({**info, "compiled_layers": 32})
    assert "Liger kernels off, dev rounds" in memory_line({**info, "compiled_layers": 0}) == memory_line(info)


COMPILE_ONE_STEP = """
import json, sys, torch
from ray_spider.config import LoraConfig, ModelConfig
from ray_spider.model import apply_lora, compile_decoder_layers, load_model
model = apply_lora(load_model(ModelConfig(name=sys.argv[1], quantization="nf4"), device="cpu"), LoraConfig(dropout=0.0))
compile_decoder_layers(model)
model.train()
ids = torch.arange(3, 40).unsqueeze(0)
model(input_ids=ids, labels=ids).loss.backward()
print(json.dumps(dict(torch._dynamo.utils.counters["aot_autograd"])))
"""


@pytest.mark.slow
def test_a_second_process_takes_the_compiled_4bit_layers_from_the_disk_cache(tiny_dir, tmp_path):
    """bitsandbytes' 4-bit matmul is a torch.autograd.Function, which AOTAutograd's cache refused by
    default: every run traced the layers' joint graph again. Two processes, one fresh cache folder: the
    second hits (fails without autograd_cache_allow_custom_autograd_functions)."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    counters = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", COMPILE_ONE_STEP, tiny_dir], env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        counters.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert counters[0].get("autograd_cache_miss") and not counters[0].get("autograd_cache_bypass"), counters
    assert counters[1].get("autograd_cache_hit") and not counters[1].get("autograd_cache_bypass"), counters
