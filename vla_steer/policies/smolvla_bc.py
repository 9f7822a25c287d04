"""Behaviour cloning of LeRobot's real ``SmolVLAPolicy``, at toy scale, on a LeRobotDataset with images.

Nothing is downloaded: the VLM is a tiny SmolVLM written locally (:mod:`vla_steer.policies.tiny_vlm`) with
random initial weights, its vocabulary the Meta-World task texts. Training is LeRobot's own loss
(``SmolVLAPolicy.forward``, flow matching on action chunks) fed by LeRobot's own preprocessor (state / action
normalisation from the dataset's stats, task tokenisation), through accelerate. The output directory is a
regular LeRobot checkpoint (``config.json``, ``model.safetensors``, ``policy_preprocessor.json``,
``policy_postprocessor.json`` + their stats), written atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from vla_steer.envs.registry import IMAGE_KEY, STATE_KEY, metaworld_task_descriptions
from vla_steer.files import write_atomically


@dataclass
class TinySmolVLASpec:
    """The toy SmolVLA architecture: VLM width / depth and the action chunking."""

    image_size: int = 64
    hidden_size: int = 64  # VLM text width; the action expert is 0.75 x this (SmolVLA's default ratio)
    num_vlm_layers: int = 2
    chunk_size: int = 4
    n_action_steps: int = 4
    num_steps: int = 5  # Euler steps of the flow
    max_state_dim: int = 64
    max_action_dim: int = 4

    def vlm_kwargs(self) -> dict:
        return dict(image_size=self.image_size, hidden_size=self.hidden_size, num_layers=self.num_vlm_layers)


def vocabulary() -> list[str]:
    """Words of every Meta-World instruction (the tokenizer of the toy VLM is word-level)."""
    return sorted({word for text in metaworld_task_descriptions().values() for word in text.split()})


def ensure_tiny_vlm(directory: Path, spec: TinySmolVLASpec) -> Path:
    """Write the tiny SmolVLM for ``spec`` once (atomically) and return its directory."""
    from vla_steer.policies.tiny_vlm import write_tiny_smolvlm

    if not (directory / "config.json").is_file():
        write_atomically(directory, lambda tmp: write_tiny_smolvlm(tmp, vocabulary(), **spec.vlm_kwargs()))
    return directory


def smolvla_config(vlm_dir: Path, spec: TinySmolVLASpec, state_dim: int, action_dim: int, device: str):
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig

    if state_dim > spec.max_state_dim or action_dim > spec.max_action_dim:
        raise ValueError(f"state_dim={state_dim} / action_dim={action_dim} exceed max_state_dim={spec.max_state_dim} "
                         f"/ max_action_dim={spec.max_action_dim}")
    return SmolVLAConfig(
        input_features={
            STATE_KEY: PolicyFeature(FeatureType.STATE, (state_dim,)),
            IMAGE_KEY: PolicyFeature(FeatureType.VISUAL, (3, spec.image_size, spec.image_size)),
        },
        output_features={"action": PolicyFeature(FeatureType.ACTION, (action_dim,))},
        vlm_model_name=str(vlm_dir),
        load_vlm_weights=False,  # random init: there is nothing to download here
        train_expert_only=False,  # ... so the VLM must learn too
        freeze_vision_encoder=False,
        num_vlm_layers=spec.num_vlm_layers,
        num_expert_layers=-1,
        self_attn_every_n_layers=2,
        resize_imgs_with_padding=(spec.image_size, spec.image_size),
        chunk_size=spec.chunk_size,
        n_action_steps=spec.n_action_steps,
        max_state_dim=spec.max_state_dim,
        max_action_dim=spec.max_action_dim,
        num_steps=spec.num_steps,
        tokenizer_max_length=16,
        device=device,
    )


def train_smolvla_bc(
    dataset_root: str | Path,
    output_dir: str | Path,
    vlm_dir: str | Path,
    spec: TinySmolVLASpec,
    *,
    steps: int = 3000,
    batch_size: int = 64,
    lr: float = 3e-4,
    seed: int = 0,
    accelerator: Accelerator | None = None,
    show_progress: bool = True,
) -> Path:
    """Train a toy ``SmolVLAPolicy`` on the dataset's images, state and task text; returns ``output_dir``."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
    from lerobot.policies.smolvla.processor_smolvla import make_smolvla_pre_post_processors

    accelerator = accelerator or Accelerator()
    set_seed(seed)
    dataset_root, output_dir = Path(dataset_root), Path(output_dir)
    meta = json.loads((dataset_root / "meta" / "info.json").read_text())
    missing = {IMAGE_KEY, STATE_KEY, "action"} - set(meta["features"])
    if missing:
        raise ValueError(f"dataset {dataset_root} lacks {sorted(missing)}, which SmolVLA BC needs "
                         "(generate it with env.observation: pixels_state)")
    image_shape = meta["features"][IMAGE_KEY]["shape"]
    if tuple(image_shape[:2]) != (spec.image_size, spec.image_size):
        raise ValueError(f"dataset images are {image_shape[:2]} but the policy expects {spec.image_size} px; "
                         "set env.image_size to the size the demos were rendered at")
    dataset = LeRobotDataset(repo_id=f"local/{dataset_root.name}", root=dataset_root)
    frames = _load_frames(dataset, spec.chunk_size)
    config = smolvla_config(Path(vlm_dir), spec, frames[STATE_KEY].shape[1], frames["action"].shape[2],
                            device=str(accelerator.device))
    policy = SmolVLAPolicy(config)
    preprocessor, postprocessor = make_smolvla_pre_post_processors(config, dataset_stats=dataset.meta.stats)
    optimizer = torch.optim.AdamW(policy.get_optim_params(), lr=lr, weight_decay=1e-6)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    policy, optimizer = accelerator.prepare(policy, optimizer)
    generator = torch.Generator().manual_seed(seed + accelerator.process_index)

    policy.train()
    losses = []
    progress = tqdm(range(steps), desc="bc smolvla", disable=not (show_progress and accelerator.is_main_process))
    for step in progress:
        idx = torch.randint(0, len(frames["task"]), (batch_size,), generator=generator)
        batch = {key: value[idx] for key, value in frames.items() if key != "task"}
        batch[IMAGE_KEY] = batch[IMAGE_KEY].float() / 255.0  # stored as uint8: 4x less memory
        batch["task"] = [frames["task"][i] for i in idx.tolist()]
        with accelerator.autocast():
            loss, _ = policy(preprocessor(batch))
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(policy.parameters(), 10.0)  # SmolVLA's default grad clip
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if step % 50 == 49:
            progress.set_postfix(loss=f"{sum(losses[-50:]) / 50:.4f}")

    model = accelerator.unwrap_model(policy).eval()
    if accelerator.is_main_process:
        def write(tmp: Path) -> None:
            model.save_pretrained(tmp)
            preprocessor.save_pretrained(tmp)
            postprocessor.save_pretrained(tmp)
            (tmp / "bc_log.json").write_text(json.dumps(
                {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "dataset": str(dataset_root),
                 "loss_every_50": [sum(losses[i:i + 50]) / len(losses[i:i + 50]) for i in range(0, len(losses), 50)]}))

        write_atomically(output_dir, write)
    accelerator.wait_for_everyone()
    return output_dir


def _load_frames(dataset, chunk_size: int) -> dict:
    """Every frame in memory: uint8 images, states, action chunks with LeRobot's ``action_is_pad`` (steps past
    the episode end repeat its last action) and task strings. A few MB at toy scale; indexing tensors is ~100x
    faster than LeRobot's per-item loader."""
    from vla_steer.data.demos import load_demonstrations

    demos = load_demonstrations(dataset.root)
    table = dataset.hf_dataset.with_format("torch")
    chunks, pad = demos.action_chunks(chunk_size)
    tasks = dataset.meta.tasks.index.tolist()  # the task strings, ordered by task_index
    return {
        IMAGE_KEY: torch.stack(list(table[IMAGE_KEY])),
        STATE_KEY: demos.observations,
        "action": chunks,
        "action_is_pad": pad,
        "task": [tasks[int(i)] for i in table["task_index"]],
    }


def load_smolvla_base(path: str | Path, device: str | torch.device = "cpu"):
    """``(policy, preprocessor, postprocessor)`` from a LeRobot SmolVLA checkpoint directory."""
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
    from lerobot.processor import PolicyProcessorPipeline
    from lerobot.processor.converters import policy_action_to_transition, transition_to_policy_action

    path = Path(path)
    overrides = {"device_processor": {"device": str(device)}}
    policy = SmolVLAPolicy.from_pretrained(path)
    policy.to(device)
    preprocessor = PolicyProcessorPipeline.from_pretrained(path, config_filename="policy_preprocessor.json",
                                                           overrides=overrides)
    postprocessor = PolicyProcessorPipeline.from_pretrained(
        path, config_filename="policy_postprocessor.json",
        to_transition=policy_action_to_transition, to_output=transition_to_policy_action)
    return policy, preprocessor, postprocessor
