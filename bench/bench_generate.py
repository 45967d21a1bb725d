"""Benchmark: questions/s of `inference.generate` (batched, prompts sorted by length, left padding)
beside a plain unbatched loop (one question per `model.generate` call), same greedy settings and
max_new_tokens, on the same seeded sample of dev questions, in one run; and whether they agree.

    SPIDER_DIR=../shared/spider python bench/bench_generate.py                   # CPU default, a few minutes
    SPIDER_DIR=../shared/spider python bench/bench_generate.py --device cuda \
        --questions 972 --batch-size 64 --max-new-tokens 256                     # H200: all of dev-972

Both sides get the same model object, the same rendered prompts (``prompt.render_generation_prompt``)
and the same transformers GenerationConfig (``inference.greedy_config``: greedy, stop on eos and
end of turn); only the batching differs. One short warm-up call runs first, untimed. Greedy
decoding of a left-padded batch is not bit-identical to one prompt alone (padded attention and
different matmul shapes change the float rounding), so a few answers can differ where two tokens
are near-tied; the count is printed. Figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time

import torch

from ray_spider.config import GenerationConfig, ModelConfig, PromptConfig
from ray_spider.data import dev_examples
from ray_spider.inference import generate, greedy_config
from ray_spider.model import load_for_inference
from ray_spider.prompt import Prompter, render_generation_prompt
from ray_spider.spider import Spider


@torch.no_grad()
def unbatched(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int, lengths: list[int]) -> list[str]:
    """The obvious way: one question at a time, no padding. Appends each answer's new-token count to ``lengths``."""
    generation_config = greedy_config(tokenizer, model, GenerationConfig(max_new_tokens=max_new_tokens))
    device = next(model.parameters()).device
    answers = []
    for messages in prompts:
        text = render_generation_prompt(tokenizer, messages)
        inputs = tokenizer(text, add_special_tokens=False, return_tensors="pt").to(device)
        output = model.generate(**inputs, generation_config=generation_config)
        new_tokens = output[0, inputs["input_ids"].shape[1] :]
        lengths.append(len(new_tokens))
        answers.append(tokenizer.decode(new_tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False).strip())
    return answers


def timed(function) -> tuple[float, list[str]]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = function()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model spec, as model.name")
    parser.add_argument("--adapter", default=None, help="LoRA adapter folder (default: the base model)")
    parser.add_argument("--quantization", choices=["nf4", "none"], default="none", help="none = bf16 on GPU, float32 on CPU")
    parser.add_argument("--questions", type=int, default=16, help="seeded sample of dev-972 (the one training evaluates)")
    parser.add_argument("--batch-size", type=int, default=8, help="generation.batch_size of the batched side")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadiest on a shared machine)")
    parser.add_argument("--repeats", type=int, default=1, help="alternating unbatched/batched pairs; medians are reported")
    parser.add_argument("--seed", type=int, default=42, help="dev sample seed (train.seed picks the same sample)")
    args = parser.parse_args()
    print("python " + shlex.join(sys.argv), flush=True)

    torch.set_num_threads(args.threads)
    spider = Spider()
    prompter = Prompter(spider, PromptConfig())
    examples, _ = dev_examples(spider, args.questions, seed=args.seed)
    prompts = [prompter.conversation(e.db_id, e.question) for e in examples]
    device = "cuda:0" if args.device == "cuda" else "cpu"
    model, tokenizer = load_for_inference(ModelConfig(name=args.model, quantization=args.quantization), args.adapter, device=device)
    gen_cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    generate(model, tokenizer, prompts[:1], gen_cfg.model_copy(update={"max_new_tokens": 4}), progress=False)  # warm-up

    runs = {"unbatched": [], "batched": []}
    answers, lengths = {}, []
    sides = [
        ("unbatched", lambda: unbatched(model, tokenizer, prompts, args.max_new_tokens, lengths)),
        ("batched", lambda: generate(model, tokenizer, prompts, gen_cfg, progress=False)),
    ]
    for repeat in range(args.repeats):
        for name, function in sides if repeat % 2 == 0 else sides[::-1]:  # alternate the order against drift
            seconds, answers[name] = timed(function)
            runs[name].append(seconds)
            print(f"  [{repeat + 1}/{args.repeats}] {name:9s} {seconds:7.2f} s", flush=True)

    differ = [i for i, (a, b) in enumerate(zip(answers["unbatched"], answers["batched"])) if a != b]
    prompt_tokens = [len(tokenizer(render_generation_prompt(tokenizer, p), add_special_tokens=False)["input_ids"]) for p in prompts]
    unbatched_s, batched_s = statistics.median(runs["unbatched"]), statistics.median(runs["batched"])
    n = len(prompts)
    print(
        f"\n{n} dev questions (seed {args.seed}; prompts {min(prompt_tokens)}-{max(prompt_tokens)} tokens, mean "
        f"{statistics.fmean(prompt_tokens):.0f}), {args.model} {args.quantization}"
        f"{' + ' + args.adapter if args.adapter else ''}, greedy, max_new_tokens {args.max_new_tokens}, "
        f"{args.device}, {args.threads} threads, torch {torch.__version__}, median of {args.repeats}"
    )
    lengths = lengths[:n]
    print(
        f"  answers: mean {statistics.fmean(lengths):.1f} new tokens, {sum(length >= args.max_new_tokens for length in lengths)} "
        f"of {n} stopped by max_new_tokens (a batch decodes until its longest answer ends)"
    )
    batched_name = f"inference.generate (batch {args.batch_size})"
    print(f"  {'unbatched loop (batch 1)':34s}: {unbatched_s:7.2f} s = {n / unbatched_s:6.2f} questions/s")
    print(f"  {batched_name:34s}: {batched_s:7.2f} s = {n / batched_s:6.2f} questions/s")
    print(f"  speed-up batched / unbatched      : {unbatched_s / batched_s:7.2f}x")
    print(f"  answers that differ               : {len(differ)} of {n}")
    for index in differ[:3]:
        print(f"    [{index}] unbatched: {answers['unbatched'][index]!r}\n    [{index}] batched  : {answers['batched'][index]!r}")


if __name__ == "__main__":
    main()
