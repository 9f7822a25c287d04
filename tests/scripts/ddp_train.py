"""Launched by tests/test_multiprocess.py under `accelerate launch --cpu --num_processes 2`.

Each process trains (its own envs, shared averaged gradients) and writes its head + critics to
``<out>/rank<i>.safetensors`` so the test can compare them across processes.
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from vla_steer.config import recipe_from_dict
from vla_steer.training import SteeringTrainer

recipe = recipe_from_dict(json.loads(Path(sys.argv[1]).read_text()))
trainer = SteeringTrainer(recipe)
trainer.run()
rank = trainer.accelerator.process_index
state = {k: v.detach().cpu().contiguous() for k, v in trainer.algo.state_dict().items()}
state["buffer_rewards"] = trainer.buffer.state_dict()["tensors"]["reward"]
save_file(state, str(Path(recipe.train.output_dir) / f"rank{rank}.safetensors"))
print(json.dumps({"rank": rank, "world": trainer.accelerator.num_processes, "updates": trainer.updates}))
