"""The bench/ shell scripts that drive real `ray-spider` runs: run here on a copy, with runs that fail at once."""
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


def test_decoding_ablation_keeps_one_candidate_rows_at_one_candidate():
    """`--set generation.candidates=3` turned the greedy row into a 3-candidate vote, still labelled greedy."""
    import argparse

    decoding_ablation = _decoding_ablation()
    args = argparse.Namespace(candidates=2, limit=2, batch_size=None, set=["generation.candidates=3", "generation.temperature=0.8", "eval.workers=1"])
    assert decoding_ablation.row_overrides("greedy", args) == ["data.dev_subset=2", "eval.workers=1"]
    assert decoding_ablation.row_overrides("voted", args)[-3:] == ["generation.candidates=3", "generation.temperature=0.8", "eval.workers=1"]


def _decoding_ablation():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import decoding_ablation
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return decoding_ablation


def test_decoding_ablation_labels_the_candidates_each_row_decoded():
    """A voted row with `--set generation.candidates=12` decoded 12 candidates (the later override wins)
    but was labelled with --candidates' k=16 (H200, 2026-12-03): the label comes from the row's summary."""
    decoding_ablation = _decoding_ablation()
    levels = {level: {"ex": 0.5, "n": 2} for level in decoding_ablation.LEVELS}
    summary = {"n": 8, "ex": 0.5, "em": 0.25, "by_hardness": levels, "error_types": {}, "generate_s": 1.0, "score_s": 0.1}
    text = decoding_ablation.table({"greedy": {**summary, "generation": {"candidates": 1}},
                                    "voted_rows": {**summary, "generation": {"candidates": 12}}})
    assert "| greedy | 8 |" in text and "| voted_rows (k=12) | 8 |" in text



def test_decoding_ablation_shows_no_ex_for_a_hardness_level_without_questions():
    """A level with no question read '0.000 (0)', a plausible wrong score; `predict`'s table shows '-'."""
    decoding_ablation = _decoding_ablation()
    levels = {level: {"ex": 0.5, "n": 2} for level in decoding_ablation.LEVELS} | {"extra": {"ex": 0.0, "n": 0}}
    summary = {"n": 6, "ex": 0.5, "em": 0.25, "by_hardness": levels, "error_types": {}, "generation": {"candidates": 1}}
    text = decoding_ablation.table({"greedy": summary})
    assert "| - (0) |" in text and "0.000 (0)" not in text


def test_llama8b_script_refuses_unknown_parts_and_reports_a_failed_part(tmp_path):
    """A misspelled part ran nothing and exited 0; a part whose bench failed printed an empty RESULT and exited 0."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "DRY": "1", "OUT": str(tmp_path / "out"),
           "MODEL_DIR": str(tmp_path / "no-model"), "RUNS": str(tmp_path / "runs")}

    def script(*parts: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "bench/llama8b.sh", *parts], cwd=ROOT, env={**env, **extra}, capture_output=True, text=True, timeout=300)

    unknown = script("make", "nosuchpart")
    assert unknown.returncode == 2 and "unknown part 'nosuchpart'; valid: all bench" in unknown.stderr
    assert not (tmp_path / "no-model").exists()  # checked before `make` ran
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()  # nor its folders made
    assert script("benchpf", PF_ROWS="3").returncode == 2  # 3 rows do not divide the effective batch of 2
    for warmup in ("0", "1 --steps 5"):  # the second was handed on to profile_train as two options
        refused = script("profile", PROFILE_WARMUP=warmup)
        assert refused.returncode == 2 and f"PROFILE_WARMUP={warmup} must be" in refused.stderr
    assert not (tmp_path / "out").exists()
    failed = script("benchpf")  # no model folder: the bench fails
    assert failed.returncode == 1 and "RESULT bench pf: FAILED" in failed.stdout, failed.stdout + failed.stderr
    profiled = script("profile")  # the same for the profile part
    assert profiled.returncode == 1 and "RESULT profile: FAILED" in profiled.stdout, profiled.stdout + profiled.stderr


def _profile_train(tiny_dir, *args: str) -> subprocess.CompletedProcess:
    overrides = [f"model.name={tiny_dir}", "train.per_device_batch_size=1", "train.effective_batch_size=2", "train.cpus_per_worker=1"]
    return subprocess.run([sys.executable, "bench/profile_train.py", "sweeps/smoke_cpu.yaml", *overrides, *args], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)


def test_profile_train_profiles_the_steps_after_warm_up(tiny_dir, tmp_path):
    """The worker's own setup and trainer, one warm-up step, two profiled: time and tokens per step, the top ops, the trace."""
    done = _profile_train(tiny_dir, "data.max_train_examples=16", "--warmup", "1", "--steps", "2", "--trace", str(tmp_path / "trace.json"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "profiled 2 optimizer step(s):" in done.stdout and "non-pad tokens per step" in done.stdout
    assert re.search(r"^warm-up steps, s each \(not profiled\): [0-9.]+$", done.stdout, re.M)  # one warm-up step
    assert "no GPU: CPU ops only" in done.stdout and "aten::" in done.stdout
    assert (tmp_path / "trace.json").is_file() and f"wrote {tmp_path / 'trace.json'}" in done.stdout


def test_profile_train_refuses_no_steps(tiny_dir):
    refused = _profile_train(tiny_dir, "--steps", "0")
    assert refused.returncode == 2 and "--warmup 2 and --steps 0: both must be at least 1" in refused.stderr


def test_profile_train_names_a_mistake_in_one_line_before_training(tiny_dir, tmp_path):
    """As `ray-spider train`: one error and exit 2 for a bad override, a model folder without weights
    and flex_attention on CPU (these two were tracebacks, flex's after the model loaded); a trace into a
    missing folder is refused up front (it printed 'wrote' with no file written)."""
    done = _profile_train(tiny_dir, "train.epochs=0")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "error: invalid override" in done.stderr and "train.epochs: Input should be greater than 0" in done.stderr
    (tmp_path / "config-only").mkdir()
    (tmp_path / "config-only/config.json").write_text("{}")
    for override, said in ((f"model.name={tmp_path / 'config-only'}", "model.name"),
                           ("model.attn_implementation=flex_attention", "FlexAttention has no backward on CPU")):
        done = _profile_train(tiny_dir, override)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert "error: " in done.stderr and said in done.stderr
    done = _profile_train(tiny_dir, "--trace", str(tmp_path / "nowhere/trace.json"))
    assert done.returncode == 2 and "does not exist" in done.stderr


def test_bench_train_reads_a_step_window_from_each_sides_clock():
    """The warm and first-30-steps rates are differences of the clocks' rows: tokens and seconds so far."""
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_train import step_windows, window_rate

    clock = [[1, 100.0, 10.0], [2, 200.0, 11.0], [3, 300.0, 12.0], [4, 400.0, 13.0]]
    assert window_rate(clock, 0, 4) == 400 / 13  # from the start
    assert window_rate(clock, 2, 4) == 100.0  # after the first two steps: 200 tokens in 2 s
    assert window_rate(clock, 2, 5) is None and window_rate([[1, None, 1.0]], 0, 1) is None  # a step not clocked
    assert step_windows(100, 2) == [("steps 1-30 of 100", 0, 30), ("steps 3-100 (warm)", 2, 100)]
    assert step_windows(30, 0) == [] and step_windows(2, 2) == [] and step_windows(3, 2) == [("step 3 (warm)", 2, 3)]


def test_bench_train_names_a_mistake_in_one_line_before_either_side_starts(tmp_path):
    """A bad --model or --ray-set was found only by the Ray side's child run, after Ray had started: exit 1
    and the child's whole command. Now one error line and exit 2 before anything runs."""
    for args, said in ((["--model", str(tmp_path / "nowhere")], "is not a model folder"), (["--ray-set", "train.bogus=1"], "train.bogus: unknown key")):
        done = subprocess.run([sys.executable, "bench/bench_train.py", "--steps", "1", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and said in done.stderr and "ray-spider train failed" not in done.stderr, done.stderr[-2000:]


@pytest.mark.slow
def test_bench_train_stopped_by_ctrl_c_says_so_and_exits_130():
    """Ctrl-C reaches the whole process group: a side's child stopped by it made the bench print that side
    as failed (with its log tail) and exit 1. Now the bench stops: one line, exit 130, no traceback."""
    bench = subprocess.Popen([sys.executable, "bench/bench_train.py", "--steps", "1", "--warmup-steps", "1"], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert bench.stdout.readline().startswith("ray-spider train ")  # printed before the untimed plain warm-up starts
    time.sleep(10)  # the warm-up child is loading the model
    os.killpg(bench.pid, signal.SIGINT)
    out, err = bench.communicate(timeout=120)
    assert bench.returncode == 130, out[-2000:] + err[-2000:]
    assert "interrupted: nothing was written" in err and "Traceback" not in err and "failed" not in err, err[-2000:]
