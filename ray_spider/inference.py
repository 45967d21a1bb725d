"""Batched generation: chat prompts in, answer texts out, in the order given.

Used by ``ray-spider predict`` and by the dev evaluation inside training:

    model, tokenizer = load_for_inference(ModelConfig(), "runs/x/adapter", merge=True)
    answers = generate(model, tokenizer, [prompter.conversation(db_id, question)], GenerationConfig())

Prompts are rendered by ``prompt.render_generation_prompt`` (the one renderer), sorted longest
first so each left-padded batch holds prompts of similar length, and decoded without the prompt.

Two engines give the same greedy answers (up to float rounding): ``hf`` is transformers'
``generate``, which keeps decoding every row of a batch until its longest answer ends;
``pruned`` (the default, ``greedy_pruned``) drops rows whose answer has ended from the batch and
the KV cache, so a few long answers do not keep hundreds of finished ones busy. On a GPU, once few
answers are left open (``generation.cuda_graph_rows``), it decodes them with ``StaticDecoder``: a
static KV cache and one CUDA graph replay per step instead of ~1,300 kernel launches from Python.

With ``generation.prefix_cache`` (engine pruned), prompts that share their first tokens (the
questions of one database: system prompt and schema) are batched together instead, each shared
prefix is read once per batch (``prefill_shared_prefixes``) and ``greedy_pruned`` starts from its
copied KV cache, reading only the rest of each prompt (``prefix_cache.py``). With
``generation.share_prefix_kv`` too, the prefix's KV cache is not copied: every row attends to its
group's one copy (cascade attention, ``shared_prefix_kv.py``).

``generation.constrained`` masks each step's logits to the tokens the question's database grammar
allows (``constrained.py``), in both engines and inside the CUDA graph. ``generation.candidates``
= k > 1 returns k answers per prompt (``generate_candidates``), from which ``predict.generate_raw``
picks by execution (``selection.py``): engine ``pruned`` decodes each prompt in k rows of the same
batch, the first greedy and the others sampled (``next_tokens``: Gumbel-max, inside the CUDA graph
too); engine ``hf`` runs beam search.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import logging
import time
from collections.abc import Callable, Iterator

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import DynamicCache, LogitsProcessorList, StaticCache

from ray_spider.config import GenerationConfig
from ray_spider.constrained import BatchConstraint, GrammarLogitsProcessor, grammars_for, mask_logits
from ray_spider.errors import UserError
from ray_spider.model import end_of_turn_token
from ray_spider.prefix_cache import SharedPrefixBatch, batch_order
from ray_spider.prompt import render_generation_prompt
from ray_spider.shared_prefix_kv import SharedPrefixKV, shared_prefix_attention

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


def hf_generation_config(tokenizer, model, cfg: GenerationConfig):
    """A transformers GenerationConfig for ``cfg``: greedy, or ``cfg.candidates`` beams / samples.

    transformers fills every field left None from the model's own generation_config (Llama 3.1
    ships temperature=0.6, top_p=0.9) and warns when greedy decoding meets sampling values, so
    the neutral values are set explicitly.
    """
    from transformers import GenerationConfig as HFGenerationConfig

    sample = cfg.candidates > 1 and cfg.search == "sample"
    beams = cfg.candidates if cfg.candidates > 1 and cfg.search == "beam" else 1
    return HFGenerationConfig(
        do_sample=sample,
        num_beams=beams,
        num_return_sequences=cfg.candidates,
        temperature=cfg.temperature if sample else 1.0,
        top_p=1.0,
        **({"top_k": 0} if sample else {}),  # sample from the whole (masked) distribution
        max_new_tokens=cfg.max_new_tokens,
        eos_token_id=stop_token_ids(tokenizer, model),
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        use_cache=True,  # training turns the cache off in the model config; generating without it is quadratic
    )


def greedy_config(tokenizer, model, cfg: GenerationConfig):
    """``hf_generation_config`` of ``cfg`` with one greedy answer per prompt."""
    return hf_generation_config(tokenizer, model, cfg.model_copy(update={"candidates": 1}))


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _cache_argument(model) -> str:
    """The forward argument that takes the KV cache: ``cache`` from transformers 5.2x, ``past_key_values`` before."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


# The attention kernels decoding may use: not cuDNN's, which torch picks for masked batches on the
# H200 but plans anew for each shape, and the KV cache grows every step: 0.64 ms of CPU per layer
# and step there; without it dev-972 decoded 1.64x faster (docs/benchmarks.md).
DECODING_ATTENTION = (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH)

PRUNE_WHEN_FINISHED = 0.25  # drop finished rows once they are this share of the batch (each drop copies the cache)


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count a row's real tokens only (pads get 1, which nothing reads), as generate's."""
    return (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)


def _pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.cat([tensor, tensor.new_zeros((rows - len(tensor), *tensor.shape[1:]))])


def next_tokens(logits: torch.Tensor, inverse_temperature: torch.Tensor | None) -> torch.Tensor:
    """The next token of each row, (rows,), from last-position ``logits`` (rows, vocab).

    ``inverse_temperature`` (rows,): 0 for a greedy row (the argmax), 1/T for a sampled one, which
    draws from softmax(logits / T) by the Gumbel-max trick: argmax(logits / T - log E), E ~ Exp(1)
    per token (the way vLLM samples). Masked logits (-inf) are never drawn. It draws from torch's
    default generator on the logits' device, so it runs inside a CUDA graph (each replay draws anew).
    None: every row greedy.
    """
    greedy = logits.argmax(-1)
    if inverse_temperature is None:
        return greedy
    noise = torch.empty_like(logits, dtype=torch.float32).exponential_().log_()
    sampled = (logits.float() * inverse_temperature[:, None] - noise).argmax(-1)
    return torch.where(inverse_temperature > 0, sampled, greedy)


class StaticDecoder:
    """The open answers of a batch, decoded step by step over a static KV cache of ``rows`` rows.

    A step reads and writes only tensors made here, at fixed addresses, and never waits for the
    GPU: captured once as a CUDA graph, each later step is one replay. The eager loop spends ~40 ms
    of CPU per step launching ~1,300 kernels whatever the batch size (docs/benchmarks.md), which is
    all the time a step of a few long answers takes. Rows past the open answers are padding; they
    attend to their own tokens only and nobody reads their answers.

    Built from ``greedy_pruned``'s state between two steps: ``cache`` holds one position less than
    ``mask`` (the incoming ``tokens``' own), ``positions`` has one column.
    """

    def __init__(
        self, model, cache: DynamicCache, tokens: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, rows: int, steps: int,
        bitmask_words: int = 0, inverse_temperature: torch.Tensor | None = None,
    ):
        open_rows, width = mask.shape
        length = -(-(width + steps) // 8) * 8  # room for every step; a multiple of 8 suits the attention kernels
        self.model, self.cache_kwarg = model, _cache_argument(model)
        self.cache = StaticCache(config=model.config, max_cache_len=length)
        for static, dynamic in zip(self.cache.layers, cache.layers):
            static.update(_pad_rows(dynamic.keys, rows), _pad_rows(dynamic.values, rows))
        self.mask = torch.zeros(rows, length, dtype=torch.bool, device=mask.device)
        self.mask[:open_rows, :width] = mask.bool()
        self.mask[open_rows:, width - 1] = True
        self.tokens = _pad_rows(tokens.view(open_rows, 1), rows)
        self.positions = _pad_rows(positions, rows)
        self.next_column = torch.tensor([width], device=mask.device)
        self.inverse_temperature = None if inverse_temperature is None else _pad_rows(inverse_temperature, rows)
        # a constrained step reads the allowed tokens from here (filled between replays: the graph keeps its address)
        self.bitmask = torch.full((rows, bitmask_words), -1, dtype=torch.int32, device=mask.device) if bitmask_words else None

    def step(self) -> None:
        """One decoding step: the next token of every row into ``tokens``, ready for the next step."""
        output = self.model(
            input_ids=self.tokens, attention_mask=self.mask[:, None, None, :], position_ids=self.positions,
            use_cache=True, logits_to_keep=1, **{self.cache_kwarg: self.cache},
        )
        logits = output.logits[:, -1]
        if self.bitmask is not None:
            logits = mask_logits(logits, self.bitmask)
        self.tokens.copy_(next_tokens(logits, self.inverse_temperature)[:, None])
        self.positions.add_(1)
        self.mask.index_fill_(1, self.next_column, True)
        self.next_column.add_(1)

    def steps(self, cuda_graph: bool) -> Iterator[None]:
        """Decodes one step per ``next()``, without end. With ``cuda_graph`` the first step is also the
        warm-up a capture needs (on a side stream), and every later one replays the captured step."""
        if cuda_graph:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.step()
            torch.cuda.current_stream().wait_stream(side)
            yield
            graph = torch.cuda.CUDAGraph()
            try:
                # records the step, runs nothing; thread_local: other threads (Ray's, a trainer's) may go on
                with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                    self.step()
            except RuntimeError as error:
                log.warning("CUDA graph capture failed, decoding on without it: %s", error)
            else:
                while True:
                    graph.replay()
                    yield
        while True:
            self.step()
            yield


def greedy_pruned(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int, stop_ids: list[int], pad_id: int,
    static_rows: int = 0, cache: DynamicCache | None = None, constraint: BatchConstraint | None = None,
    inverse_temperature: torch.Tensor | None = None, prefix: SharedPrefixKV | None = None,
) -> torch.Tensor:
    """Greedy new tokens of a left-padded batch, shape (rows, max_new_tokens), pad after each stop token.

    Per row the arithmetic is generate's: the argmax of the last position's logits, positions
    counted over the real tokens only. Rows that have stopped are computed along (their token
    replaced by pad) until they make up PRUNE_WHEN_FINISHED of the batch; then they leave it and
    the KV cache. Once at most ``static_rows`` rows are left (and the prompt is read), a
    ``StaticDecoder`` of that many rows takes over to the end, as a CUDA graph on a GPU.

    ``cache``: the KV cache of the first columns of ``attention_mask`` (``prefill_shared_prefixes``);
    ``input_ids`` are then the last columns only.

    The static decoder holds the rows open when it takes over, rounded up to a multiple of 8 (at
    most ``static_rows``): a batch smaller than ``static_rows`` (an ``auto`` batch on a small GPU)
    never pays for padding rows it does not have; each batch captures its own graph anyway.

    ``constraint`` (row i of the batch is its row i): each step's logits are masked to the tokens
    it allows and the chosen tokens advance it. The mask is filled on the CPU between steps (the
    step syncs for the finished count anyway) and copied into the static decoder's buffer, so
    constrained rows stay in the CUDA graph.

    ``inverse_temperature`` (rows,): rows where it is above 0 sample instead (``next_tokens``).

    ``prefix`` (``shared_prefix_kv.py``): the first ``prefix.width`` columns of ``attention_mask``
    are each row's group prefix, held once per group in ``prefix`` and not in ``cache`` (None: an
    empty cache then); they count for the positions only, and every layer attends to them through
    ``shared_prefix_attention``.
    """
    rows, device = input_ids.shape[0], input_ids.device
    answers = torch.full((rows, max_new_tokens), pad_id, dtype=torch.long, device=device)
    stops = torch.tensor(stop_ids, device=device)
    active = torch.arange(rows, device=device)  # the answers row of each batch row
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    positions = _positions(attention_mask)[:, -input_ids.shape[1] :]
    if prefix is not None:
        attention_mask = attention_mask[:, prefix.width :]  # the model sees the per-row (suffix) cache's columns
    cache = DynamicCache(config=model.config) if cache is None else cache
    cache_kwarg = _cache_argument(model)
    tokens, mask, decoder = input_ids, attention_mask, None
    attention = shared_prefix_attention(model, prefix) if prefix is not None else contextlib.nullcontext()
    with attention:
        for step in range(max_new_tokens):
            if decoder is None and step > 0 and len(active) <= static_rows:
                words = constraint.grammars.words if constraint is not None else 0
                decoder_rows = min(static_rows, -(-len(active) // 8) * 8)  # the open rows, to a multiple of 8
                if prefix is not None:
                    prefix.pad_to(decoder_rows)
                decoder = StaticDecoder(
                    model, cache, tokens, mask, positions, decoder_rows, max_new_tokens - step, words, inverse_temperature,
                )
                decoding = decoder.steps(cuda_graph=device.type == "cuda")
                del cache  # copied into the decoder's static cache: free it
            if decoder is None:
                output = model(input_ids=tokens, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1, **{cache_kwarg: cache})
                logits = output.logits[:, -1]
                if constraint is not None:
                    logits = mask_logits(logits, constraint.bitmask(active.tolist()).to(device))
                chosen = next_tokens(logits, inverse_temperature)
            else:
                if constraint is not None:
                    decoder.bitmask[: len(active)].copy_(constraint.bitmask(active.tolist()))
                next(decoding)
                chosen = decoder.tokens[: len(active), 0]
            chosen = chosen.masked_fill(finished, pad_id)
            answers[active, step] = chosen
            if constraint is not None:
                constraint.advance(active.tolist(), chosen.tolist())
            finished |= torch.isin(chosen, stops)
            done = int(finished.sum())  # one sync per step, as in generate
            if done == len(active):
                break
            if decoder is not None:
                continue  # the static cache keeps its rows to the end
            if done >= PRUNE_WHEN_FINISHED * len(active):
                keep = (~finished).nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                if prefix is not None:
                    prefix.keep(keep)
                active, finished, chosen, mask, positions = active[keep], finished[keep], chosen[keep], mask[keep], positions[keep]
                if inverse_temperature is not None:
                    inverse_temperature = inverse_temperature[keep]
            mask = torch.cat([mask, mask.new_ones(len(active), 1)], dim=1)
            positions = positions[:, -1:] + 1
            tokens = chosen[:, None]
    return answers


def _prefill_prefixes(model, batch: SharedPrefixBatch) -> DynamicCache:
    """The KV cache of every distinct prefix of the batch, (G, heads, P, head dim) per layer, in one left-padded forward."""
    cache = DynamicCache(config=model.config)
    model(
        input_ids=batch.prefix_ids, attention_mask=batch.prefix_mask, position_ids=_positions(batch.prefix_mask),
        use_cache=True, logits_to_keep=1, **{_cache_argument(model): cache},
    )
    return cache


def prefill_shared_prefixes(model, batch: SharedPrefixBatch) -> DynamicCache:
    """The KV cache of each row's shared prefix, (rows, heads, P, head dim) per layer: every distinct
    prefix of the batch computed once, then copied to its rows."""
    cache = _prefill_prefixes(model, batch)
    cache.batch_select_indices(batch.group_of_row)  # repeated indices: each prefix copied to its rows
    return cache


def prefill_shared_prefix_kv(model, batch: SharedPrefixBatch) -> SharedPrefixKV:
    """Every distinct prefix of the batch computed once and kept once (``greedy_pruned``'s ``prefix``)."""
    return SharedPrefixKV.of(_prefill_prefixes(model, batch), batch.prefix_mask, batch.group_of_row)


class GenerationMemoryError(UserError):
    """Generation ran out of accelerator memory even one question at a time."""


def in_batches_that_fit(items: list, batch_size: int, run: Callable[[list], list], rows_per_item: int = 1) -> list:
    """``run`` over consecutive batches of ``items`` (questions; at most ``batch_size`` each), results
    concatenated in order. When a batch raises ``torch.OutOfMemoryError`` its size is halved and it
    is tried again, and the smaller size is kept for the rest (as accelerate's
    ``find_executable_batch_size`` does for a whole function); the shrink is logged with the
    ``generation.batch_size`` to start from, in rows (``rows_per_item`` per question: its
    candidates). A batch of one that does not fit raises GenerationMemoryError, naming the settings
    that would help."""
    results: list = []
    start = 0
    while start < len(items):
        batch = items[start : start + batch_size]
        out_of_memory = False
        try:
            results.extend(run(batch))
        except torch.OutOfMemoryError:
            out_of_memory = True  # handled outside the except block: its traceback pins the batch's tensors
        if not out_of_memory:
            start += len(batch)
            continue
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if batch_size == 1:
            raise GenerationMemoryError(
                "out of GPU memory generating even one answer at a time; try model.quantization=nf4, "
                "a smaller generation.max_new_tokens, generation.cuda_graph_rows=0 or a bigger GPU"
            )
        batch_size = max(1, batch_size // 2)
        log.warning(
            "out of GPU memory at %d questions per batch: going on with %d (set generation.batch_size=%d to start there)",
            len(batch), batch_size, batch_size * rows_per_item,
        )
    return results


def _sampled_rows(prompts: int, k: int, temperature: float, device: torch.device) -> torch.Tensor | None:
    """``greedy_pruned``'s inverse_temperature for ``prompts`` prompts of k rows each: 0 (greedy) for
    each prompt's first row, 1/temperature for the others; None when k is 1."""
    if k == 1:
        return None
    per_prompt = torch.full((k,), 1 / temperature, device=device)
    per_prompt[0] = 0
    return per_prompt.repeat(prompts)


# no_grad, not inference_mode: during training, inference tensors cached by a layer would break backward.
@torch.no_grad()
def generate_candidates(
    model, tokenizer, prompts: list[list[dict]], cfg: GenerationConfig, progress: bool = True,
    attention: tuple[SDPBackend, ...] = DECODING_ATTENTION, schemas: list[dict] | None = None,
) -> list[list[str]]:
    """``cfg.candidates`` answers to each chat prompt (system + user messages), best-ranked first,
    in the order of ``prompts``: greedy (one), beams (by score), or (search sample) the greedy
    answer followed by samples in row order, drawn under ``cfg.seed`` (torch's global random state
    is restored afterwards, so a dev round inside training leaves training's draws alone).

    ``schemas``: the tables.json entry of each prompt's database, needed when
    ``cfg.constrained`` (ValueError without them). Works on a plain or a PeftModel, also one in
    training mode: it is switched to eval for the call and back afterwards. ``attention``: the
    SDPA kernels torch may pick from.
    """
    if not prompts:
        return []
    if cfg.constrained and (schemas is None or len(schemas) != len(prompts)):
        raise ValueError("generation.constrained needs the database schema of every prompt (schemas=...)")
    texts = [render_generation_prompt(tokenizer, messages) for messages in prompts]
    # The chat template already writes any BOS it wants: no second one from the tokenizer.
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    # engine pruned reads a prefix shared by several prompts once per batch (prefix_cache.py); short
    # prompts (fewer than 2 tokens) have none to share
    shared_prefixes = cfg.prefix_cache and cfg.engine == "pruned" and min(map(len, encoded)) >= 2
    order = batch_order(encoded) if shared_prefixes else sorted(range(len(encoded)), key=lambda index: -len(encoded[index]))
    generation_config = hf_generation_config(tokenizer, model, cfg)
    grammars = grammars_for(tokenizer) if cfg.constrained else None
    released_before = grammars.released_rows if grammars is not None else 0
    questions_per_batch = max(1, cfg.batch_size // cfg.candidates)  # batch_size counts rows: k per question
    device = _device(model)
    k = cfg.candidates
    # engine pruned makes candidates as rows: each prompt k times, the first greedy, the rest sampled
    rows_per_prompt = k if cfg.engine == "pruned" else 1
    answers: list[list[str] | None] = [None] * len(prompts)
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
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), sdpa_kernel(list(attention)), \
                Progress(*columns, disable=not progress, transient=True) as bar:
            torch.manual_seed(cfg.seed)
            task = bar.add_task("generating", total=len(prompts))

            def answer_batch(batch: list[int]) -> list[list[str]]:
                rows = [index for index in batch for _ in range(rows_per_prompt)]
                batch_schemas = [schemas[index] for index in rows] if grammars else None
                cache = prefix = None
                if shared_prefixes:
                    shared = SharedPrefixBatch.of([encoded[index] for index in rows], generation_config.pad_token_id, device)
                    inputs = {"input_ids": shared.rest_ids, "attention_mask": shared.attention_mask}
                    if cfg.share_prefix_kv:
                        prefix = prefill_shared_prefix_kv(model, shared)
                    else:
                        cache = prefill_shared_prefixes(model, shared)
                else:
                    inputs = tokenizer.pad(
                        {"input_ids": [encoded[index] for index in rows]}, padding_side="left", return_tensors="pt"
                    ).to(device)
                width = inputs["input_ids"].shape[1]
                if cfg.engine == "hf":
                    processors = [GrammarLogitsProcessor(grammars, batch_schemas, width)] if grammars else []
                    output = model.generate(
                        **inputs, generation_config=generation_config, logits_processor=LogitsProcessorList(processors)
                    )
                    new_tokens = output[:, width:]
                else:
                    new_tokens = greedy_pruned(
                        model, inputs["input_ids"], inputs["attention_mask"], cfg.max_new_tokens,
                        generation_config.eos_token_id, generation_config.pad_token_id,
                        static_rows=cfg.cuda_graph_rows if device.type == "cuda" else 0, cache=cache,
                        constraint=grammars.constraint(batch_schemas) if grammars else None,
                        inverse_temperature=_sampled_rows(len(batch), k, cfg.temperature, device), prefix=prefix,
                    )
                # no space clean-up: it rewrites the SQL (" ," -> ",", " 's" -> "'s", inside string literals too)
                decoded = tokenizer.batch_decode(
                    new_tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False
                )
                bar.advance(task, len(batch))
                return [[answer.strip() for answer in decoded[row * k : (row + 1) * k]] for row in range(len(batch))]

            for index, candidates in zip(order, in_batches_that_fit(order, questions_per_batch, answer_batch, cfg.candidates)):
                answers[index] = candidates
    finally:
        model.train(was_training)
    elapsed = time.perf_counter() - started
    if grammars is not None and grammars.released_rows > released_before:
        log.warning(
            "constrained decoding: %d rows went on unconstrained after their grammar matcher failed",
            grammars.released_rows - released_before,
        )
    log.info(
        "generated %d answers in %.1f s (%.2f questions/s, %d candidates each)", len(prompts), elapsed,
        len(prompts) / max(elapsed, 1e-9), cfg.candidates,
    )
    return answers


def generate(
    model, tokenizer, prompts: list[list[dict]], cfg: GenerationConfig, progress: bool = True,
    attention: tuple[SDPBackend, ...] = DECODING_ATTENTION, schemas: list[dict] | None = None,
) -> list[str]:
    """The best-ranked answer to each chat prompt, in the order of ``prompts`` (see ``generate_candidates``)."""
    candidates = generate_candidates(model, tokenizer, prompts, cfg, progress, attention, schemas)
    return [answers[0] for answers in candidates]
