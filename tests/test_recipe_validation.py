"""Bad recipes fail before any work, naming the field (or file) and what is allowed.

Every numeric field declares its range next to its definition (``vla_steer.fields.bounded``); the recipe loader
enforces them, and NaN / inf are never a setting. Malformed files give a message, not a traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vla_steer.config import RecipeError, load_recipe

QUICKSTART = Path(__file__).parents[1] / "recipes" / "quickstart.yaml"

OUT_OF_RANGE = [  # override -> what the message must say
    ("algorithm.batch_size=0", "algorithm.batch_size=0 must be >= 1"),
    ("base.num_inference_steps=0", "base.num_inference_steps=0 must be >= 1"),
    ("demos.num_episodes=0", "demos.num_episodes=0 must be >= 1"),
    ("train.eval_num_envs=0", "train.eval_num_envs=0 must be >= 1"),
    ("train.entropy_states=0", "train.entropy_states=0 must be >= 1"),
    ("train.entropy_draws=3", "train.entropy_draws=3 must be >= 4"),
    ("head.hidden_dim=0", "head.hidden_dim=0 must be >= 1"),
    ("head.num_layers=100000", "head.num_layers=100000 must be >= 1 and <= 64"),
    ("head.num_layers=-1", "head.num_layers=-1 must be >= 1"),
    ("head.bound=.inf", "head.bound=inf must be a finite number"),
    ("train.buffer_size=0", "train.buffer_size=0 must be >= 1"),
    ("base.horizon=0", "base.horizon=0 must be >= 1"),
    ("train.torch_threads=-1", "train.torch_threads=-1 must be >= 1"),
    ("env.max_episode_steps=0", "env.max_episode_steps=0 must be >= 1"),
    ("algorithm.actor_lr=-1", "algorithm.actor_lr=-1.0 must be > 0"),
    ("train.warmup_env_steps=-1", "train.warmup_env_steps=-1 must be >= 0"),
    ("train.eval_every=0", "train.eval_every=0 must be >= 1"),
    ("train.checkpoint_every=0", "train.checkpoint_every=0 must be >= 1"),
    ("algorithm.delta=.inf", "algorithm.delta=inf must be a finite number"),
    ("algorithm.delta=.nan", "algorithm.delta=nan must be a finite number"),
    ("algorithm.tau=5", "algorithm.tau=5.0 must be > 0 and <= 1"),
    ("algorithm.gamma=0", "algorithm.gamma=0.0 must be > 0 and <= 1"),
    ("offline.fraction=1.5", "offline.fraction=1.5 must be >= 0 and <= 1"),
    ("train.eval_best_of_k=1000000000", "train.eval_best_of_k=1000000000 must be >= 1 and <= 1024"),
]


@pytest.mark.parametrize("override, message", OUT_OF_RANGE, ids=[o for o, _ in OUT_OF_RANGE])
def test_out_of_range_values_are_refused_naming_the_field_and_range(override, message):
    with pytest.raises(RecipeError) as info:
        load_recipe(QUICKSTART, [override])
    assert message in str(info.value)


def test_a_sac_recipe_is_checked_against_its_own_fields():
    with pytest.raises(RecipeError, match=r"algorithm.init_temperature=0.0 must be > 0"):
        load_recipe(QUICKSTART, ["algorithm={name: dsrl_sac, init_temperature: 0}"])


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"\xff\xfe\x00b\x00i\x00n", "not UTF-8 text"),
    (b"- env\n- train\n", "a recipe is a mapping of sections"),
    (b"42\n", "a recipe is a mapping of sections"),
    (b"env:\n  id: metaworld/push-v3\ntrain:\n  seed: 1\n  seed: 2\n", "duplicate key 'seed'"),
    (b"train: !!python/object/apply:os.system [echo hi]\n", "not valid YAML"),
    (b"env: [unclosed\n", "not valid YAML"),
], ids=["empty", "binary", "top-level-list", "top-level-scalar", "duplicate-key", "python-tag", "broken-yaml"])
def test_malformed_recipe_files_give_a_message_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_an_override_with_a_python_tag_is_refused_without_constructing_anything():
    with pytest.raises(RecipeError, match=r"override 'train.seed=!!python/object/apply:os.system \[echo\]'.*not plain YAML"):
        load_recipe(QUICKSTART, ["train.seed=!!python/object/apply:os.system [echo]"])


def test_a_head_config_with_a_huge_layer_count_is_refused_by_the_same_declared_range():
    from vla_steer.hub.schema import validate_head_config  # the head loader's schema reads the same HeadConfig

    with pytest.raises(ValueError, match=r"head.num_layers=100000 must be >= 1 and <= 64"):
        validate_head_config({"algorithm": "lpds", "head": {"num_layers": 100000, "hidden_dim": 1}, "noise_shape": [4, 4],
                              "latent_shape": [4, 4], "feature_dim": 8})


@pytest.mark.parametrize("section, values, message", [
    ("train", {"buffer_size": 0}, "train.buffer_size=0 must be >= 1"),
    ("algorithm", {"tau": 5.0}, "algorithm.tau=5.0 must be > 0 and <= 1"),
    ("head", {"bound": float("inf")}, "head.bound=inf must be a finite number"),
], ids=["train", "algorithm", "head"])
def test_the_trainer_refuses_a_recipe_built_in_code_before_any_work(tmp_path, section, values, message):
    import dataclasses

    from vla_steer.training import SteeringTrainer

    recipe = load_recipe(QUICKSTART, [f"train.output_dir={tmp_path / 'run'}", f"train.cache_dir={tmp_path / 'cache'}"])
    setattr(recipe, section, dataclasses.replace(getattr(recipe, section), **values))  # no parser involved
    with pytest.raises(RecipeError, match=message):
        SteeringTrainer(recipe)
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_the_cli_refuses_a_bad_override_with_a_message_and_no_output(tmp_path, capsys):
    from vla_steer.cli import main

    assert main(["train", str(QUICKSTART), "algorithm.batch_size=0", f"train.output_dir={tmp_path / 'run'}"]) == 2
    assert "algorithm.batch_size=0 must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
