"""The bench/ shell scripts that drive real `ray-spider` runs: run here on a copy, with runs that fail at once."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WINNER = "docs/results/sweep-h200-attempt4/best-dev972/config.yaml"


def _levers_copy(tmp_path: Path) -> Path:
    """bench/training_levers.sh and its winner config in a folder of their own: its runs land there, not in the repo."""
    (tmp_path / "bench").mkdir()
    shutil.copy(ROOT / "bench/training_levers.sh", tmp_path / "bench")
    (tmp_path / WINNER).parent.mkdir(parents=True)
    shutil.copy(ROOT / WINNER, tmp_path / WINNER)
    return tmp_path


def test_training_levers_runs_every_lever_when_one_fails_and_names_seeded_runs(tmp_path):
    """Two bugs met on an H200: the first failed run ended the script (set -e with `wait -n`) and left the
    others unstarted or unreported, and lever+seedN named its run `lever-...+seedN`, which run names refuse."""
    repo = _levers_copy(tmp_path)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
           "PARALLEL": "1", "EXTRA": "train.epochs=0"}  # every run fails at config validation, in seconds
    done = subprocess.run(["bash", "bench/training_levers.sh", "lr1.5e-3+seed43", "winner"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    for name in ("lr1.5e-3+seed43", "winner"):  # both started and reported, in order
        assert f"== {name}: no run folder" in done.stdout
    seeded = (repo / "runs/levers/lr1.5e-3+seed43.log").read_text()
    assert "train.epochs" in seeded and "name:" not in seeded  # the run name passed; only the bad epochs stopped it


def test_decoding_ablation_labels_the_candidates_each_row_decoded():
    """A voted row with `--set generation.candidates=12` decoded 12 candidates (the later override wins)
    but was labelled with --candidates' k=16 (H200, 2026-12-03): the label comes from the row's summary."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import decoding_ablation
    finally:
        sys.path.remove(str(ROOT / "bench"))
    levels = {level: {"ex": 0.5, "n": 2} for level in decoding_ablation.LEVELS}
    summary = {"n": 8, "ex": 0.5, "em": 0.25, "by_hardness": levels, "error_types": {}, "generate_s": 1.0, "score_s": 0.1}
    text = decoding_ablation.table({"greedy": {**summary, "generation": {"candidates": 1}},
                                    "voted_rows": {**summary, "generation": {"candidates": 12}}})
    assert "| greedy | 8 |" in text and "| voted_rows (k=12) | 8 |" in text
