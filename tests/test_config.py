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


def test_every_config_field_has_a_description():
    import ray_spider.config as config
    from pydantic import BaseModel

    models = [m for m in vars(config).values() if isinstance(m, type) and issubclass(m, BaseModel) and m.__module__ == config.__name__]
    assert len(models) >= 12
    undescribed = [f"{m.__name__}.{name}" for m in models for name, field in m.model_fields.items() if not field.description]
    assert undescribed == []


def test_lora_off_is_rejected_for_sweeps(tmp_path):
    from ray_spider.config import load_sweep_config

    with pytest.raises(ConfigError, match=r"lora\.enabled is false.*ray-spider baseline"):
        load_sweep_config("sweeps/sweep_smoke_cpu.yaml", ["base.lora.enabled=false"])
    path = tmp_path / "sweep.yaml"
    path.write_text("name: x\nsearch_space:\n  lora.enabled: {choice: [true, false]}\n")
    with pytest.raises(ConfigError, match=r"search_space key 'lora\.enabled'"):
        load_sweep_config(path)


def test_lora_off_is_rejected_for_train_before_any_work(spider_dir):
    """`train` always applies LoRA: a config promising a run without adapter fails, named, exit 2."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "ray_spider", "train", "sweeps/smoke_cpu.yaml", "lora.enabled=false"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "lora.enabled is false" in result.stderr and "Traceback" not in result.stderr


def test_lr_scheduler_names_are_transformers_own():
    import typing

    from transformers.trainer_utils import SchedulerType

    from ray_spider.config import LrScheduler

    assert set(typing.get_args(LrScheduler)) == {kind.value for kind in SchedulerType}
    with pytest.raises(ConfigError, match="train.lr_scheduler"):
        load_run_config(None, ["train.lr_scheduler=cosin"])


def test_a_search_space_override_names_a_dotted_run_config_key():
    from ray_spider.config import load_sweep_config

    sweep = load_sweep_config("sweeps/sweep_smoke_cpu.yaml", ["search_space.lora.r={choice: [4, 8]}", "search_space.train.learning_rate={choice: [1.0e-4]}"])
    assert sweep.search_space["lora.r"].describe() == "choice [4, 8]"
    assert "train.learning_rate" in sweep.search_space and "lora" not in sweep.search_space


def test_a_search_space_nested_like_a_run_config_shows_the_dotted_key(tmp_path):
    from ray_spider.config import load_sweep_config

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("name: s\nbase: {model: {name: smollm2-135m-instruct}}\nsearch_space:\n  lora:\n    r: {choice: [8, 16]}\n")
    with pytest.raises(ConfigError, match=r"search_space.lora is nested.*`lora.r: \{choice: \[...\]\}`"):
        load_sweep_config(sweep)


def test_a_sweep_file_and_a_run_config_given_to_the_other_command_say_so():
    from ray_spider.config import load_sweep_config

    with pytest.raises(ConfigError, match=r"is a sweep file .*ray-spider sweep sweeps/sweep_smoke_cpu\.yaml"):
        load_run_config("sweeps/sweep_smoke_cpu.yaml")
    with pytest.raises(ConfigError, match=r"is a run config .*ray-spider train sweeps/smoke_cpu\.yaml"):
        load_sweep_config("sweeps/smoke_cpu.yaml")


def test_an_unknown_attention_implementation_fails_in_the_config():
    with pytest.raises(ConfigError, match=r"model.attn_implementation='sdpaa'.*valid: eager, .*sdpa"):
        load_run_config(None, ["model.attn_implementation=sdpaa"])
    assert load_run_config(None, ["model.attn_implementation=sdpa"]).model.attn_implementation == "sdpa"


@pytest.mark.parametrize("steps, message", [("0", "must be at least 1, or -1"), ("-5", "must be at least 1, or -1"), ("true", "takes a number")])
def test_max_steps_below_one_is_refused_not_read_as_all_epochs(steps, message):
    with pytest.raises(ConfigError, match=f"train.max_steps.*{message}"):
        load_run_config(None, [f"train.max_steps={steps}"])


def test_a_misspelled_section_blames_its_override():
    with pytest.raises(ConfigError) as error:
        load_run_config(None, ["genration.candidates=2"])
    assert str(error.value).startswith("invalid override of the defaults:\n  genration: unknown key; did you mean generation")
    assert str(error.value).endswith("[from the override 'genration.candidates=2']")


def test_a_rule_across_a_section_blames_only_the_override_it_names():
    with pytest.raises(ConfigError) as error:
        load_run_config(None, ["generation.max_new_tokens=32", "generation.search=beam", "generation.candidates=4"])
    message = str(error.value)
    assert "generation.search=beam needs generation.engine=hf" in message
    assert "from the override 'generation.search=beam'" in message and "max_new_tokens" not in message
    with pytest.raises(ConfigError) as error:
        load_run_config(None, ["generation.max_new_tokens=32", "generation.engine=hf", "generation.candidates=4"])
    assert "max_new_tokens" not in str(error.value)


@pytest.mark.parametrize("override", ["generation.seed=99999999999999999999999", "generation.seed=-1", "generation.temperature=1e-40", "generation.temperature=inf"])
def test_sampling_values_torch_cannot_take_are_refused_up_front(override):
    with pytest.raises(ConfigError, match=override.split("=")[0].split(".")[1]):
        load_run_config(None, ["generation.candidates=4", override])


@pytest.mark.parametrize(
    "override", ["generation.candidates=true", "train.learning_rate=yes", "generation.temperature=off", "generation.batch_size=true",
                 "data.dev_subset=false"],
)
def test_a_yes_no_value_for_a_number_is_refused_not_read_as_1(override):
    """pydantic's lax mode would run `generation.candidates=true` as 1 candidate and
    `train.learning_rate=yes` at 1.0."""
    with pytest.raises(ConfigError, match=rf"{override.split('=')[0]}: takes a number, got the yes/no value") as error:
        load_run_config(None, [override])
    assert "invalid override of the defaults" in str(error.value)


def test_yes_no_keys_take_yaml_yes_no_and_number_keys_take_numbers():
    cfg = load_run_config(None, ["train.padding_free=yes", "generation.constrained=on", "generation.candidates=4", "train.learning_rate=1e-4"])
    assert (cfg.train.padding_free, cfg.generation.constrained, cfg.generation.candidates, cfg.train.learning_rate) == (True, True, 4, 1e-4)


def test_every_shipped_config_still_loads():
    from pathlib import Path

    from ray_spider.config import load_sweep_config

    for path in sorted(Path(__file__).parents[1].joinpath("sweeps").glob("*.yaml")):
        (load_sweep_config if path.name.startswith("sweep_") else load_run_config)(path)


@pytest.mark.parametrize("override", ["generation.pick=majority", "generation.temperature=0.7", "generation.seed=3", "generation.search=beam"])
def test_a_candidate_setting_without_candidates_is_refused_not_ignored(override):
    """`predict generation.pick=majority` alone would score greedy answers while the user thinks they vote."""
    with pytest.raises(ConfigError, match=rf"'{override}' does nothing with generation.candidates=1.*generation.candidates=K"):
        load_run_config(None, [override])
    assert load_run_config(None, [override, "generation.candidates=4", "generation.engine=" + ("hf" if "beam" in override else "pruned")])


def test_a_batch_smaller_than_one_question_is_refused():
    """batch_size counts rows, k per question: 3 rows with 4 candidates decoded 4 rows a batch while
    summary.json recorded 3."""
    with pytest.raises(ConfigError, match=r"generation.batch_size=3 counts rows.*candidates=4.*at least 4"):
        load_run_config(None, ["generation.candidates=4", "generation.batch_size=3"])
    assert load_run_config(None, ["generation.candidates=4", "generation.batch_size=4"]).generation.batch_size == 4
    assert load_run_config(None, ["generation.candidates=32", "generation.batch_size=auto"]).generation.batch_size == "auto"


def test_a_value_that_fits_no_member_of_a_union_is_one_error_at_its_key():
    """pydantic reports `bool | 'auto'` once per member (merge_adapter.bool, merge_adapter.literal['auto'])."""
    with pytest.raises(ConfigError) as error:
        load_run_config(None, ["generation.merge_adapter=maybe"])
    lines = str(error.value).splitlines()
    assert len(lines) == 2 and lines[1].startswith("  generation.merge_adapter: Input should be a valid boolean")
    assert "or 'auto' (got 'maybe')" in lines[1]


@pytest.mark.parametrize("override", ["=5", "train..learning_rate=1", " =x"])
def test_an_override_without_a_key_is_refused(override):
    with pytest.raises(ConfigError, match="must look like key.subkey=value: .* is no key"):
        load_run_config(None, [override])


def test_a_file_that_is_not_yaml_is_one_line_naming_where(tmp_path):
    """PyYAML's message spans 5-7 lines (the offending lines quoted, carets); the error is one line."""
    broken = tmp_path / "broken.yaml"
    broken.write_text("train:\n  learning_rate: [1, 2\n")
    with pytest.raises(ConfigError) as error:
        load_run_config(broken)
    assert str(error.value) == (
        f"{broken}: not valid YAML: expected ',' or ']', but got '<stream end>' at line 3, column 1 "
        "(while parsing a flow sequence at line 2, column 18)"
    )


def test_a_key_given_twice_is_refused_and_yaml_merge_keys_still_work(tmp_path):
    twice = tmp_path / "twice.yaml"
    twice.write_text("train:\n  learning_rate: 1.0e-4\n  epochs: 1\n  learning_rate: 2.0e-4\n")
    with pytest.raises(ConfigError, match=r"twice.yaml: not valid YAML: the key 'learning_rate' is given twice at line 4, column 3$"):
        load_run_config(twice)
    merged = tmp_path / "merged.yaml"  # a key that `<<:` brings, set again after it: YAML's way to override it
    merged.write_text("train:\n  <<: {learning_rate: 1.0e-4, epochs: 1}\n  epochs: 3\n")
    cfg = load_run_config(merged)
    assert (cfg.train.learning_rate, cfg.train.epochs) == (1.0e-4, 3)
