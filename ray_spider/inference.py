"""Batched greedy generation: chat prompts in, answer texts out, in the order given.

Used by ``ray-spider predict`` and by the dev evaluation inside training:

    model, tokenizer = load_for_inference(ModelConfig(), "runs/x/adapter", merge=True)
    answers = generate(model, tokenizer, [prompter.conversation(db_id, question)], GenerationConfig())

Prompts are rendered by ``prompt.render_generation_prompt`` (the one renderer), sorted longest
first so each left-padded batch holds prompts of similar length, and decoded without the prompt.
"""

from __future__ import annotations

import logging
import time

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text

from ray_spider.config import GenerationConfig
from ray_spider.model import end_of_turn_token
from ray_spider.prompt import render_generation_prompt

log = logging.getLogger(__name__)


class _QuestionsPerSecond(ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.speed or 0:.2f} q/s")


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """Tokens that end an answer: the tokenizer's eos, the template's end of turn, the model's eos list."""
    ids = [tokenizer.eos_token_id]
    eot = end_of_turn_token(tokenizer)
    if eot:
        ids.append(tokenizer.convert_tokens_to_ids(eot))
    model_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.extend(model_eos if isinstance(model_eos, list) else [model_eos])
    return sorted({token for token in ids if token is not None})


def greedy_config(tokenizer, model, cfg: GenerationConfig):
    """A transformers GenerationConfig for greedy decoding.

    transformers fills every field left None from the model's own generation_config (Llama 3.1
    ships temperature=0.6, top_p=0.9) and warns when greedy decoding meets sampling values, so
    the neutral values are set explicitly.
    """
    from transformers import GenerationConfig as HFGenerationConfig

    return HFGenerationConfig(
        do_sample=False,
        num_beams=1,
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=cfg.max_new_tokens,
        eos_token_id=stop_token_ids(tokenizer, model),
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        use_cache=True,  # training turns the cache off in the model config; generating without it is quadratic
    )


def _device(model) -> torch.device:
    return next(model.parameters()).device


# no_grad, not inference_mode: during training, inference tensors cached by a layer would break backward.
@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[dict]], cfg: GenerationConfig, progress: bool = True) -> list[str]:
    """Greedy answers to chat prompts (system + user messages), in the order of ``prompts``.

    Works on a plain or a PeftModel, also one in training mode: it is switched to eval for the
    call and back afterwards.
    """
    if not prompts:
        return []
    texts = [render_generation_prompt(tokenizer, messages) for messages in prompts]
    # The chat template already writes any BOS it wants: no second one from the tokenizer.
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    order = sorted(range(len(encoded)), key=lambda index: -len(encoded[index]))
    generation_config = greedy_config(tokenizer, model, cfg)
    device = _device(model)
    answers: list[str | None] = [None] * len(prompts)
    was_training = model.training
    model.eval()
    started = time.perf_counter()
    columns = (
        TextColumn("generating"),
        BarColumn(),
        MofNCompleteColumn(),
        _QuestionsPerSecond(),
        TimeRemainingColumn(),
    )
    try:
        with Progress(*columns, disable=not progress, transient=True) as bar:
            task = bar.add_task("generating", total=len(prompts))
            for start in range(0, len(order), cfg.batch_size):
                batch = order[start : start + cfg.batch_size]
                inputs = tokenizer.pad(
                    {"input_ids": [encoded[index] for index in batch]}, padding_side="left", return_tensors="pt"
                ).to(device)
                output = model.generate(**inputs, generation_config=generation_config)
                new_tokens = output[:, inputs["input_ids"].shape[1] :]
                # no space clean-up: it rewrites the SQL (" ," -> ",", " 's" -> "'s", inside string literals too)
                decoded = tokenizer.batch_decode(
                    new_tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False
                )
                for index, answer in zip(batch, decoded):
                    answers[index] = answer.strip()
                bar.advance(task, len(batch))
    finally:
        model.train(was_training)
    elapsed = time.perf_counter() - started
    log.info(
        "generated %d answers in %.1f s (%.2f questions/s)", len(prompts), elapsed, len(prompts) / max(elapsed, 1e-9)
    )
    return answers
