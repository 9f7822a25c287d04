"""One head across tasks: a task set env (``metaworld/a+b``), its demonstrations, a task-conditioned built-in base,
and per-task evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from vla_steer.config import RecipeError, recipe_from_dict
from vla_steer.envs.registry import make_env, task_description, task_ids, validate_env_id

TASK_SET = "metaworld/reach-v3+push-v3"


def test_a_task_set_spreads_envs_over_its_tasks_and_tells_them_apart():
    assert task_ids(TASK_SET) == ["metaworld/reach-v3", "metaworld/push-v3"]
    assert task_ids("metaworld/push-v3") == ["metaworld/push-v3"]
    assert [task_description(TASK_SET, i) for i in range(3)] == ["Reach a goal position", "Push the puck to a goal",
                                                                  "Reach a goal position"]
    single = make_env("metaworld/push-v3", seed=0).observation_space.shape[0]
    for index in (0, 1, 3):
        env = make_env(TASK_SET, seed=0, task_index=index)
        obs, _ = env.reset(seed=0)
        assert obs.shape == (single + 2,)
        np.testing.assert_array_equal(obs[-2:], np.eye(2)[index % 2])  # the task's one-hot ends the state
        env.close()
    pixels = make_env(TASK_SET, seed=0, task_index=1, observation="pixels_state", image_size=16)
    assert pixels.observation_space["observation.state"].shape == (single,)  # a VLA reads the task text instead
    pixels.close()
    with pytest.raises(ValueError, match="unknown Meta-World task 'pushh-v3'"):
        validate_env_id("metaworld/reach-v3+pushh-v3")
    with pytest.raises(ValueError, match="names a task twice"):
        validate_env_id("metaworld/reach-v3+reach-v3")


def test_only_task_is_checked_against_the_task_set(tiny_recipe):
    env = {"id": TASK_SET, "num_envs": 2, "max_episode_steps": 20}
    assert recipe_from_dict(tiny_recipe(env={**env, "only_task": 1})).env.only_task == 1
    with pytest.raises(RecipeError, match=r"env.only_task=2, but env.id 'metaworld/reach-v3\+push-v3' has 2 task"):
        recipe_from_dict(tiny_recipe(env={**env, "only_task": 2}))
    with pytest.raises(RecipeError, match=r"set of 2 tasks.*env.num_envs \(3\) and the evaluation envs .* multiples of 2"):
        recipe_from_dict(tiny_recipe(env={**env, "num_envs": 3}))
    with pytest.raises(RecipeError, match=r"min\(train.eval_num_envs, train.eval_episodes\) = 1\) must be multiples"):
        recipe_from_dict(tiny_recipe(env=env, train={"eval_episodes": 1}))
    recipe_from_dict(tiny_recipe(env={**env, "num_envs": 3, "only_task": 0}))  # one task for all: any count


def test_demos_base_training_and_per_task_evaluation_on_a_task_set(tiny_recipe):
    """Demonstrations alternate the tasks, each episode with its task text and one-hot; a built-in base is cloned on
    them; a head is trained on both tasks at once and evaluated per task."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from vla_steer.pipeline import ensure_demos
    from vla_steer.training import SteeringTrainer

    recipe = recipe_from_dict(tiny_recipe(env={"id": TASK_SET, "num_envs": 2, "max_episode_steps": 20},
                                          demos={"num_episodes": 4, "action_noise": 0.3},
                                          train={"eval_episodes": 4, "eval_num_envs": 2}))
    dataset = LeRobotDataset("local/demos", root=ensure_demos(recipe, show_progress=False))
    assert dataset.num_episodes == 4
    firsts = [dataset[int(dataset.meta.episodes["dataset_from_index"][k])] for k in range(4)]
    assert [f["task"] for f in firsts] == ["metaworld/reach-v3", "metaworld/push-v3"] * 2
    assert [f["observation.state"][-2:].tolist() for f in firsts] == [[1.0, 0.0], [0.0, 1.0]] * 2

    trainer = SteeringTrainer(recipe)
    results = trainer.run()
    assert trainer.collector.tasks() == ["Reach a goal position", "Push the puck to a goal"]
    per_task = results["final"]["per_task"]
    assert set(per_task) == {"metaworld/reach-v3", "metaworld/push-v3"}
    assert all(m["episodes"] == 2 for m in per_task.values())
    overall = np.mean([m["success_rate"] for m in per_task.values()])
    assert overall == pytest.approx(results["final"]["success_rate"])
