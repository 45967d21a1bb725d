import pytest

from ray_spider.config import ConfigError, load_run_config


def test_defaults_are_the_playbook():
    cfg = load_run_config()
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (16, 32, 0.05)
    assert cfg.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert (cfg.train.learning_rate, cfg.train.epochs, cfg.train.effective_batch_size) == (1e-4, 2.0, 64)
    assert cfg.model.quantization == "nf4"
    assert cfg.gradient_accumulation_steps == 16


def test_overrides_are_parsed_as_yaml():
    cfg = load_run_config(None, ["train.learning_rate=2e-4", "lora.r=32", "data.dev_subset=50"])
    assert cfg.train.learning_rate == 2e-4 and cfg.lora.r == 32 and cfg.data.dev_subset == 50
    assert cfg.lora.alpha == 64  # unset alpha follows the rank (scale 2), as a sweep over r expects
    assert load_run_config(None, ["lora.r=32", "lora.alpha=16"]).lora.alpha == 16


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  learnin_rate: 0.001\n")
    with pytest.raises(ConfigError, match=r"train\.learnin_rate"):
        load_run_config(path)


def test_bad_value_is_named():
    with pytest.raises(ConfigError, match=r"model\.quantization"):
        load_run_config(None, ["model.quantization=int3"])


def test_batch_must_divide():
    with pytest.raises(ConfigError, match="effective_batch_size"):
        load_run_config(None, ["train.per_device_batch_size=5"])


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_run_config(tmp_path / "nope.yaml")
