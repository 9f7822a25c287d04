"""Per-algorithm configs: the recipe's ``algorithm`` section parses into the class its ``name`` picks, holding that
method's fields only; the algorithms refuse another method's config; recipes parse without torch."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate import Accelerator

from vla_steer.algorithms import (ALGORITHM_CONFIGS, DSRLNAConfig, DSRLSACConfig, LPDSConfig, algorithm_config,
                                  build_algorithm)
from vla_steer.config import HeadConfig, RecipeError, load_recipe, recipe_from_dict

REPO = Path(__file__).resolve().parent.parent
COMMON = ["name", "gamma", "discount_mode", "batch_size", "utd", "actor_lr", "critic_lr", "tau", "backup",
          "actor_reduction"]
OWN = {
    "lpds": ["delta", "dual_lr", "init_multiplier", "normalize_q", "critic", "distill_steps"],
    "dsrl_sac": ["target_entropy", "init_temperature", "temperature_lr", "backup_entropy"],
    "dsrl_na": ["target_entropy", "init_temperature", "temperature_lr", "backup_entropy", "distill_steps"],
}


def test_each_method_has_the_common_fields_and_only_its_own():
    assert list(ALGORITHM_CONFIGS) == ["lpds", "dsrl_sac", "dsrl_na"]
    for name, cls in ALGORITHM_CONFIGS.items():
        assert [f.name for f in dataclasses.fields(cls)] == COMMON + OWN[name], name
        assert cls().name == name
    assert {"lpds": LPDSConfig, "dsrl_sac": DSRLSACConfig, "dsrl_na": DSRLNAConfig} == ALGORITHM_CONFIGS


@pytest.mark.parametrize("name", ["lpds", "dsrl_sac", "dsrl_na"])
def test_the_name_picks_the_class_and_the_recipe_round_trips(name):
    recipe = recipe_from_dict({"algorithm": {"name": name, "gamma": 0.9, "utd": 2}})
    assert type(recipe.algorithm) is ALGORITHM_CONFIGS[name]
    assert (recipe.algorithm.name, recipe.algorithm.gamma, recipe.algorithm.utd) == (name, 0.9, 2)
    assert list(dataclasses.asdict(recipe.algorithm)) == COMMON + OWN[name]
    again = recipe_from_dict(json.loads(json.dumps(recipe.to_dict())))
    assert again == recipe and type(again.algorithm) is type(recipe.algorithm)


def test_lpds_is_the_default():
    assert type(recipe_from_dict({}).algorithm) is LPDSConfig
    assert type(recipe_from_dict({"algorithm": {"delta": 1.0}}).algorithm) is LPDSConfig


@pytest.mark.parametrize("section, message", [
    ({"name": "dsrl_sac", "delta": 0.5},
     r"unknown field 'algorithm.delta' for dsrl_sac \(a field of lpds\)\. Allowed fields for dsrl_sac: name, gamma, .*"
     r"actor_reduction, target_entropy, init_temperature, temperature_lr, backup_entropy$"),
    ({"name": "lpds", "target_entropy": "auto"}, r"unknown field 'algorithm.target_entropy' for lpds \(a field of "
                                                 r"dsrl_sac and dsrl_na\)\. Allowed fields for lpds: .*delta"),
    ({"name": "dsrl_sac", "distill_steps": 2}, r"'algorithm.distill_steps' for dsrl_sac \(a field of lpds and dsrl_na\)"),
    ({"name": "lpds", "delt": 0.5}, r"unknown field 'algorithm.delt' for lpds\. Did you mean 'delta'\?"),
    ({"name": "ppo"}, r"algorithm.name: 'ppo' is not allowed; expected one of 'lpds', 'dsrl_sac', 'dsrl_na'"),
    ({"name": ["lpds"]}, r"algorithm.name: \['lpds'\] is not allowed"),
    ({"name": "lpds", "critic": "both"}, r"algorithm.critic: 'both' is not allowed; expected one of 'action', 'latent'"),
    ({"name": "lpds", "delta": 0.0}, r"algorithm.delta=0.0 must be > 0"),
    ({"name": "lpds", "gamma": 1.5}, r"algorithm.gamma=1.5 must be > 0 and <= 1"),
    ({"name": "dsrl_na", "distill_steps": 0}, r"algorithm.distill_steps=0 must be >= 1"),
    ({"name": "dsrl_sac", "init_temperature": 0.0}, r"algorithm.init_temperature=0.0 must be > 0"),
    ({"name": "dsrl_sac", "utd": 0}, r"algorithm.utd=0 must be >= 1"),
])
def test_bad_algorithm_sections_name_the_fields_of_that_algorithm(section, message):
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict({"algorithm": section})


def test_switching_algorithm_by_override_reports_the_left_over_field():
    with pytest.raises(RecipeError, match=r"'algorithm.delta' for dsrl_sac \(a field of lpds\)"):
        recipe_from_dict({"algorithm": {"name": "lpds", "delta": 1.0}}, ["algorithm.name=dsrl_sac"])
    recipe = recipe_from_dict({"algorithm": {"name": "lpds", "delta": 1.0}}, ["algorithm={name: dsrl_sac, utd: 3}"])
    assert type(recipe.algorithm) is DSRLSACConfig and recipe.algorithm.utd == 3


def test_shipped_recipes_set_only_their_algorithms_fields():
    for path in sorted((REPO / "recipes").glob("*.yaml")):
        recipe = load_recipe(path)
        assert type(recipe.algorithm) is ALGORITHM_CONFIGS[recipe.algorithm.name], path


def test_recipes_saved_with_the_flat_config_still_load():
    """A run's recipe.json / results.json written before per-algorithm configs holds every method's fields."""
    for path in sorted((REPO / "benchmarks" / "results").glob("*_seed0.json")):
        data = json.loads(path.read_text())
        section = (data.get("config") or {}).get("algorithm")
        if not section or "delta" not in section or "target_entropy" not in section:
            continue
        algorithm = recipe_from_dict({"algorithm": section}).algorithm
        assert type(algorithm) is ALGORITHM_CONFIGS[section["name"]]
        assert all(getattr(algorithm, k) == section[k] for k in dataclasses.asdict(algorithm)), path
        break
    else:
        pytest.skip("no flat algorithm section among benchmarks/results")


def test_algorithm_config_builds_by_name_and_the_algorithms_refuse_another_methods_config():
    from vla_steer.adapters import LatentLayout, NativePolicyAdapter
    from vla_steer.policies import ChunkPolicyConfig, build_chunk_policy

    assert algorithm_config("lpds", critic="latent") == LPDSConfig(critic="latent")
    with pytest.raises(TypeError, match=r"DSRLSACConfig \(dsrl_sac\) has no field\(s\) \['delta'\]"):
        algorithm_config("dsrl_sac", delta=1.0)
    policy = build_chunk_policy(ChunkPolicyConfig(type="flow", obs_dim=3, action_dim=2, horizon=2, n_action_steps=2,
                                                  hidden_dim=8, num_layers=1, num_inference_steps=2))
    adapter = NativePolicyAdapter(policy)
    head, layout, accelerator = HeadConfig(hidden_dim=8, num_layers=1), LatentLayout("full", adapter.noise_shape), Accelerator(cpu=True)
    for name in ALGORITHM_CONFIGS:
        assert build_algorithm(algorithm_config(name), head, adapter, layout, accelerator).name == name
    with pytest.raises(TypeError, match="LPDS needs a LPDSConfig, got a DSRLSACConfig"):
        build_algorithm(dataclasses.replace(DSRLSACConfig(), name="lpds"), head, adapter, layout, accelerator)


def test_recipes_on_built_in_envs_parse_without_importing_torch():
    """Recipes on built-in envs parse light; a LeRobot env (env.type) is checked against LeRobot's own config class,
    which imports LeRobot."""
    code = ("import sys, glob, yaml; from vla_steer.config import load_recipe; "
            "[load_recipe(p) for p in glob.glob('recipes/*.yaml') if 'type' not in yaml.safe_load(open(p))['env']]; "
            "heavy = [m for m in ('torch', 'accelerate', 'lerobot') if m in sys.modules]; print(heavy); "
            "sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr



def test_a_config_for_another_method_keeps_only_the_shared_fields():
    from vla_steer.algorithms.configs import config_for_method

    lpds = algorithm_config("lpds", batch_size=64, delta=0.7, critic="latent")
    assert config_for_method(lpds, "lpds") == lpds  # its own method: every value carried
    sac = config_for_method(lpds, "dsrl_sac", utd=3)
    assert isinstance(sac, DSRLSACConfig) and sac.batch_size == 64 and sac.utd == 3
    assert not hasattr(sac, "delta")
