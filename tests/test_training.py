import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml

from vla_steer.config import recipe_from_dict
from vla_steer.pipeline import ensure_base
from vla_steer.training import NonFiniteError, SteeringTrainer
from vla_steer.training.checkpoint import load_tree


@pytest.mark.parametrize("algorithm", ["lpds", "dsrl_sac", "dsrl_na"])
def test_train_end_to_end_writes_results_plot_and_head(tiny_recipe, algorithm):
    recipe = recipe_from_dict(tiny_recipe(algorithm={"name": algorithm}))
    results = SteeringTrainer(recipe).run()
    out = Path(recipe.train.output_dir)
    saved = json.loads((out / "results.json").read_text())
    assert saved["method"] == algorithm and saved["task"] == "LunarLanderContinuous-v3"
    assert saved["env_steps"] >= 150 and saved["final"]["episodes"] == 2
    for key in ("success_rate", "return_mean", "action_entropy", "noise_norm"):
        assert np.isfinite(saved["base"][key]) and np.isfinite(saved["final"][key])
    assert saved["final"]["action_drift"] >= 0 and "action_drift" not in saved["base"]  # steered vs base draws
    assert (out / "learning_curve.png").stat().st_size > 10_000 and Path(results["plot"]).exists()
    assert (out / "head" / "head.safetensors").is_file()
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["event"] == "base_eval" and any(l["event"] == "eval" for l in lines)
    if algorithm == "dsrl_sac":  # a fresh run (resume off) in the same directory starts a new log
        SteeringTrainer(recipe_from_dict(tiny_recipe(algorithm={"name": algorithm}, train={"resume": False}))).run()
        rerun = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
        assert [l["event"] for l in rerun].count("base_eval") == 1


def _params(trainer):
    state = {f"algo/{k}": v.clone() for k, v in trainer.algo.state_dict().items()}
    for name, opt in trainer.algo.optimizers.items():
        for pid, st in opt.state_dict()["state"].items():
            for k, v in st.items():
                state[f"opt/{name}/{pid}/{k}"] = torch.as_tensor(v).clone()
    return state


@pytest.mark.parametrize("algorithm", ["lpds", "dsrl_sac"])
def test_killed_run_resumes_with_bit_identical_next_update(tiny_recipe, tmp_path, algorithm):
    """Kill -9 a run after its first checkpoint; resuming it must reproduce the uninterrupted run's next update."""
    base = tiny_recipe(algorithm={"name": algorithm})
    ensure_base(recipe_from_dict(base), show_progress=False)  # train the base once, outside the timed child
    killed_dir = tmp_path / "killed"
    long_run = {**base, "train": {**base["train"], "total_env_steps": 400_000, "checkpoint_every": 48,
                                  "eval_every": 1_000_000, "output_dir": str(killed_dir)}}
    recipe_path = tmp_path / "long.yaml"
    recipe_path.write_text(yaml.safe_dump(long_run))
    child = subprocess.Popen([sys.executable, "-m", "vla_steer", "train", str(recipe_path)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    state_file = killed_dir / "checkpoints" / "last" / "trainer_state.json"
    deadline = time.time() + 300
    while not state_file.exists():
        assert child.poll() is None, child.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    state = json.loads(state_file.read_text())
    assert state["updates_pending"] and state["iteration"] >= 6
    iterations = state["iteration"]
    steps = iterations * 2 * 2  # num_envs * n_action_steps

    # Uninterrupted reference that stops right after that iteration's updates.
    reference_cfg = {**long_run, "train": {**long_run["train"], "total_env_steps": steps, "output_dir": str(tmp_path / "ref")}}
    reference = SteeringTrainer(recipe_from_dict(reference_cfg))
    reference.run()
    # The killed run, resumed from its checkpoint: runs the pending updates, then stops at the same point.
    resumed = SteeringTrainer(recipe_from_dict({**reference_cfg, "train": {**reference_cfg["train"], "output_dir": str(killed_dir)}}))
    resumed.run()
    assert resumed.updates == reference.updates
    ref_params, res_params = _params(reference), _params(resumed)
    assert ref_params.keys() == res_params.keys()
    for key in ref_params:
        assert torch.equal(ref_params[key], res_params[key]), f"{key} differs after resume"
    ref_buffer = load_tree(tmp_path / "ref" / "checkpoints" / "last", "buffer_rank0")
    res_buffer = load_tree(killed_dir / "checkpoints" / "last", "buffer_rank0")
    for key, value in ref_buffer["tensors"].items():
        assert torch.equal(value, res_buffer["tensors"][key])


class NaNAfter(gym.Wrapper):
    def __init__(self, env, after: int, where: str):
        super().__init__(env)
        self.after, self.where, self.count = after, where, 0

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.count += 1
        if self.count >= self.after:
            if self.where == "obs":
                obs = np.full_like(obs, np.nan)
            else:
                reward = float("nan")
        return obs, reward, terminated, truncated, info


@pytest.mark.parametrize("where", ["obs", "reward"])
def test_nan_from_env_stops_training_with_clear_error(tiny_recipe, where):
    env_id = f"NaN{where.title()}Lander-v0"
    if env_id not in gym.registry:
        gym.register(env_id, entry_point=lambda **kw: NaNAfter(gym.make("LunarLanderContinuous-v3", **kw), 30, where))
    base_path = ensure_base(recipe_from_dict(tiny_recipe()), show_progress=False)
    recipe = recipe_from_dict(tiny_recipe(env={"id": env_id}, base={"path": str(base_path)}))
    trainer = SteeringTrainer(recipe)
    with pytest.raises(NonFiniteError, match=f"{'observation' if where == 'obs' else 'reward'} from env.*not finite"):
        trainer.run()
    if len(trainer.buffer):
        for value in trainer.buffer.state_dict()["tensors"].values():
            assert torch.isfinite(value.float()).all(), "non-finite values reached the replay buffer"


def test_resume_survives_a_crash_between_the_checkpoint_renames_and_never_silently_restarts(tiny_recipe, tmp_path, capsys):
    cfg = tiny_recipe(train={"total_env_steps": 160, "checkpoint_every": 40})
    SteeringTrainer(recipe_from_dict(cfg)).run()
    checkpoints = Path(cfg["train"]["output_dir"]) / "checkpoints"
    # the atomic write renames last -> last.old, then last.tmp -> last: a crash between the two leaves no last
    (checkpoints / "last").rename(checkpoints / "last.old")
    resumed = SteeringTrainer(recipe_from_dict(cfg))
    assert resumed.load_checkpoint() and resumed.iteration > 0 and len(resumed.buffer) > 0
    assert re.search(r"resuming from .*last\.old", capsys.readouterr().err)
    # promoted to last at once: the next checkpoint write cannot delete it before its own last exists
    assert resumed.resume_from == checkpoints / "last" and not (checkpoints / "last.old").exists()
    # an incomplete last with nothing to fall back on is an error naming the fix, not a restart from step 0
    (checkpoints / "last" / "rng_rank0.json").unlink()  # a checkpoint cut short while its files were moved in
    with pytest.raises(FileNotFoundError, match=r"incomplete.*train.resume=false"):
        SteeringTrainer(recipe_from_dict(cfg)).run()


def test_every_command_honours_train_torch_threads(tiny_recipe, tmp_path):
    from vla_steer.cli import main

    recipe_file = tmp_path / "tiny.yaml"
    recipe_file.write_text(yaml.safe_dump(tiny_recipe()))
    try:
        for command in ("demos", "bc"):
            torch.set_num_threads(1)
            assert main([command, str(recipe_file), "train.torch_threads=2"]) == 0
            assert torch.get_num_threads() == 2, command
    finally:
        torch.set_num_threads(1)
