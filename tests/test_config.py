import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vla_steer.config import RecipeError, load_recipe, recipe_from_dict

RECIPES = sorted(Path(__file__).parent.parent.joinpath("recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipes_parse(path):
    recipe = load_recipe(path)
    assert recipe.name


@pytest.mark.parametrize("bad, message", [
    ({"env": {"idd": "metaworld/push-v3"}}, r"unknown field 'env.idd'. Did you mean 'id'\?"),
    ({"trian": {}}, r"unknown field 'trian'. Did you mean 'train'\?"),
    ({"train": {"seed": "one"}}, r"train.seed: expected int, got str 'one'"),
    ({"head": {"bound": True}}, r"head.bound: expected float"),
    ({"algorithm": {"name": "ppo"}}, r"algorithm.name: 'ppo' is not allowed; expected one of 'lpds', 'dsrl_sac', 'dsrl_na'"),
    ({"env": {"id": "metaworld/psh-v3"}}, r"env.id: unknown Meta-World task 'psh-v3'.*did you mean.*metaworld/push-v3"),
    ({"env": {"id": "Hoper-v5"}}, r"env.id: unknown env id 'Hoper-v5'.*Hopper-v5"),
    ({"env": {"reward_mode": "sparse"}}, r"terminate_on_success"),
    ({"env": "push"}, r"env: expected a mapping"),
])
def test_bad_recipes_fail_with_clear_message(bad, message):
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict(bad)


def test_overrides_are_typed():
    recipe = recipe_from_dict({}, ["train.seed=3", "env.max_episode_steps=null", "algorithm.delta=0.5",
                                   "train.log_with=[tensorboard]"])
    assert recipe.train.seed == 3 and recipe.env.max_episode_steps is None and recipe.algorithm.delta == 0.5
    assert recipe.train.log_with == ["tensorboard"]
    recipe = recipe_from_dict({}, ["algorithm.name=dsrl_sac", "algorithm.target_entropy=auto"])
    assert recipe.algorithm.name == "dsrl_sac" and recipe.algorithm.target_entropy == "auto"
    with pytest.raises(RecipeError, match="must look like section.field=value"):
        recipe_from_dict({}, ["train.seed"])


def test_cli_fails_before_any_work(tmp_path):
    out = tmp_path / "run"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"env": {"id": "metaworld/no-such-task-v3"}, "train": {"output_dir": str(out)}}))
    proc = subprocess.run([sys.executable, "-m", "vla_steer", "train", str(recipe)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown Meta-World task 'no-such-task-v3'" in proc.stderr
    assert not out.exists(), "nothing may be written when the recipe is invalid"
    proc = subprocess.run([sys.executable, "-m", "vla_steer", "train", str(recipe), "train.seed=x"], capture_output=True, text=True)
    assert proc.returncode == 2 and "train.seed: expected int" in proc.stderr
