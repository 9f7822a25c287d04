"""Resuming never goes on with something other than what the checkpoint holds: a recipe that changes the data or the
networks is refused naming the fields, and a damaged checkpoint file is an error naming that file."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import tiny_recipe_dict

from vla_steer.config import recipe_from_dict
from vla_steer.training import SteeringTrainer
from vla_steer.training.checkpoint import CheckpointError


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny run that wrote its checkpoint; each test resumes a copy of it."""
    cfg = tiny_recipe_dict(tmp_path_factory.mktemp("resume"), train={"total_env_steps": 80, "checkpoint_every": 40})
    SteeringTrainer(recipe_from_dict(cfg)).run()
    return cfg


@pytest.fixture
def run_copy(finished_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run["train"]["output_dir"], out)
    return {**finished_run, "train": {**finished_run["train"], "output_dir": str(out)}}


def _with(cfg: dict, section: str, **values) -> dict:
    return {**cfg, section: {**cfg[section], **values}}


@pytest.mark.parametrize("section, field, value, shown", [
    ("head", "hidden_dim", 64, "head.hidden_dim: 32 -> 64"),
    ("env", "reward_scale", 2.0, "env.reward_scale: 1.0 -> 2.0"),
    ("algorithm", "gamma", 0.9, "algorithm.gamma: 0.99 -> 0.9"),
    ("train", "seed", 3, "train.seed: 0 -> 3"),
    ("base", "hidden_dim", 16, "base.hidden_dim: 32 -> 16"),
], ids=["head", "env", "algorithm", "train", "base"])
def test_a_resumed_recipe_changing_data_or_networks_is_refused_naming_the_fields(run_copy, section, field, value, shown):
    cache = Path(run_copy["train"]["cache_dir"])
    cached = sorted(cache.rglob("*")) if cache.exists() else []
    with pytest.raises(ValueError, match="another recipe") as error:
        SteeringTrainer(recipe_from_dict(_with(run_copy, section, **{field: value})))
    assert shown in str(error.value) and "train.resume=false" in str(error.value)
    # refused before any work: no base was behaviour-cloned for the changed recipe
    assert (sorted(cache.rglob("*")) if cache.exists() else []) == cached


def test_a_resumed_run_may_run_longer_and_evaluate_differently(run_copy):
    cfg = {**_with(run_copy, "train", total_env_steps=120, eval_episodes=4, checkpoint_every=80), "name": "longer"}
    trainer = SteeringTrainer(recipe_from_dict(cfg))
    assert trainer.load_checkpoint() and trainer.env_steps == 80
    trainer.run()
    assert trainer.env_steps == 120


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(path: Path) -> None:
    path.write_text("{not json")


def _other_optimizer(path: Path) -> None:
    tree = json.loads(path.read_text())
    tree.pop(next(iter(tree)))  # one optimizer missing: written for other networks
    path.write_text(json.dumps(tree))


@pytest.mark.parametrize("name, damage", [
    ("algorithm.safetensors", _truncate),
    ("buffer_rank0.safetensors", _truncate),
    ("trainer_state.json", _garbage),
    ("algorithm.json", _garbage),
    ("optimizers.json", _other_optimizer),
], ids=["truncated-weights", "truncated-buffer", "garbage-state", "garbage-skeleton", "wrong-optimizers"])
def test_a_damaged_checkpoint_file_is_named_with_the_fix(run_copy, name, damage):
    damage(Path(run_copy["train"]["output_dir"]) / "checkpoints" / "last" / name)
    stem = name.split(".")[0]
    with pytest.raises(CheckpointError, match=rf"{stem}\.\S* does not load.*train.resume=false"):
        SteeringTrainer(recipe_from_dict(run_copy)).load_checkpoint()
