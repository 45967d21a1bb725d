"""cluster.yaml and cluster-onprem.yaml against the schema Ray ships for cluster configs; the Dockerfile's inputs exist; every sweeps/ YAML loads."""

import json
import re
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml

from ray_spider.config import load_run_config, load_sweep_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster-onprem.yaml"])
def test_cluster_yaml_matches_ray_schema(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = yaml.safe_load((ROOT / name).read_text())
    jsonschema.validate(config, schema)
    prepared = prepare_config(config)  # what `ray up` does first (the local provider's node types, defaults)
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])


def test_dockerfile_copies_files_that_exist():
    sources = re.findall(r"^COPY(?:\s+--\S+)*\s+(.+)\s+\S+$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert sources
    for line in sources:
        for source in line.split():
            assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"


@pytest.mark.parametrize("path", sorted((ROOT / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_sweeps_yaml_loads_and_names_its_command(path):
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith("# ray-spider ") and path.name in first_line
    if "search_space" in yaml.safe_load(path.read_text()):
        load_sweep_config(path)
    else:
        load_run_config(path)
