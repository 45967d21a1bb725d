"""Questions -> raw model outputs -> extracted SQL -> EX/EM scores. Used by `predict`, `baseline`
and the dev evaluation inside training, so every number comes from the same code path.

    ray-spider predict --model smollm2-135m-instruct [--adapter runs/x/adapter] --split dev --out preds/

The output folder holds ``predictions.jsonl`` (raw output, extracted SQL, scores per question),
``pred.sql`` + ``gold.sql`` in the official evaluators' format, and ``summary.json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

from ray_spider.config import EvalConfig, GenerationConfig, RunConfig
from ray_spider.errors import write_atomically
from ray_spider.evaluation.execution import QueryOutcome, run_query
from ray_spider.evaluation.extract import extract_sql, one_line
from ray_spider.evaluation.score import GoldQuery, Report, Summary, score
from ray_spider.inference import generate_candidates
from ray_spider.prompt import Prompter
from ray_spider.selection import pick_answers
from ray_spider.spider import Example, Spider


@dataclass(frozen=True)
class PredictionSummary(Summary):
    """The evaluator's Summary of model answers, with what only generation knows.

    ``to_dict()`` is summary.json: the evaluator's keys, then sql_only_rate, then the optional
    keys that are set (timings from ``predict_and_score``, the prompt version and the generation
    settings from ``run_prediction``).
    """

    sql_only_rate: float = 0.0  # share of raw answers that were SQL and nothing else
    generate_s: float | None = None
    score_s: float | None = None
    prompt_version: str | None = None
    generation: dict | None = None  # the run config's generation section: greedy, constrained, candidates

    def to_dict(self) -> dict:
        data = super().to_dict()
        return {key: value for key, value in data.items() if value is not None or key not in _OPTIONAL_KEYS}


_OPTIONAL_KEYS = ("generate_s", "score_s", "prompt_version", "generation")


@dataclass
class PredictionResult:
    summary: PredictionSummary
    records: list[dict]  # one per question

    def write(self, out_dir: Path) -> None:
        """Each file whole or not at all (written beside, then renamed): an interruption leaves no half file."""
        write_atomically(out_dir / "predictions.jsonl", "".join(json.dumps(record) + "\n" for record in self.records))
        write_atomically(out_dir / "pred.sql", "".join(one_line(r["sql"]) + "\n" for r in self.records))
        write_atomically(out_dir / "gold.sql", "".join(f"{one_line(r['gold'])}\t{r['db_id']}\n" for r in self.records))
        write_atomically(out_dir / "summary.json", json.dumps(self.summary.to_dict(), indent=2) + "\n")


def generate_raw(
    model, tokenizer, prompter: Prompter, examples: list[Example], cfg: GenerationConfig, progress: bool = True,
    eval_cfg: EvalConfig | None = None, candidates_out: list[list[str]] | None = None,
) -> list[str]:
    """One raw answer per example, decoded as ``cfg`` says: greedy, schema-constrained (each
    question's database from ``prompter.spider``), or the execution-guided pick of
    ``cfg.candidates`` candidates (``selection.pick_answers``: each query cut at
    ``eval_cfg.query_timeout_s``, on ``eval_cfg.workers`` processes; None: EvalConfig's defaults).
    ``candidates_out``: when given and ``cfg.candidates`` > 1, each example's candidates (raw, best-ranked
    first) are appended to it, for the record."""
    spider = prompter.spider
    prompts = [prompter.conversation(e.db_id, e.question) for e in examples]
    schemas = [spider.tables[e.db_id] for e in examples]
    candidates = generate_candidates(model, tokenizer, prompts, cfg, progress=progress, schemas=schemas)
    if cfg.candidates == 1:
        return [answers[0] for answers in candidates]
    if candidates_out is not None:
        candidates_out.extend(candidates)
    eval_cfg = eval_cfg or EvalConfig()
    return pick_answers(candidates, [spider.db_path(e.db_id) for e in examples], cfg.pick, eval_cfg.query_timeout_s, eval_cfg.workers)


def score_outputs(
    spider: Spider, examples: list[Example], raw_outputs: list[str], cfg: EvalConfig, progress: bool = True,
    candidates: list[list[str]] | None = None,
) -> PredictionResult:
    """Scores and per-question records of ``raw_outputs``; ``candidates`` (generate_raw's, when k > 1)
    go into each record as ``candidates``, so other picks can be studied without generating again."""
    extractions = [extract_sql(raw) for raw in raw_outputs]
    sqls = [one_line(x.sql) if x.sql else "" for x in extractions]
    report: Report = score(
        [GoldQuery(e.query, e.db_id) for e in examples],
        sqls,
        spider.root / "database",
        spider.root / "tables.json",
        timeout_s=cfg.query_timeout_s,
        workers=cfg.workers,
        progress=progress,
    )
    by_position = {s.index: s for s in report.scores}
    records = []
    for position, (example, raw, extraction, sql) in enumerate(zip(examples, raw_outputs, extractions, sqls)):
        scored = by_position.get(position)
        records.append(
            {
                "split": example.split,
                "index": example.index,
                "db_id": example.db_id,
                "question": example.question,
                "gold": example.query,
                "raw_output": raw,
                "sql": sql,
                "sql_only": extraction.pure,
                "hardness": scored.hardness if scored else None,
                "ex": scored.ex if scored else None,
                "em": scored.em if scored else None,
                "error_type": scored.error_type if scored else None,
                "pred_error": scored.pred_error if scored else None,
                **({"candidates": candidates[position]} if candidates else {}),
            }
        )
    sql_only_rate = sum(x.pure for x in extractions) / len(extractions) if extractions else 0.0
    summary = PredictionSummary(**vars(report.summary()), sql_only_rate=sql_only_rate)
    return PredictionResult(summary, records)


def predict_and_score(model, tokenizer, prompter: Prompter, examples: list[Example], gen_cfg: GenerationConfig, eval_cfg: EvalConfig, progress: bool = True) -> PredictionResult:
    started = time.perf_counter()
    candidates: list[list[str]] = []
    raw = generate_raw(model, tokenizer, prompter, examples, gen_cfg, progress, eval_cfg, candidates)
    generated = time.perf_counter()
    result = score_outputs(prompter.spider, examples, raw, eval_cfg, progress, candidates)
    timings = {"generate_s": round(generated - started, 2), "score_s": round(time.perf_counter() - generated, 2)}
    return replace(result, summary=replace(result.summary, **timings))


@dataclass
class Answers:
    """Model answers to questions without gold SQL: written like a PredictionResult, never scored."""

    records: list[dict]  # one per question: db_id, question, raw_output, sql, sql_only
    sql_only_rate: float
    prompt_version: str | None = None
    generation: dict | None = None  # the run config's generation section, as in PredictionSummary

    @property
    def summary(self) -> dict:
        return {
            "n": len(self.records), "scored": False, "sql_only_rate": self.sql_only_rate,
            "prompt_version": self.prompt_version, "generation": self.generation,
        }

    def write(self, out_dir: Path) -> None:
        """predictions.jsonl, pred.sql (one line per question) and summary.json; no gold.sql."""
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / "predictions.jsonl", "w") as out:
            for record in self.records:
                out.write(json.dumps(record) + "\n")
        (out_dir / "pred.sql").write_text("".join(one_line(r["sql"]) + "\n" for r in self.records))
        (out_dir / "summary.json").write_text(json.dumps(self.summary, indent=2) + "\n")


def unscored_answers(examples: list[Example], raw_outputs: list[str]) -> Answers:
    extractions = [extract_sql(raw) for raw in raw_outputs]
    records = [
        {"index": e.index, "db_id": e.db_id, "question": e.question, "raw_output": raw, "sql": one_line(x.sql) if x.sql else "", "sql_only": x.pure}
        for e, raw, x in zip(examples, raw_outputs, extractions)
    ]
    return Answers(records, sum(x.pure for x in extractions) / len(extractions) if extractions else 0.0)


def run_prediction(
    cfg: RunConfig, adapter: str | None, out_dir: Path, split: str = "dev", progress: bool = True,
    questions: list[Example] | None = None,
) -> PredictionResult | Answers:
    """Load base (+ adapter), answer the questions, score them, write ``out_dir``.

    The questions: ``questions`` when given (a user's file, data.read_questions), else the split's
    scorable ones (cfg.data's dev subset and hardness for dev). Questions without gold SQL are
    answered and written, not scored (an ``Answers``).
    """
    from ray_spider.data import scored_dev_examples
    from ray_spider.memory import resolve_generation_settings
    from ray_spider.model import default_device, load_for_inference

    cfg = resolve_generation_settings(cfg, default_device())
    spider = Spider(cfg.data.spider_dir)
    prompter = Prompter(spider, cfg.prompt)
    if questions is not None:
        examples = questions
    elif split == "dev":
        examples = scored_dev_examples(spider, cfg.data)
    else:
        examples, _ = spider.executable(spider.examples(split))
    model, tokenizer = load_for_inference(cfg.model, adapter, merge=cfg.generation.merge_adapter)
    if any(example.query is None for example in examples):
        answers = unscored_answers(examples, generate_raw(model, tokenizer, prompter, examples, cfg.generation, progress, cfg.eval))
        answers.prompt_version, answers.generation = prompter.version, cfg.generation.model_dump(mode="json")
        answers.write(out_dir)
        return answers
    result = with_settings(predict_and_score(model, tokenizer, prompter, examples, cfg.generation, cfg.eval, progress), prompter, cfg.generation)
    result.write(out_dir)
    return result


def with_settings(result: PredictionResult, prompter: Prompter, generation: GenerationConfig) -> PredictionResult:
    """``result`` with how its answers were made, for its summary.json: the prompt version and the
    generation section (greedy, constrained, candidates). `predict` and training's dev rounds both
    record them, so `compare` sets side by side answers whose decoding it can name."""
    return replace(result, summary=replace(result.summary, prompt_version=prompter.version, generation=generation.model_dump(mode="json")))


@dataclass(frozen=True)
class Answer:
    """One question answered and run: what `ray-spider ask` prints."""

    raw_output: str
    sql: str | None  # the extracted statement; None when the answer held no SQL
    outcome: QueryOutcome  # of running ``sql`` read-only on the question's database


def ask(model, tokenizer, prompter: Prompter, db_id: str, question: str, gen_cfg: GenerationConfig, eval_cfg: EvalConfig) -> Answer:
    """Answer one question with the inference path of `predict` and run the SQL on the database with
    the evaluator's read-only execution (eval_cfg.query_timeout_s, its row cap).
    Raises KeyError for a db_id that tables.json lacks (from the prompt)."""
    question_example = Example("questions", 0, db_id, question, None)
    raw = generate_raw(model, tokenizer, prompter, [question_example], gen_cfg, False, eval_cfg)[0]
    sql = extract_sql(raw).sql
    outcome = run_query(prompter.spider.db_path(db_id), sql or "", timeout_s=eval_cfg.query_timeout_s)
    return Answer(raw, one_line(sql) if sql else None, outcome)
