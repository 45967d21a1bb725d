"""Candidates for execution-guided selection: sampled rows in the pruned engine, and the pick rules,
on real Spider databases and a real (tiny, random) Llama."""

from __future__ import annotations

import math

import pytest
import torch

from ray_spider.config import GenerationConfig, PromptConfig
from ray_spider.inference import generate, generate_candidates, next_tokens
from ray_spider.model import load_tokenizer
from ray_spider.selection import pick_answers, pick_candidate


def test_next_tokens_draws_from_the_tempered_softmax():
    rows = 40_000
    logits = torch.tensor([0.0, math.log(3.0), -math.inf, -1.0]).repeat(rows, 1)
    logits[:, 3] = -math.inf  # two masked tokens
    torch.manual_seed(0)
    for temperature, expected in ((1.0, 0.75), (0.5, 0.9)):  # p(1) = 3^(1/T) / (1 + 3^(1/T))
        drawn = next_tokens(logits, torch.full((rows,), 1 / temperature))
        assert set(drawn.tolist()) <= {0, 1}  # never a masked token
        assert abs(drawn.float().mean().item() - expected) < 0.01
    greedy_rows = torch.zeros(rows)
    assert torch.equal(next_tokens(logits, greedy_rows), torch.ones(rows, dtype=torch.long))
    assert torch.equal(next_tokens(logits, None), torch.ones(rows, dtype=torch.long))


@pytest.fixture(scope="module")
def tiny_model(tiny_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_dir), load_tokenizer(tiny_dir)


@pytest.fixture(scope="module")
def prompts(spider):
    from ray_spider.prompt import Prompter

    prompter = Prompter(spider, PromptConfig())
    dev = spider.examples("dev")
    return [prompter.conversation(dev[i].db_id, dev[i].question) for i in (0, 1, 200, 400)]


@pytest.mark.parametrize("prefix_cache", [False, True])
def test_first_candidate_is_the_greedy_answer_and_samples_follow_the_seed(tiny_model, prompts, prefix_cache):
    model, tokenizer = tiny_model
    greedy = generate(model, tokenizer, prompts, GenerationConfig(max_new_tokens=12, prefix_cache=prefix_cache), progress=False)
    cfg = GenerationConfig(max_new_tokens=12, candidates=3, temperature=2.0, prefix_cache=prefix_cache, batch_size=6)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    candidates = generate_candidates(model, tokenizer, prompts, cfg, progress=False)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random state is left as it was
    assert [answers[0] for answers in candidates] == greedy
    assert all(len(answers) == 3 for answers in candidates)
    assert any(answer != answers[0] for answers in candidates for answer in answers[1:])  # samples, not copies of greedy
    assert generate_candidates(model, tokenizer, prompts, cfg, progress=False) == candidates
    other_seed = generate_candidates(model, tokenizer, prompts, cfg.model_copy(update={"seed": 1}), progress=False)
    assert [answers[0] for answers in other_seed] == greedy and other_seed != candidates


def test_majority_pick_takes_the_result_most_candidates_share(spider):
    db_path = spider.db_path("concert_singer")
    candidates = [
        "SELECT nme FROM singer",  # does not run: no vote
        "SELECT name FROM singer",  # one vote
        "SELECT count(*) FROM singer",  # two votes, with the next (same rows, other SQL)
        "SELECT count(singer_id) FROM singer",
        "SELECT count(*) FROM singer",  # the same SQL again: a third vote, run once
    ]
    assert pick_candidate(candidates, db_path, "majority") == (candidates[2], 2)
    assert pick_candidate(candidates[:3], db_path, "majority") == (candidates[1], 1)  # a tie: the better-ranked result
    rows_in_other_order = ["SELECT name FROM singer ORDER BY name", "SELECT age FROM singer", "SELECT name FROM singer ORDER BY age"]
    assert pick_candidate(rows_in_other_order, db_path, "majority")[1] == 0  # the same bag of rows in any order
    assert pick_candidate(["SELECT nme FROM singer", "no sql"], db_path, "majority") == ("SELECT nme FROM singer", 0)
    with pytest.raises(ValueError, match="unknown pick rule 'vote'; valid: executes, returns_rows, majority, majority_rows"):
        pick_candidate(candidates, db_path, "vote")


def test_majority_rows_pick_keeps_queries_that_return_nothing_from_voting_as_one_bloc(spider):
    """Wrong filters all return the one empty result: under majority they outvote a right answer."""
    db_path = spider.db_path("concert_singer")
    candidates = [
        "SELECT name FROM singer WHERE country = 'Atlantis'",  # nothing, with the next two: 3 votes for the empty result
        "SELECT name FROM singer WHERE age > 500",
        "SELECT name FROM singer WHERE age < 0",
        "SELECT name FROM singer WHERE country = 'France'",  # rows, 2 votes
        "SELECT name FROM singer WHERE 'France' = country",
        "SELECT name FROM singer WHERE age > 40",  # other rows, 1 vote
    ]
    assert pick_candidate(candidates, db_path, "majority") == (candidates[0], 0)
    assert pick_candidate(candidates, db_path, "majority_rows") == (candidates[3], 3)
    nothing_returns_rows = [candidates[1], "SELECT nme FROM singer", candidates[0], candidates[2]]
    assert pick_candidate(nothing_returns_rows, db_path, "majority_rows") == (candidates[1], 0)  # then among all that run
    assert pick_candidate(["SELECT nme FROM singer", "no sql"], db_path, "majority_rows") == ("SELECT nme FROM singer", 0)


def test_pick_answers_keeps_the_question_order_across_processes(spider):
    singer, pets = spider.db_path("concert_singer"), spider.db_path("pets_1")
    candidates = [["SELECT nme FROM singer", "SELECT name FROM singer"], ["SELECT count(*) FROM pets"], ["SELEC 1", "SELECT 2"]] * 4
    db_paths = [singer, pets, singer] * 4
    expected = [pick_candidate(answers, db, "executes")[0] for answers, db in zip(candidates, db_paths)]
    assert pick_answers(candidates, db_paths, "executes", workers=3) == expected
    assert pick_answers(candidates, db_paths, "executes", workers=1) == expected
    assert expected[:3] == ["SELECT name FROM singer", "SELECT count(*) FROM pets", "SELECT 2"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_sampled_rows_in_cuda_graphs_keep_greedy_first_and_draw_anew_each_replay(tiny_dir, prompts):
    from ray_spider.config import ModelConfig
    from ray_spider.model import load_for_inference

    model, tokenizer = load_for_inference(ModelConfig(name=tiny_dir), None, merge=True, device="cuda:0")
    greedy = generate(model, tokenizer, prompts, GenerationConfig(max_new_tokens=24, cuda_graph_rows=32), progress=False)
    cfg = GenerationConfig(max_new_tokens=24, candidates=4, temperature=2.0, cuda_graph_rows=32)  # 16 rows: the graph from step 1
    candidates = generate_candidates(model, tokenizer, prompts, cfg, progress=False)
    assert [answers[0] for answers in candidates] == greedy
    assert len({answer for answers in candidates for answer in answers[1:]}) > len(prompts)
    assert generate_candidates(model, tokenizer, prompts, cfg, progress=False) == candidates


def test_predictions_record_every_candidate_and_the_pick_is_one_of_them(spider, tiny_model):
    from ray_spider.config import EvalConfig
    from ray_spider.predict import predict_and_score
    from ray_spider.prompt import Prompter

    model, tokenizer = tiny_model
    prompter = Prompter(spider, PromptConfig())
    examples = spider.examples("dev")[:3]
    cfg = GenerationConfig(max_new_tokens=8, candidates=3, temperature=2.0, constrained=True, pick="majority")
    records = predict_and_score(model, tokenizer, prompter, examples, cfg, EvalConfig(workers=1), progress=False).records
    assert [len(record["candidates"]) for record in records] == [3, 3, 3]
    assert all(record["raw_output"] in record["candidates"] for record in records)
    greedy = predict_and_score(model, tokenizer, prompter, examples, GenerationConfig(max_new_tokens=8), EvalConfig(workers=1), progress=False)
    assert "candidates" not in greedy.records[0]
