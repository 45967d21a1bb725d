"""The Ray Train run's placement group, named in every round its workers report, so that a sweep can free it.

A Train run inside a Tune trial holds its workers' CPU and GPU share in a placement group that
outlives the trial when Tune stops it. Each round train.py reports ``PLACEMENT_GROUP_METRIC`` (this
worker's ``worker_placement_group_id``); tune.py's ReleaseStoppedTrainRuns reads it from the trial's
last result and removes the group. Apart from train.py so that the clean-up, and a Train loop
that reports like ours (tests), do not import torch, transformers and TRL for a name and an id.

    ray.train.report({**metrics, PLACEMENT_GROUP_METRIC: worker_placement_group_id()})
"""

from __future__ import annotations

PLACEMENT_GROUP_METRIC = "placement_group"  # reported each round: a sweep frees it when Tune stops the trial


def worker_placement_group_id() -> str | None:
    """Hex id of the placement group holding this Ray Train worker's resources (None outside Ray)."""
    import ray

    group = ray.util.get_current_placement_group() if ray.is_initialized() else None
    return group.id.hex() if group else None
