import json

from ray_spider.config import GenerationConfig, RunConfig
from ray_spider.records import best_round, finish_run


def test_best_round_is_highest_dev_ex_not_last():
    rounds = [
        {"step": 50, "dev_ex": 0.10},
        {"step": 100, "dev_ex": 0.31},
        {"step": 150, "train_loss": 0.4},
        {"step": 200, "dev_ex": 0.27},
    ]
    assert best_round(rounds)["step"] == 100


def test_best_round_tie_prefers_earlier_step():
    assert best_round([{"step": 4, "dev_ex": 0.5}, {"step": 2, "dev_ex": 0.5}])["step"] == 2


def test_best_round_without_eval():
    assert best_round([{"step": 1, "train_loss": 1.0}]) is None


def test_best_round_is_one_rule_for_runs_and_trials():
    """The sweep's trials table picks by its objective, from Tune rows where NaN marks no score."""
    rounds = [{"step": 2, "dev_ex": float("nan"), "dev_em": 0.1}, {"step": 4, "dev_ex": 0.2, "dev_em": 0.3}, {"step": 6, "dev_ex": 0.4, "dev_em": 0.3}]
    assert best_round(rounds)["step"] == 6
    assert best_round(rounds, metric="dev_em")["step"] == 4


def test_experiment_uri_is_built_once():
    from ray_spider.storage import experiment_uri, storage, train_runs_path

    assert experiment_uri("s3://bucket/sweeps/", "sweep-a") == "s3://bucket/sweeps/sweep-a"
    filesystem, path = storage(experiment_uri("runs/sweeps", "sweep-a"))
    assert path.endswith("/runs/sweeps/sweep-a") and path.startswith("/")
    assert train_runs_path(path) == path + "/train_runs"


def test_best_round_among_tied_rounds_is_one_whose_checkpoint_was_kept():
    """Three tied rounds, two checkpoints kept: Ray Train deleted the earliest tied one (step 1)."""
    rounds = [{"step": 1, "dev_ex": 0.0}, {"step": 2, "dev_ex": 0.0}, {"step": 3, "dev_ex": 0.0}]
    assert best_round(rounds, kept=lambda row: row["step"] > 1)["step"] == 2
    assert best_round(rounds, kept=lambda row: False)["step"] == 1  # none kept: the rule alone


def test_manifest_and_report_record_the_decoding_that_made_the_scored_answers(tmp_path):
    """The issue's rule: dev EX and predict's decoding settings are recorded in config.yaml and in
    manifest.json / report.md; sampling settings only where candidates are sampled."""
    greedy = RunConfig()
    finish_run(tmp_path, greedy, "v1", None, "ray-spider train")
    assert json.loads((tmp_path / "manifest.json").read_text())["decoding"] == {"max_new_tokens": 256, "constrained": False, "candidates": 1}
    assert "Decoding: greedy, at most 256 new tokens." in (tmp_path / "report.md").read_text()

    voted = RunConfig(generation=GenerationConfig(candidates=16, pick="majority", constrained=True, temperature=0.7, seed=3))
    finish_run(tmp_path, voted, "v1", None, "ray-spider train")
    assert json.loads((tmp_path / "manifest.json").read_text())["decoding"] == {
        "max_new_tokens": 256, "constrained": True, "candidates": 16, "search": "sample", "temperature": 0.7, "seed": 3, "pick": "majority",
    }
    assert (
        "Decoding: 16 candidates (greedy + 15 samples at temperature 0.7, seed 3), picked by majority, schema-constrained"
        in (tmp_path / "report.md").read_text()
    )

    beams = RunConfig(generation=GenerationConfig(candidates=4, search="beam", engine="hf", pick="executes"))
    finish_run(tmp_path, beams, "v1", None, "ray-spider train")
    assert "temperature" not in json.loads((tmp_path / "manifest.json").read_text())["decoding"]
    assert "Decoding: 4 beams, picked by executes" in (tmp_path / "report.md").read_text()
