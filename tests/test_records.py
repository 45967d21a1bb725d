from ray_spider.records import best_round


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
