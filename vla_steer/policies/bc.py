"""Behaviour cloning of the built-in chunk policies on a LeRobotDataset, with accelerate."""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from vla_steer.data.demos import load_demonstrations
from vla_steer.policies.base import ChunkPolicy, ChunkPolicyConfig, build_chunk_policy


def train_bc(
    cfg: ChunkPolicyConfig,
    dataset_root: str | Path,
    *,
    steps: int = 3000,
    batch_size: int = 256,
    lr: float = 3e-4,
    seed: int = 0,
    output_dir: str | Path | None = None,
    accelerator: Accelerator | None = None,
    show_progress: bool = True,
) -> ChunkPolicy:
    """Fit ``cfg``'s denoiser to the dataset's action chunks; saves to ``output_dir`` if given."""
    accelerator = accelerator or Accelerator()
    set_seed(seed)
    demos = load_demonstrations(dataset_root)
    if demos.observations.shape[1] != cfg.obs_dim or demos.actions.shape[1] != cfg.action_dim:
        raise ValueError(
            f"dataset {dataset_root} has obs_dim={demos.observations.shape[1]}, action_dim={demos.actions.shape[1]} "
            f"but the policy config expects obs_dim={cfg.obs_dim}, action_dim={cfg.action_dim}"
        )
    policy = build_chunk_policy(cfg)
    policy.set_stats(demos.observations.mean(0), demos.observations.std(0),
                     demos.actions.min(0).values, demos.actions.max(0).values)
    targets, pad = demos.action_chunks(cfg.horizon)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=1e-6)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    policy, optimizer = accelerator.prepare(policy, optimizer)
    model = accelerator.unwrap_model(policy)
    device = accelerator.device
    obs_norm = model.normalize_obs(demos.observations.to(device))
    targets_norm = model.normalize_actions(targets.to(device))
    pad = pad.to(device)
    generator = torch.Generator(device="cpu").manual_seed(seed + accelerator.process_index)

    policy.train()
    progress = tqdm(range(steps), desc="bc", disable=not (show_progress and accelerator.is_main_process))
    for step in progress:
        idx = torch.randint(0, obs_norm.shape[0], (batch_size,), generator=generator).to(device)
        with accelerator.autocast():
            loss = model.loss(obs_norm[idx], targets_norm[idx], pad[idx])
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        optimizer.step()
        scheduler.step()
        if step % 100 == 0:
            progress.set_postfix(loss=f"{loss.item():.4f}")
    model.eval().requires_grad_(False)
    if output_dir is not None and accelerator.is_main_process:
        model.save_pretrained(output_dir)
    accelerator.wait_for_everyone()
    return model
