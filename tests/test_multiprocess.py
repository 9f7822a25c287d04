import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from vla_steer.config import recipe_from_dict
from vla_steer.pipeline import ensure_base

SCRIPT = Path(__file__).parent / "scripts" / "ddp_train.py"


def _launch(args, env=None):
    return subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *args],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def test_two_process_training_keeps_heads_identical(tiny_recipe, tmp_path):
    cfg = tiny_recipe(algorithm={"name": "lpds"}, train={"total_env_steps": 320})
    ensure_base(recipe_from_dict(cfg), show_progress=False)  # build once, before the processes race for it
    assert_two_processes_end_with_identical_heads(cfg, tmp_path)


def test_two_processes_steering_a_lerobot_checkpoint_in_pusht_keep_heads_identical(tmp_path):
    """The LeRobot path under DDP (gloo on CPU): a checkpoint saved by LeRobot, LeRobot's PushT env and processing."""
    from test_lerobot_native import native_recipe
    from tiny_common import save_pusht_diffusion_base

    base = save_pusht_diffusion_base(tmp_path / "pusht_base")
    assert_two_processes_end_with_identical_heads(native_recipe(tmp_path, str(base), train={"total_env_steps": 320}),
                                                  tmp_path)


def assert_two_processes_end_with_identical_heads(cfg: dict, tmp_path: Path) -> None:
    (tmp_path / "r.json").write_text(json.dumps(cfg))
    proc = _launch([str(SCRIPT), str(tmp_path / "r.json")])
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = Path(cfg["train"]["output_dir"])
    rank0, rank1 = load_file(out / "rank0.safetensors"), load_file(out / "rank1.safetensors")
    assert not torch.equal(rank0.pop("buffer_rewards"), rank1.pop("buffer_rewards")), "each process must step its own envs"
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), f"{key} differs across processes"
    assert json.loads((out / "results.json").read_text())["num_processes"] == 2


def test_cli_runs_under_accelerate_launch(tiny_recipe, tmp_path):
    cfg = tiny_recipe(algorithm={"name": "dsrl_sac"}, train={"total_env_steps": 160})
    ensure_base(recipe_from_dict(cfg), show_progress=False)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(cfg))
    proc = _launch(["-m", "vla_steer", "train", str(tmp_path / "r.yaml")])
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "steered" in proc.stdout and "plot:" in proc.stdout
