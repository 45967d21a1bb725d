"""Schema-constrained decoding and execution-guided selection, on real Spider databases and models."""

from __future__ import annotations

import re

import pytest
import sqlglot
import torch
from sqlglot import exp

from ray_spider.config import ConfigError, GenerationConfig, PromptConfig, build_run_config
from ray_spider.constrained import ALIAS_PATTERN, AGGREGATES, KEYWORDS, grammars_for, schema_names
from ray_spider.model import load_tokenizer
from ray_spider.selection import pick_candidate

# dev questions on four databases (indexes into dev.json)
QUESTIONS = (0, 200, 400, 600)


def _allowed_words(schema: dict) -> set[str]:
    tables, columns = schema_names(schema)
    names = set(tables) | {column for table in tables for column in columns[table]} | set(KEYWORDS) | set(AGGREGATES)
    return {name.lower() for name in names}


def _unknown_words(answer: str, schema: dict, ended: bool) -> list[str]:
    """Words of ``answer`` outside string literals that are neither schema names, keywords nor aliases.
    A cut answer (not ``ended``) may end inside an identifier: its last word is not checked."""
    outside = re.sub(r"'([^']|'')*'|\"([^\"]|\"\")*\"", " ", answer)
    outside = re.split(r"['\"]", outside)[0]  # an unterminated literal runs to the end
    words = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", outside)
    if not ended and words and outside.rstrip() == outside:
        words = words[:-1]
    allowed = _allowed_words(schema)
    return [word for word in words if word.lower() not in allowed and not re.fullmatch(ALIAS_PATTERN, word)]


def _schema_identifiers_ok(sql: str, schema: dict) -> bool:
    """sqlglot parses ``sql`` as SQLite and every table and column it names is in the schema (or an alias)."""
    tree = sqlglot.parse_one(sql, read="sqlite")
    allowed = _allowed_words(schema)
    names = [table.name for table in tree.find_all(exp.Table)] + [column.name for column in tree.find_all(exp.Column)]
    return all(name.lower() in allowed or re.fullmatch(ALIAS_PATTERN, name) for name in names)


@pytest.fixture(scope="module")
def questions(spider):
    dev = spider.examples("dev")
    return [dev[index] for index in QUESTIONS]


def _prompts(spider, questions):
    from ray_spider.prompt import Prompter

    prompter = Prompter(spider, PromptConfig())
    return [prompter.conversation(q.db_id, q.question) for q in questions], [spider.tables[q.db_id] for q in questions]


def test_grammar_accepts_gold_and_rejects_names_outside_the_schema(spider, offline_dir):
    grammars = grammars_for(load_tokenizer(offline_dir))
    tokenizer = load_tokenizer(offline_dir)
    schema = spider.tables["concert_singer"]

    def accepts(sql: str) -> bool:
        return grammars.accepts(schema, tokenizer(sql, add_special_tokens=False)["input_ids"])

    gold = [e.query for e in spider.examples("dev") if e.db_id == "concert_singer"]
    assert all(accepts(sql) for sql in gold)  # all 45 (tools/grammar_coverage.py checks every database)
    assert accepts("select T1.name from singer as t1 join singer_in_concert as T2 on T1.singer_id = t2.singer_id")
    assert accepts('SELECT "Name" FROM singer WHERE age > = 20 ORDER BY age DESC LIMIT 1;')
    assert accepts("SELECT distinct(country) FROM singer")
    assert not accepts("SELECT DISTINCTcountry FROM singer")  # a keyword glued to a name
    assert not accepts("SELECT nme FROM singer")  # no such column
    assert not accepts("SELECT name FROM singers")  # no such table
    assert not accepts("SELECT namesinger FROM singer")  # two names glued: one unknown identifier to SQLite
    assert not accepts("SELECT stadium.Song_Name FROM stadium")  # a column of another table
    assert not accepts("SELECT name FROM singer WHERE")  # not a complete query


@pytest.mark.parametrize("engine", ["pruned", "hf"])
def test_constrained_random_model_writes_only_schema_identifiers(spider, tiny_dir, questions, engine):
    """A random model's free output is garbage; constrained, its words are keywords and schema names."""
    from transformers import AutoModelForCausalLM

    from ray_spider.inference import generate

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    tokenizer = load_tokenizer(tiny_dir)
    prompts, schemas = _prompts(spider, questions)
    free = generate(model, tokenizer, prompts, GenerationConfig(max_new_tokens=24, engine=engine), progress=False)
    assert any(_unknown_words(answer, schema, ended=False) for answer, schema in zip(free, schemas))  # the check bites
    cfg = GenerationConfig(max_new_tokens=24, engine=engine, constrained=True)
    answers = generate(model, tokenizer, prompts, cfg, progress=False, schemas=schemas)
    for answer, schema in zip(answers, schemas):
        assert re.match(r"select\b", answer, re.IGNORECASE), answer
        assert _unknown_words(answer, schema, ended=False) == [], answer


def test_constrained_static_decoder_matches_the_eager_loop(spider, tiny_dir, questions):
    """The mask reaches the static decoder (the CUDA graph's step, run eagerly here) through its buffer."""
    from transformers import AutoModelForCausalLM

    from ray_spider.constrained import grammars_for
    from ray_spider.inference import greedy_pruned, stop_token_ids
    from ray_spider.prompt import render_generation_prompt

    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    tokenizer = load_tokenizer(tiny_dir)
    prompts, schemas = _prompts(spider, questions)
    texts = [render_generation_prompt(tokenizer, messages) for messages in prompts]
    inputs = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    grammars = grammars_for(tokenizer)
    runs = []
    with torch.no_grad():
        for static_rows in (0, len(questions)):
            runs.append(greedy_pruned(
                model, inputs["input_ids"], inputs["attention_mask"], 16, stop_token_ids(tokenizer, model),
                tokenizer.pad_token_id, static_rows=static_rows, constraint=grammars.constraint(schemas),
            ))
    assert torch.equal(runs[0], runs[1])


@pytest.mark.slow
def test_constraint_changes_real_greedy_answers_only_where_it_bites(spider, offline_dir):
    """Real SmolLM2: the constrained answer follows the free greedy answer token for token as long
    as the grammar allows the free answer's tokens, and stays in the grammar and the schema after."""
    from transformers import AutoModelForCausalLM

    from ray_spider.inference import greedy_pruned, stop_token_ids
    from ray_spider.prompt import render_generation_prompt

    model = AutoModelForCausalLM.from_pretrained(offline_dir).eval()
    tokenizer = load_tokenizer(offline_dir)
    grammars = grammars_for(tokenizer)
    dev = spider.examples("dev")
    prompts, schemas = _prompts(spider, [dev[0], dev[2]])  # concert_singer; the base model starts question 2 in SQL
    texts = [render_generation_prompt(tokenizer, messages) for messages in prompts]
    inputs = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    args = (model, inputs["input_ids"], inputs["attention_mask"], 24, stop_token_ids(tokenizer, model), tokenizer.pad_token_id)
    with torch.no_grad():
        free = greedy_pruned(*args)
        constrained = greedy_pruned(*args, constraint=grammars.constraint(schemas))
    agreed = []
    for row, schema in enumerate(schemas):
        matcher = grammars.matcher(schema)
        allowed = 0  # the free answer's tokens the grammar takes, from the start
        while allowed < free.shape[1] and not matcher.is_stopped() and matcher.consume_token(int(free[row, allowed])):
            allowed += 1
        assert torch.equal(constrained[row, :allowed], free[row, :allowed])
        answer = tokenizer.decode(constrained[row], skip_special_tokens=True)
        assert _unknown_words(answer, schema, ended=False) == [], answer
        agreed.append(allowed)
    assert max(agreed) >= 5  # the check compared a real stretch of SQL


def test_execution_guided_pick_takes_the_first_candidate_that_runs(spider):
    db_path = spider.db_path("concert_singer")
    candidates = ["SELECT nme FROM singer", "SELEC name FROM singer", "```sql\nSELECT name FROM singer\n```", "SELECT count(*) FROM singer"]
    assert pick_candidate(candidates, db_path) == (candidates[2], 2)
    empty_first = ["SELECT name FROM singer WHERE age > 1000", "SELECT name FROM singer"]
    assert pick_candidate(empty_first, db_path, "executes")[1] == 0
    assert pick_candidate(empty_first, db_path, "returns_rows")[1] == 1
    assert pick_candidate(["SELECT nme FROM singer", "no sql here"], db_path) == ("SELECT nme FROM singer", 0)  # none runs: the first


def test_candidate_search_needs_its_engine():
    with pytest.raises(ConfigError, match="generation.search=beam needs generation.engine=hf"):
        build_run_config({"generation": {"candidates": 4, "search": "beam"}})
    with pytest.raises(ConfigError, match="generation.search=sample needs generation.engine=pruned"):
        build_run_config({"generation": {"candidates": 4, "engine": "hf"}})
    assert build_run_config({"generation": {"candidates": 4, "engine": "hf", "search": "beam", "constrained": True}}).generation.candidates == 4
    assert build_run_config({"generation": {"candidates": 4}}).generation.search == "sample"


@pytest.mark.parametrize("engine", ["pruned", "hf"])
def test_generate_raw_answers_each_question_once_with_candidates(spider, tiny_dir, questions, engine):
    """Execution-guided decoding through the one entry point that `predict` and training's dev rounds use."""
    from transformers import AutoModelForCausalLM

    from ray_spider.predict import generate_raw
    from ray_spider.prompt import Prompter

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    tokenizer = load_tokenizer(tiny_dir)
    search = {"pruned": "sample", "hf": "beam"}[engine]
    cfg = GenerationConfig(max_new_tokens=8, engine=engine, search=search, candidates=2, constrained=True, pick="majority")
    raw = generate_raw(model, tokenizer, Prompter(spider, PromptConfig()), questions[:2], cfg, progress=False)
    assert len(raw) == 2 and all(re.match(r"select\b", answer, re.IGNORECASE) for answer in raw)


@pytest.mark.parametrize("prefix_cache", [False, True])
def test_sampled_constrained_candidates_name_only_schema_identifiers(spider, tiny_dir, questions, prefix_cache):
    """Samples at a high temperature wander far from greedy; the grammar still holds every one."""
    from transformers import AutoModelForCausalLM

    from ray_spider.inference import generate_candidates

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    tokenizer = load_tokenizer(tiny_dir)
    prompts, schemas = _prompts(spider, questions)
    cfg = GenerationConfig(max_new_tokens=16, candidates=4, temperature=3.0, constrained=True, prefix_cache=prefix_cache)
    candidates = generate_candidates(model, tokenizer, prompts, cfg, progress=False, schemas=schemas)
    assert len({answer for answers in candidates for answer in answers}) > len(prompts)  # the samples differ
    for answers, schema in zip(candidates, schemas):
        for answer in answers:
            assert re.match(r"select\b", answer, re.IGNORECASE), answer
            assert _unknown_words(answer, schema, ended=False) == [], answer


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_constrained_decoding_in_cuda_graphs_answers_like_eager(spider, tiny_dir, questions, caplog):
    """The mask reaches the captured step through its static buffer: same answers as the eager loop."""
    import logging

    from ray_spider.config import ModelConfig
    from ray_spider.inference import generate
    from ray_spider.model import load_for_inference

    model, tokenizer = load_for_inference(ModelConfig(name=tiny_dir), None, merge=True, device="cuda:0")
    prompts, schemas = _prompts(spider, questions)
    eager = GenerationConfig(max_new_tokens=24, batch_size=4, cuda_graph_rows=0, constrained=True)
    expected = generate(model, tokenizer, prompts, eager, progress=False, schemas=schemas)
    with caplog.at_level(logging.WARNING, logger="ray_spider.inference"):
        graphed = generate(model, tokenizer, prompts, eager.model_copy(update={"cuda_graph_rows": 4}), progress=False, schemas=schemas)
    assert graphed == expected and "capture failed" not in caplog.text
    assert all(_unknown_words(answer, schema, ended=False) == [] for answer, schema in zip(graphed, schemas))


def _misread_decoder_tokenizer(offline_dir):
    """SmolLM2's tokenizer with the decoder transformers 5.17 writes when it converts the GGUF:
    Sequence[ByteFallback, Fuse, Replace, ByteLevel]. It decodes the same text; llguidance read
    it as sentencepiece ("Ġ" as the bytes of 'Ġ', not a space)."""
    from tokenizers import decoders

    tokenizer = load_tokenizer(offline_dir)
    tokenizer.backend_tokenizer.decoder = decoders.Sequence(
        [decoders.ByteFallback(), decoders.Fuse(), decoders.Replace("▁", " "), decoders.ByteLevel()]
    )
    assert tokenizer.decode(tokenizer("SELECT name FROM singer")["input_ids"]) == "SELECT name FROM singer"
    return tokenizer


def test_grammar_reads_byte_level_tokens_whatever_their_decoder(spider, offline_dir):
    """With the 5.17-converted tokenizer every constrained answer was "SELECT": no token held a space."""
    tokenizer = _misread_decoder_tokenizer(offline_dir)
    grammars = grammars_for(tokenizer)
    schema = spider.tables["concert_singer"]
    gold = [e.query for e in spider.examples("dev") if e.db_id == "concert_singer"]
    assert all(grammars.accepts(schema, tokenizer(sql, add_special_tokens=False)["input_ids"]) for sql in gold)


def _assert_answers_follow_the_grammar(grammars, schemas, answers: torch.Tensor, stop_ids: list[int]) -> None:
    """Every chosen token is one the row's grammar accepts, and a row that ends before
    max_new_tokens ends with a complete query (the matcher takes the stop token)."""
    for schema, row in zip(schemas, answers.tolist()):
        ends = [step for step, token in enumerate(row) if token in stop_ids]
        tokens = row[: ends[0]] if ends else row
        matcher = grammars.matcher(schema)
        for token in tokens:
            assert matcher.consume_token(token) and not matcher.is_error(), matcher.get_error()[:300]
        if ends:
            assert matcher.consume_token(grammars.stop_id) and not matcher.is_error(), (tokens, matcher.get_error()[:300])


@pytest.mark.parametrize("prefix_cache", [False, True])
def test_constrained_rows_never_end_inside_the_grammar(spider, offline_dir, tiny_dir, questions, prefix_cache):
    """The invariant behind every constrained answer, with the 5.17-converted tokenizer, with and
    without the shared-prefix cache (its batch order is not the prompts' order)."""
    from transformers import AutoModelForCausalLM

    from ray_spider.inference import greedy_pruned, prefill_shared_prefixes, stop_token_ids
    from ray_spider.prefix_cache import SharedPrefixBatch
    from ray_spider.prompt import render_generation_prompt

    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    tokenizer = _misread_decoder_tokenizer(offline_dir)
    grammars = grammars_for(tokenizer)
    prompts, schemas = _prompts(spider, questions)
    encoded = [tokenizer(render_generation_prompt(tokenizer, m), add_special_tokens=False)["input_ids"] for m in prompts]
    stops = stop_token_ids(tokenizer, model)
    cache = None
    if prefix_cache:
        shared = SharedPrefixBatch.of(encoded, tokenizer.pad_token_id)
        inputs = {"input_ids": shared.rest_ids, "attention_mask": shared.attention_mask}
        with torch.no_grad():
            cache = prefill_shared_prefixes(model, shared)
    else:
        inputs = tokenizer.pad({"input_ids": encoded}, padding_side="left", return_tensors="pt")
    constraint = grammars.constraint(schemas)
    with torch.no_grad():
        answers = greedy_pruned(
            model, inputs["input_ids"], inputs["attention_mask"], 24, stops, tokenizer.pad_token_id,
            cache=cache, constraint=constraint,
        )
    _assert_answers_follow_the_grammar(grammars, schemas, answers, stops)
    assert constraint.released == set()  # no row needed the fallback


def test_a_failed_matcher_releases_its_row_with_one_warning(spider, offline_dir, caplog):
    """A matcher in its error state allows only the stop token; its row goes on unconstrained instead."""
    import logging

    import llguidance.hf

    from ray_spider.constrained import SchemaGrammars, answer_stop_id

    tokenizer = load_tokenizer(offline_dir)
    grammars = SchemaGrammars(tokenizer, answer_stop_id(tokenizer))
    schema = spider.tables["concert_singer"]
    select, from_ = tokenizer("SELECT FROM", add_special_tokens=False)["input_ids"]
    with caplog.at_level(logging.WARNING, logger="ray_spider.constrained"):
        constraint = grammars.constraint([schema, schema])
        constraint.advance([0, 1], [select, select])
        constraint.advance([0, 1], [from_, from_])  # "SELECT FROM": no result column, rejected
        assert constraint.released == {0, 1}
        assert (constraint.bitmask([0, 1]) == -1).all()  # every token allowed
    # a matcher that errs computing its mask (the misread tokenizer: no token extends "SELECT")
    grammars.tokenizer = llguidance.hf.from_tokenizer(_misread_decoder_tokenizer(offline_dir), eos_token=grammars.stop_id)
    grammars._compiled.clear()
    with caplog.at_level(logging.WARNING, logger="ray_spider.constrained"):
        constraint = grammars.constraint([schema])
        constraint.advance([0], [select])
        assert (constraint.bitmask([0]) == -1).all() and constraint.released == {0}
    assert grammars.released_rows == 3
    assert caplog.text.count("goes on unconstrained") == 1 and "rejected" in caplog.text
