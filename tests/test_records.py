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
