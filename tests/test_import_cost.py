"""What light paths import: transformers and train.py cost seconds of CPU each time a process imports them."""

from __future__ import annotations

import json
import subprocess
import sys

# A fresh interpreter: this test process may have imported anything already.
PROBE = """
import json, sys
from types import SimpleNamespace

import ray_spider.tune
at_import = {name: name in sys.modules for name in ("transformers", "ray_spider.train")}
# A trial's end-of-trial clean-up, for a trial that reported no placement group (nothing to release).
ray_spider.tune.ReleaseStoppedTrainRuns().on_trial_complete(0, [], SimpleNamespace(last_result={}))
print(json.dumps({"at_import": at_import, "after_cleanup": "ray_spider.train" in sys.modules}))
"""


def test_tune_and_its_trial_cleanup_import_neither_transformers_nor_train():
    """`trials` and `best` import tune.py; every trial's end runs ReleaseStoppedTrainRuns. Neither needs
    transformers (progress.py's callback) or train.py (torch, transformers, TRL: 5-12 s of CPU)."""
    probe = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr[-3000:]
    loaded = json.loads(probe.stdout.splitlines()[-1])
    assert loaded["at_import"] == {"transformers": False, "ray_spider.train": False}
    assert loaded["after_cleanup"] is False
