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


# vCPUs, GPUs and GB per GPU of the AWS instance types cluster.yaml's GPU worker may name (AWS's published sizes)
GPU_INSTANCES = {"g6e.xlarge": (4, 1, 48), "g6e.2xlarge": (8, 1, 48), "g6.xlarge": (4, 1, 24), "g6.2xlarge": (8, 1, 24), "g5.2xlarge": (8, 1, 24)}


def test_cluster_gpu_worker_fits_a_trial_of_the_8b_sweep():
    from ray_spider.config import build_run_config
    from ray_spider.memory import ModelShape, plan_memory

    node = yaml.safe_load((ROOT / "cluster.yaml").read_text())["available_node_types"]["gpu_worker"]["node_config"]
    cpus, gpus, gpu_gb = GPU_INSTANCES[node["InstanceType"]]
    sweep = load_sweep_config(ROOT / "sweeps" / "sweep_llama31_8b.yaml")
    resources = sweep.resources
    assert resources.workers * resources.cpus_per_worker <= cpus and resources.workers * resources.gpus_per_worker <= gpus
    run = build_run_config(sweep.base)
    llama_31_8b = ModelShape(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, vocab=128256)
    plan = plan_memory(gpu_gb, llama_31_8b, run.train.max_length, run.train.effective_batch_size // resources.workers,
                       lora_rank=max(sweep.search_space["lora.r"].choice), max_new_tokens=run.generation.max_new_tokens)
    assert plan.estimate_train_gb <= gpu_gb and plan.estimate_dev_gb <= gpu_gb
