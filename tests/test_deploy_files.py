"""cluster.yaml against the schema Ray ships for cluster configs; the Dockerfile's inputs exist; every sweeps/ YAML loads."""

import json
import re
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml

from ray_spider.config import load_run_config, load_sweep_config

ROOT = Path(__file__).resolve().parents[1]


def test_cluster_yaml_matches_ray_schema():
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    assert config["head_node_type"] in config["available_node_types"]
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


# A path that a doc or command names: a folder of this repository, then a file name or a glob.
NAMED_PATH = re.compile(r"\b((?:sweeps|bench|tools|tests|docs|ray_spider)/[\w./*-]+\.(?:yaml|py|sh|md|json))\b")


def _module_docstrings() -> dict[str, str]:
    import ast

    files = [*(ROOT / "ray_spider").rglob("*.py"), *(ROOT / "bench").glob("*.py"), *(ROOT / "tools").glob("*.py")]
    return {str(path.relative_to(ROOT)): ast.get_docstring(ast.parse(path.read_text())) or "" for path in files}


def _named_paths() -> list[tuple[str, str]]:
    """(where, path) for each repository path named in a module docstring, the README, or a sweeps/ comment."""
    sources = {**_module_docstrings(), "README.md": (ROOT / "README.md").read_text()}
    named = [(where, path) for where, text in sources.items() for path in NAMED_PATH.findall(text)]
    for sweep in sorted((ROOT / "sweeps").glob("*.yaml")):
        comments = "\n".join(line.split("#", 1)[1] for line in sweep.read_text().splitlines() if "#" in line)
        named += [(f"sweeps/{sweep.name}", path) for path in NAMED_PATH.findall(comments)]
        named += [(f"sweeps/{sweep.name}", f"sweeps/{name}") for name in re.findall(r"(?<![/\w])([\w-]+\.yaml)\b", comments)]
    return sorted(set(named))


def test_every_file_a_docstring_or_the_readme_names_exists():
    named = _named_paths()
    assert any(path == "sweeps/sweep_smoke_cpu.yaml" for _, path in named)  # the scan finds names at all
    missing = [f"{where} names {path}" for where, path in named if not list(ROOT.glob(path))]
    assert not missing, "\n".join(missing)


SMOKE_ONLY_KEYS = {"train.max_steps", "train.logging_steps", "data.max_train_examples", "eval.workers"}
TWINS = {"smoke_cpu.yaml": ("qlora_r16.yaml", ""), "sweep_smoke_cpu.yaml": ("sweep_smollm2.yaml", "base.")}


def _leaf_keys(data: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in data.items():
        if isinstance(value, dict) and value and key not in ("search_space", "scheduler"):  # a value: a mapping or null
            keys |= _leaf_keys(value, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


@pytest.mark.parametrize("smoke", sorted(TWINS))
def test_cpu_smoke_twin_differs_from_its_gpu_file_in_values_and_smoke_only_keys(smoke):
    gpu, prefix = TWINS[smoke]
    smoke_keys = _leaf_keys(yaml.safe_load((ROOT / "sweeps" / smoke).read_text()))
    gpu_keys = _leaf_keys(yaml.safe_load((ROOT / "sweeps" / gpu).read_text()))
    assert gpu_keys <= smoke_keys, f"{smoke} lacks {sorted(gpu_keys - smoke_keys)} of {gpu}"
    extra = smoke_keys - gpu_keys
    assert extra == {prefix + key for key in SMOKE_ONLY_KEYS}, f"{smoke} has keys beyond the smoke-only ones: {sorted(extra)}"
