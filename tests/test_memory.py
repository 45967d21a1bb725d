"""Memory: the auto settings chosen from a GPU budget (memory.plan_memory), the budget itself, the
shape-only model maker, and Liger's kernels (a no-op or a clear error on CPU; same loss on a GPU)."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import pytest
import torch

from ray_spider.config import ConfigError, RunConfig, load_run_config
from ray_spider.memory import (
    HEADROOM_SHARE,
    MEMORY_ENV,
    DoesNotFit,
    ModelShape,
    budget_gb,
    largest_divisor_at_most,
    plan_memory,
    resolve_memory_settings,
)
from ray_spider.model import apply_liger_kernels

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from make_shape_model import make_shape_config, make_shape_model, shape_config  # noqa: E402

LLAMA_31_8B = ModelShape(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, vocab=128256)
SMOLLM2_135M = ModelShape(hidden=576, intermediate=1536, layers=30, heads=9, kv_heads=3, vocab=49152, tied_embeddings=True)


def test_llama_8b_shape_has_the_released_parameter_count():
    assert LLAMA_31_8B.params() == 8_030_261_248  # Llama-3.1-8B's safetensors index: 8.03B


@pytest.mark.parametrize("budget", [24, 48, 80])
def test_8b_plan_fits_its_budget_and_keeps_the_effective_batch(budget):
    plan = plan_memory(budget, LLAMA_31_8B, 2048, 64)
    assert plan.estimate_train_gb <= budget and plan.estimate_dev_gb <= budget
    assert 64 % plan.micro_batch == 0 and plan.micro_batch >= 4


def test_8b_on_24_gb_checkpoints_and_generates_without_a_merged_copy():
    plan = plan_memory(24, LLAMA_31_8B, 2048, 64)
    assert plan.gradient_checkpointing and not plan.merge_adapter
    assert plan.micro_batch == 8 and 16 <= plan.generation_batch <= 64


def test_more_memory_buys_a_larger_micro_batch_then_no_checkpointing():
    plans = [plan_memory(gb, LLAMA_31_8B, 2048, 64) for gb in (24, 48, 80, 141)]
    assert [p.micro_batch for p in plans[:3]] == sorted(p.micro_batch for p in plans[:3])
    assert plans[2].gradient_checkpointing and not plans[3].gradient_checkpointing  # 141 GB: 4 rows fit without it
    assert plans[3].merge_adapter  # and the merged copy fits beside training without shrinking it


def test_small_model_never_checkpoints_and_merges():
    plan = plan_memory(24, SMOLLM2_135M, 2048, 64)
    assert not plan.gradient_checkpointing and plan.merge_adapter and plan.micro_batch == 8


def test_given_settings_are_kept():
    plan = plan_memory(24, LLAMA_31_8B, 2048, 64, micro_batch=2, checkpointing=False, merge=False, generation_batch=5)
    assert (plan.micro_batch, plan.gradient_checkpointing, plan.merge_adapter, plan.generation_batch) == (2, False, False, 5)


def predict_plan(budget: float, **generation):
    """The plan resolve_generation_settings makes for the 135M winner's config (max_length 2048, 256 new tokens, merged copy)."""
    return plan_memory(budget, SMOLLM2_135M, 2048, 1, micro_batch=1, checkpointing=True, merge=True, **generation)


def test_auto_generation_batch_counts_candidates_and_shared_prefixes():
    assert predict_plan(141).generation_batch == 1024  # greedy: predict's fastest dev-972 batch, as before
    assert predict_plan(141, share_prefix_kv=True).generation_batch == 1024
    voted = predict_plan(141, candidates=16, share_prefix_kv=True)  # the H200's fastest voted k=16 batch (docs/benchmarks.md)
    assert voted.generation_batch == 8192 and voted.estimate_dev_gb <= 141 * (1 - HEADROOM_SHARE)
    small = predict_plan(24, candidates=16, share_prefix_kv=True)
    assert small.generation_batch == 1344 and small.estimate_dev_gb <= 24 * (1 - HEADROOM_SHARE)
    copies = predict_plan(141, candidates=16)  # a copy of the whole prompt per row: the memory decides, whole questions
    assert copies.generation_batch == 1568 and copies.estimate_dev_gb <= 141 * (1 - HEADROOM_SHARE)
    assert predict_plan(141, candidates=3, share_prefix_kv=True).generation_batch == 3072  # 1024 questions
    # greedy rows charge no less than their own prompt copy: the 8B dev rounds with shared KV plan as without
    assert plan_memory(24, LLAMA_31_8B, 2048, 64, share_prefix_kv=True) == plan_memory(24, LLAMA_31_8B, 2048, 64)
    assert plan_memory(24, LLAMA_31_8B, 2048, 64, candidates=32).generation_batch == 32  # one question: the engine's least


def test_both_call_sites_plan_the_generation_batch_with_candidates(offline_dir, monkeypatch):
    from ray_spider.memory import resolve_generation_settings

    monkeypatch.delenv(MEMORY_ENV, raising=False)
    voted = ["generation.batch_size=auto", "generation.candidates=16", "generation.share_prefix_kv=true"]
    cfg = load_run_config(None, [f"model.name={offline_dir}", "train.gpu_memory_gb=141", "generation.merge_adapter=true", *voted])
    assert resolve_generation_settings(cfg, torch.device("cpu")).generation.batch_size == 8192  # predict
    resolved, plan = resolve_memory_settings(cfg, torch.device("cpu"), 2048, shape=SMOLLM2_135M)  # a training worker's dev rounds
    assert resolved.generation.batch_size == plan.generation_batch == 8192
    greedy = load_run_config(None, [f"model.name={offline_dir}", "train.gpu_memory_gb=141", "generation.batch_size=auto"])
    assert resolve_generation_settings(greedy, torch.device("cpu")).generation.batch_size == 1024


def test_question_tokens_bound_what_spider_dev_rows_hold_beyond_their_shared_prefix(spider, offline_dir):
    from ray_spider.config import PromptConfig
    from ray_spider.memory import QUESTION_TOKENS
    from ray_spider.model import load_tokenizer
    from ray_spider.prefix_cache import prefix_groups
    from ray_spider.prompt import Prompter, render_generation_prompt

    tokenizer, prompter = load_tokenizer(offline_dir), Prompter(spider, PromptConfig())
    texts = [render_generation_prompt(tokenizer, prompter.conversation(e.db_id, e.question)) for e in spider.examples("dev")]
    rows = tokenizer(texts, add_special_tokens=False)["input_ids"]
    rests = [len(rows[index]) - group.prefix_length for group in prefix_groups(rows) for index in group.members]
    assert max(rests) == 40 <= QUESTION_TOKENS  # the question and the template's tail; the schema is shared


def test_micro_batch_divides_the_rows_per_device():
    assert plan_memory(141, SMOLLM2_135M, 512, 24).micro_batch == 24
    assert plan_memory(24, LLAMA_31_8B, 2048, 24).micro_batch in (6, 8, 12) and 24 % plan_memory(24, LLAMA_31_8B, 2048, 24).micro_batch == 0
    assert largest_divisor_at_most(64, 10) == 8 and largest_divisor_at_most(7, 5) == 1 and largest_divisor_at_most(12, 0) == 1


def test_a_budget_too_small_is_one_clear_error():
    with pytest.raises(DoesNotFit, match=r"does not fit in 8 GB .*train.max_length"):
        plan_memory(8, LLAMA_31_8B, 2048, 64)


# Spider-like row lengths: a few long schemas, most rows short (the padded plan costs every row at 2048)
SPIDER_LIKE_ROWS = [2048] * 2 + [600] * 62 + [400] * 936


def test_padding_free_plans_by_the_tokens_of_the_longest_rows():
    padded = plan_memory(48, LLAMA_31_8B, 2048, 64)
    free = plan_memory(48, LLAMA_31_8B, 2048, 64, row_tokens=SPIDER_LIKE_ROWS, dense_joined_mask=False)
    assert (padded.micro_batch, free.micro_batch) == (16, 64)
    assert padded.gradient_checkpointing and free.gradient_checkpointing and not padded.merge_adapter and not free.merge_adapter
    tokens = 2 * 2048 + 62 * 600  # the 64 longest rows: length grouping can put exactly these together
    per_token_gb = LLAMA_31_8B.activation_bytes_per_token(True) / 1e9
    # the same weights, adapter and reserve: the estimates differ by the activations of 16 x 2048 against those tokens
    assert free.estimate_train_gb - padded.estimate_train_gb == pytest.approx((tokens - 16 * 2048) * per_token_gb, abs=0.02)
    assert free.estimate_train_gb <= 48


def test_padding_free_rows_all_at_the_longest_plan_as_padded_rows():
    for budget in (24, 48, 80, 141):
        padded = plan_memory(budget, LLAMA_31_8B, 2048, 64)
        assert plan_memory(budget, LLAMA_31_8B, 2048, 64, row_tokens=[2048] * 64, dense_joined_mask=False) == padded


def test_padding_free_under_sdpa_plans_for_the_dense_mask_of_the_joined_row():
    flex = plan_memory(141, LLAMA_31_8B, 2048, 64, row_tokens=SPIDER_LIKE_ROWS, dense_joined_mask=False)
    sdpa = plan_memory(141, LLAMA_31_8B, 2048, 64, row_tokens=SPIDER_LIKE_ROWS, dense_joined_mask=True)
    assert not sdpa.gradient_checkpointing and sdpa.micro_batch <= flex.micro_batch
    tokens = sum(sorted(SPIDER_LIKE_ROWS, reverse=True)[: sdpa.micro_batch])
    mask_gb = LLAMA_31_8B.joined_mask_bytes(tokens, checkpointing=False) / 1e9
    assert mask_gb == pytest.approx(tokens**2 * 67 / 1e9)  # bool mask, a bf16 copy kept by each of 32 layers, one in flight
    assert sdpa.estimate_train_gb <= 141


def test_padding_free_still_needs_one_longest_row_to_fit():
    with pytest.raises(DoesNotFit, match=r"one row of 2048 tokens does not fit in 8 GB"):
        plan_memory(8, LLAMA_31_8B, 2048, 64, row_tokens=SPIDER_LIKE_ROWS)


def test_padding_free_setting_reaches_the_plan(tiny_dir, monkeypatch):
    from ray_spider.memory import keeps_dense_mask

    monkeypatch.delenv(MEMORY_ENV, raising=False)
    overrides = [f"model.name={tiny_dir}", "train.gpu_memory_gb=48", "model.attn_implementation=flex_attention"]
    plans = {}
    for padding_free in (False, True):
        cfg = load_run_config(ROOT / "sweeps/qlora_llama31_8b.yaml", [*overrides, f"train.padding_free={padding_free}"])
        resolved, plans[padding_free] = resolve_memory_settings(cfg, torch.device("cpu"), 2048, shape=LLAMA_31_8B, row_lengths=SPIDER_LIKE_ROWS)
        assert resolved.train.per_device_batch_size == plans[padding_free].micro_batch
    assert (plans[False].micro_batch, plans[True].micro_batch) == (16, 64)
    assert keeps_dense_mask(None) and keeps_dense_mask("sdpa") and keeps_dense_mask("eager")  # None: transformers' sdpa
    assert not keeps_dense_mask("flex_attention") and not keeps_dense_mask("flash_attention_2")


def test_a_given_micro_batch_gets_checkpointing_when_it_needs_it():
    # 32 padding-free rows at 48 GB (the 8B bench's product side) kept checkpointing off: OOM on the H200
    plan = plan_memory(48, LLAMA_31_8B, 2048, 32, micro_batch=32, row_tokens=SPIDER_LIKE_ROWS, dense_joined_mask=False)
    assert plan.micro_batch == 32 and plan.gradient_checkpointing and plan.estimate_train_gb <= 48 * 0.88
    assert not plan_memory(48, LLAMA_31_8B, 2048, 32, micro_batch=2, row_tokens=SPIDER_LIKE_ROWS, dense_joined_mask=False).gradient_checkpointing


def test_a_given_micro_batch_over_the_budget_is_warned_with_the_one_that_fits(tiny_dir, monkeypatch, caplog):
    monkeypatch.delenv(MEMORY_ENV, raising=False)
    overrides = [f"model.name={tiny_dir}", "train.gpu_memory_gb=24", "train.per_device_batch_size=64", "train.effective_batch_size=64"]
    cfg = load_run_config(ROOT / "sweeps/qlora_llama31_8b.yaml", overrides)
    with caplog.at_level("WARNING", logger="ray_spider.memory"):
        resolved, plan = resolve_memory_settings(cfg, torch.device("cpu"), 2048, shape=LLAMA_31_8B)
    assert resolved.train.per_device_batch_size == 64 and plan.gradient_checkpointing  # kept as given, checkpointed
    auto = plan_memory(24, LLAMA_31_8B, 2048, 64).micro_batch
    assert f"train.per_device_batch_size=64 is estimated at {plan.estimate_train_gb:.1f} GB" in caplog.text
    assert f"set train.per_device_batch_size=auto ({auto} here)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="ray_spider.memory"):
        resolve_memory_settings(load_run_config(ROOT / "sweeps/qlora_llama31_8b.yaml", [*overrides[:2], f"train.per_device_batch_size={auto}"]),
                                torch.device("cpu"), 2048, shape=LLAMA_31_8B)
    assert "estimated" not in caplog.text


def test_budget_comes_from_the_setting_then_the_environment(monkeypatch):
    monkeypatch.delenv(MEMORY_ENV, raising=False)
    assert budget_gb(None, "cpu") is None
    assert budget_gb(30.0, "cpu") == 30.0
    monkeypatch.setenv(MEMORY_ENV, "24")
    assert budget_gb(None, "cpu") == 24.0 and budget_gb(48.0, "cpu") == 48.0
    for bad in ("lots", "inf", "nan", "-5", "0"):
        monkeypatch.setenv(MEMORY_ENV, bad)
        with pytest.raises(ConfigError, match=rf"\${MEMORY_ENV}='{bad}' is not a number of GB above 0"):
            budget_gb(None, "cpu")
    for key in ("train.gpu_memory_gb", "eval.query_timeout_s"):  # inf passed the config check, then NaN in the plan
        with pytest.raises(ConfigError, match=key):
            load_run_config(ROOT / "sweeps/smoke_cpu.yaml", [f"{key}=inf"])


def test_auto_settings_load_and_resolve_to_values(tiny_dir):
    cfg = load_run_config(ROOT / "sweeps/qlora_llama31_8b.yaml", [f"model.name={tiny_dir}", "train.gpu_memory_gb=24"])
    assert cfg.train.per_device_batch_size == "auto" and cfg.generation.merge_adapter == "auto"
    with pytest.raises(ValueError, match="auto"):
        cfg.gradient_accumulation_steps
    resolved, plan = resolve_memory_settings(cfg, torch.device("cpu"), seq_len=1024)
    assert resolved.train.per_device_batch_size == plan.micro_batch and isinstance(plan.micro_batch, int)
    assert resolved.gradient_accumulation_steps * plan.micro_batch == 64
    assert resolved.generation.batch_size == plan.generation_batch and plan.budget_gb == 24
    RunConfig.model_validate(resolved.model_dump(mode="json"))  # what a worker would get is a valid config


def test_bad_auto_value_is_named():
    with pytest.raises(ConfigError, match="per_device_batch_size"):
        load_run_config(None, ["train.per_device_batch_size=fast"])
    with pytest.raises(ConfigError, match="merge_adapter"):
        load_run_config(None, ["generation.merge_adapter=sometimes"])


def test_liger_is_skipped_on_cpu_and_required_setting_is_a_clear_error(tiny_dir):
    from ray_spider.config import ModelConfig
    from ray_spider.model import load_model

    model = load_model(ModelConfig(name=tiny_dir, quantization="none"), device="cpu")
    forward = model.model.layers[0].mlp.forward
    assert apply_liger_kernels(model, "auto", "cpu") is False and apply_liger_kernels(model, False, "cpu") is False
    assert model.model.layers[0].mlp.forward == forward  # untouched
    with pytest.raises(ConfigError, match=r"train.liger_kernel=true needs a CUDA device"):
        apply_liger_kernels(model, True, "cpu")


def test_shape_model_has_the_8b_shape_without_allocating_it(offline_dir):
    from transformers import LlamaForCausalLM

    from ray_spider.model import load_tokenizer

    config = shape_config("llama-3.1-8b", load_tokenizer(offline_dir))
    assert ModelShape.from_hf_config(config) == LLAMA_31_8B
    assert config.rope_parameters["rope_type"] == "llama3" and config.max_position_embeddings == 131072
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    assert sum(p.numel() for p in model.parameters()) == LLAMA_31_8B.params()


def test_shape_model_folder_loads_and_trains(tmp_path):
    from ray_spider.config import LoraConfig, ModelConfig
    from ray_spider.model import apply_lora, load_model

    info = make_shape_model("tiny", tmp_path / "shape", layers=1, device="cpu")  # the 8B shape's own: seconds on a GPU, a minute here
    assert info["layers"] == 1 and (tmp_path / "shape" / "tokenizer.json").is_file()
    config = copy.deepcopy(load_run_config(None, [f"model.name={tmp_path / 'shape'}"]).model)
    model = apply_lora(load_model(ModelConfig(name=config.name, quantization="none"), device="cpu"), LoraConfig(r=2))
    ids = torch.randint(0, 1000, (1, 8))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss) and 9.5 < loss.item() < 12  # ~ln(49152) = 10.8: random weights, near-uniform guesses


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_liger_kernels_keep_the_loss_and_gradients(tiny_dir):
    from transformers import AutoModelForCausalLM
    from transformers.models.llama import modeling_llama

    plain = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).to("cuda:0")
    fused = copy.deepcopy(plain)
    ids = torch.randint(0, plain.config.vocab_size, (3, 40), device="cuda:0")
    rotary = modeling_llama.apply_rotary_pos_emb  # Liger swaps it for the whole process: plain runs first
    try:
        plain_loss = plain(input_ids=ids, labels=ids).loss
        plain_loss.backward()
        assert apply_liger_kernels(fused, True, "cuda:0") is True
        assert modeling_llama.LlamaRMSNorm.__module__.startswith("transformers")  # classes put back
        fused_loss = fused(input_ids=ids, labels=ids).loss
        fused_loss.backward()
    finally:
        modeling_llama.apply_rotary_pos_emb = rotary
    torch.testing.assert_close(plain_loss, fused_loss, rtol=1e-5, atol=1e-5)
    for (name, a), (_, b) in zip(plain.named_parameters(), fused.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_budget_below_the_gpu_is_enforced():
    # in a child process: the cap holds for the whole process, and other tests share this one
    code = (
        "import torch; from ray_spider.memory import limit_gpu_memory; limit_gpu_memory(2, 'cuda:0'); "
        "torch.empty(int(1.5e9), dtype=torch.uint8, device='cuda:0')\n"
        "try:\n    torch.empty(int(3e9), dtype=torch.uint8, device='cuda:0')\nexcept torch.OutOfMemoryError:\n    print('capped')"
    )
    import subprocess

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.stdout.strip() == "capped", result.stderr[-2000:]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_liger_kernels_under_4bit_and_lora_train_to_the_same_loss(tiny_dir):
    from transformers.models.llama import modeling_llama

    from ray_spider.config import LoraConfig, ModelConfig
    from ray_spider.model import apply_lora, load_model

    ids = torch.randint(0, 1000, (2, 32), device="cuda:0")
    rotary, losses = modeling_llama.apply_rotary_pos_emb, []
    try:
        for liger in (False, True):
            torch.manual_seed(0)
            base = load_model(ModelConfig(name=tiny_dir), "cuda:0")
            assert apply_liger_kernels(base, liger, "cuda:0") is liger
            model = apply_lora(base, LoraConfig(r=4, alpha=8, dropout=0.0))
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            losses.append(loss.float())
    finally:
        modeling_llama.apply_rotary_pos_emb = rotary
    torch.testing.assert_close(losses[0], losses[1], rtol=2e-2, atol=2e-2)  # bf16 compute


def test_a_trial_sharing_a_gpu_plans_for_its_share(tiny_dir, monkeypatch):
    import ray_spider.memory as memory

    monkeypatch.delenv(MEMORY_ENV, raising=False)
    monkeypatch.setattr(memory, "budget_gb", lambda setting, device: setting if setting is not None else 141.0)  # an H200
    cfg = load_run_config(ROOT / "sweeps/qlora_llama31_8b.yaml", [f"model.name={tiny_dir}"])
    _, whole = resolve_memory_settings(cfg, torch.device("cpu"), seq_len=1024, gpu_share=1.0)
    _, third = resolve_memory_settings(cfg, torch.device("cpu"), seq_len=1024, gpu_share=0.33)
    assert whole.budget_gb == 141.0 and third.budget_gb == round(141.0 * 0.33, 2)
    cfg = load_run_config(ROOT / "sweeps/qlora_llama31_8b.yaml", [f"model.name={tiny_dir}", "train.gpu_memory_gb=40"])
    assert resolve_memory_settings(cfg, torch.device("cpu"), seq_len=1024, gpu_share=0.33)[1].budget_gb == 40  # explicit: per worker


def test_prediction_resolves_auto_generation_settings(tiny_dir, monkeypatch):
    from ray_spider.memory import resolve_generation_settings

    monkeypatch.delenv(MEMORY_ENV, raising=False)
    cfg = load_run_config(ROOT / "sweeps/qlora_llama31_8b.yaml", [f"model.name={tiny_dir}", "train.gpu_memory_gb=24"])
    resolved = resolve_generation_settings(cfg, torch.device("cpu"))
    assert isinstance(resolved.generation.batch_size, int) and isinstance(resolved.generation.merge_adapter, bool)
    fixed = load_run_config(None, [f"model.name={tiny_dir}"])
    assert resolve_generation_settings(fixed, torch.device("cpu")) is fixed  # nothing auto: untouched


def test_cpu_runs_plan_against_the_memory_free_now_not_the_machine_total():
    """`generation.batch_size: auto` on CPU sized its batch at 88% of all RAM, shared with other processes."""
    from ray_spider.memory import host_memory_gb

    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9  # GB, as memory.GB
    assert 0 < host_memory_gb() < total  # this process alone holds some


def test_plan_prints_the_8b_configs_memory_plan_from_its_config_alone(tmp_path):
    """`ray-spider plan`: the settings a worker would choose at a budget, from a folder holding only the
    8B shape's config.json and tokenizer (no weights, no GPU); the figures of docs/benchmarks.md's table."""
    import subprocess

    make_shape_config("llama-3.1-8b", tmp_path / "l8b")
    assert not list((tmp_path / "l8b").glob("*.safetensors"))

    without_budget = {key: value for key, value in os.environ.items() if key != "RAY_SPIDER_GPU_MEMORY_GB"}

    def plan(*overrides: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ray_spider", "plan", "sweeps/qlora_llama31_8b.yaml", f"model.name={tmp_path / 'l8b'}", *overrides],
                              capture_output=True, text=True, cwd=ROOT, timeout=300, env=without_budget)

    done = plan("train.gpu_memory_gb=24")
    assert done.returncode == 0, done.stderr[-3000:]
    for expected in ("8 x 8 accumulation x 1 worker(s) = effective batch 64", "on the 4-bit base + adapter", "27 rows", "19.69 GB", "20.9 GB"):
        assert expected in done.stdout, done.stdout
    missing = plan()
    assert missing.returncode == 2 and "give the GPU memory to plan for: train.gpu_memory_gb=24" in missing.stderr
    tiny = plan("train.gpu_memory_gb=4")
    assert tiny.returncode == 2 and "does not fit in 4 GB" in tiny.stderr and "Traceback" not in tiny.stderr
