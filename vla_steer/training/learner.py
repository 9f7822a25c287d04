"""The learner: the replay buffer (plus optional offline data) and the algorithm's updates.

It takes transitions in and gives head weights out (``algo.head_modules()``); it never steps an env, so on a robot
it can run in another process, on a GPU, while the collector keeps the robot's control rate.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator

from vla_steer.algorithms import SteeringAlgorithm
from vla_steer.algorithms.base import as_floats
from vla_steer.config import Recipe
from vla_steer.training.buffer import ReplayBuffer


class Learner:
    """Holds ``algo`` and its replay buffer; ``update()`` samples a batch and runs one gradient update.

    With offline data (``offline.dataset``), ``offline`` is a second buffer and every batch draws
    ``offline.fraction`` of its rows from it (all of them while the online buffer is empty).
    """

    def __init__(self, recipe: Recipe, algo: SteeringAlgorithm, accelerator: Accelerator, sampler_seed: int):
        self.recipe, self.algo, self.accelerator = recipe, algo, accelerator
        self.buffer = ReplayBuffer(recipe.train.buffer_size, device=accelerator.device)
        self.offline: ReplayBuffer | None = None
        self.sample_generator = torch.Generator().manual_seed(sampler_seed)
        self.updates = 0
        self._graphed = None  # the captured update (vla_steer.training.cuda_graph), built at the first update
        # a graph replays fixed kernels on fixed tensors: not for updates that re-encode observations through a VLA
        self._try_graph = (recipe.train.cuda_graph_updates and accelerator.device.type == "cuda"
                           and not algo.reencodes_observations)

    def add(self, transition: dict[str, torch.Tensor]) -> None:
        self.buffer.add(transition)

    def set_offline(self, transitions: dict[str, torch.Tensor]) -> None:
        rows = next(iter(transitions.values())).shape[0]
        self.offline = ReplayBuffer(rows, device=self.accelerator.device)
        self.offline.add(transitions)

    def sample(self) -> dict[str, torch.Tensor]:
        batch_size, device = self.recipe.algorithm.batch_size, self.accelerator.device
        if self.offline is None:
            return self.buffer.sample(batch_size, self.sample_generator, device=device)
        from vla_steer.training.buffer import sample_mixed

        return sample_mixed(self.buffer, self.offline, batch_size, self.recipe.offline.fraction, self.sample_generator,
                            device=device)

    def update(self) -> dict[str, float]:
        batch = self.sample()
        with self.accelerator.autocast():
            if self._try_graph:
                from vla_steer.training.cuda_graph import graphed_update

                self._graphed, self._try_graph = graphed_update(self.algo, batch), False
            metrics = self._graphed(batch) if self._graphed else self.algo.update_on_device(batch)
        self.updates += 1
        return as_floats(metrics)

    def pretrain_critic(self, updates: int, show_progress: bool = False) -> dict[str, float]:
        """Critic-only updates on the offline data (the action critic, then Q^W distilled from it)."""
        from tqdm.auto import tqdm

        metrics = {}
        batch_size, device = self.recipe.algorithm.batch_size, self.accelerator.device
        for _ in tqdm(range(updates), desc="offline critic warm start", disable=not show_progress):
            batch = self.offline.sample(batch_size, self.sample_generator, device=device)
            with self.accelerator.autocast():
                metrics = self.algo.critic_update(batch)
        return metrics

    # -- checkpoints: the buffer and the sampler's RNG are per process -----------------------------------
    def state_dict(self) -> dict:
        return {"buffer": self.buffer.state_dict(), "sampler": self.sample_generator.get_state()}

    def load_state_dict(self, buffer_state: dict, sampler_state: torch.Tensor) -> None:
        self.buffer.load_state_dict(buffer_state)
        self.sample_generator.set_state(sampler_state.to(torch.uint8))
