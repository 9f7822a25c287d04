"""Using and exporting shared heads: what needs both the head format (``vla_steer.hub``) and the acting head or the
steered policy (this package).

* :func:`load_steered`: a shared head (a directory or a Hub repo id) and the base it names, ready to act;
* :class:`SteeredChunkPolicy`: a head on a base that is not a LeRobot policy;
* :func:`export_run`: a finished training run -> a shared head directory (card, metrics, learning curve).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vla_steer.hub.api import (hub_kwargs, library_for_family, load_base_adapter, load_base_for, resolve_repo,
                               validate_directory)
from vla_steer.hub.format import DEFAULT_LIMITS, Limits
from vla_steer.lerobot_policy.configuration_steered import SteeredConfig
from vla_steer.lerobot_policy.head import ActingHead
from vla_steer.lerobot_policy.modeling_steered import SteeredPolicy, read_steered_config

__all__ = ["SteeredChunkPolicy", "export_run", "load_steered"]


class SteeredChunkPolicy:
    """A head on a base that is not a LeRobot policy (vla_steer's built-in chunk policies, a custom flow head):
    one ``encode``, the head, ``decode`` from the noise it picks. ``noise`` is the prior draw ``eps`` in latent
    space, as for ``SteeredPolicy``."""

    def __init__(self, head: ActingHead, adapter, deterministic: bool = False):
        self.adapter, self.deterministic = adapter, deterministic
        self.head = head.to(adapter.device)

    @property
    def n_action_steps(self) -> int:
        return self.adapter.n_action_steps

    @torch.no_grad()
    def predict_action_chunk(self, observation, noise: torch.Tensor | None = None,
                             deterministic: bool | None = None) -> torch.Tensor:
        context = self.adapter.encode(observation)
        deterministic = self.deterministic if deterministic is None else deterministic
        latent = self.head(context.features.float(), eps=noise, deterministic=deterministic)
        return self.adapter.decode(context, self.head.layout.to_noise(latent))


def load_steered(repo_id_or_path: str | Path, *, revision: str | None = None, base: Any = None,
                 allow_base_mismatch: bool = False, device: str | None = None, deterministic: bool = False,
                 limits: Limits = DEFAULT_LIMITS, **hub: Any):
    """A shared head and the base it names, ready to act.

    LeRobot bases give a ``SteeredPolicy`` (LeRobot's policy interface); vla_steer's own bases give a
    :class:`SteeredChunkPolicy`. The base loads from the id and revision the head config names unless ``base``
    (an adapter, a policy, a path or a repo id) is given. The head refuses a base whose fingerprint or shapes
    differ; ``allow_base_mismatch=True`` turns a fingerprint difference into a loud warning.
    """
    directory = resolve_repo(repo_id_or_path, revision=revision, **hub)
    checked = validate_directory(directory, limits)
    config = checked.config
    if checked.policy_config is not None:  # a LeRobot steered policy directory
        base_policy = None
        if base is not None:
            adapter_kwargs = checked.policy_config.get("adapter_kwargs") or {}
            base_policy = load_base_adapter(base, library="lerobot", policy_type=checked.policy_config["base_type"],
                                            adapter_kwargs=adapter_kwargs, device=device, **hub_kwargs(hub)).policy
        policy_config = read_steered_config(directory)
        policy_config.deterministic = deterministic or policy_config.deterministic
        if device is not None:
            policy_config.device = str(device)
        return SteeredPolicy.from_pretrained(directory, config=policy_config, base_policy=base_policy,
                                             allow_base_mismatch=allow_base_mismatch, **hub_kwargs(hub))
    head = ActingHead.from_checked(checked)
    adapter = load_base_for(config, base, device=device, **hub_kwargs(hub))
    if library_for_family(adapter.family) == "lerobot":
        steered_config = SteeredConfig(
            base_path=str(base) if isinstance(base, (str, Path)) else config.get("base_model_name_or_path", ""),
            base_revision=None if base is not None else config.get("revision"), base_type=adapter.policy.config.type,
            adapter_kwargs=(config.get("features") or {}).get("adapter_kwargs", {}), deterministic=deterministic,
            device=str(device or adapter.policy.config.device), n_obs_steps=adapter.policy.config.n_obs_steps,
            input_features=dict(adapter.policy.config.input_features),
            output_features=dict(adapter.policy.config.output_features))
        return SteeredPolicy(steered_config, base_policy=adapter.policy, head=head, allow_base_mismatch=allow_base_mismatch)
    head.check_base(adapter, None, allow_base_mismatch)
    return SteeredChunkPolicy(head, adapter, deterministic)


def export_run(run_dir: str | Path, save_directory: str | Path, *, base: Any = None,
               base_model_name_or_path: str | None = None, revision: str | None = None,
               adapter_kwargs: dict | None = None, datasets: list[str] | None = None,
               allow_base_mismatch: bool = False, model_card: bool = True, card_kwargs: dict | None = None) -> Path:
    """A finished training run -> a shared head directory (with its card, metrics and learning curve).

    ``base``: where the base is now (default: the recipe's ``base.path``, or its cached behaviour-cloned base);
    ``base_model_name_or_path`` / ``revision``: what to record (e.g. the Hub repo the base is published as).
    A LeRobot base gives a ``steered`` policy directory (``lerobot-eval --policy.path=`` runs it).
    """
    from vla_steer.config import recipe_from_dict

    run_dir = Path(run_dir)
    head = ActingHead.from_run(run_dir)
    if datasets:
        head.training_record.setdefault("training", {})["datasets"] = list(datasets)
    family = head.raw_config.get("adapter")
    recipe = recipe_from_dict(json.loads((run_dir / "recipe.json").read_text()))
    if base is None:
        if family not in (None, "native") and not recipe.base.path:
            raise ValueError(f"this run steered a {family!r} base, which its recipe does not name: pass base= "
                             "(its path or Hub repo id)")
        from vla_steer.pipeline import ensure_base

        base = recipe.base.path or ensure_base(recipe, show_progress=False)
        revision = revision if revision is not None else recipe.base.revision
        if Path(str(base)).expanduser().is_dir():  # record where it is, whatever directory loads the export
            base = Path(base).expanduser().resolve()
    if adapter_kwargs is None and recipe.base.path:
        adapter_kwargs = dict(recipe.base.adapter_kwargs)  # how the head was trained to see the base
    if library_for_family(family) != "lerobot":
        return head.save_pretrained(save_directory, base=base, base_model_name_or_path=base_model_name_or_path,
                                    revision=revision, adapter_kwargs=adapter_kwargs, model_card=model_card,
                                    card_kwargs=card_kwargs, allow_base_mismatch=allow_base_mismatch)
    adapter = load_base_adapter(base, library="lerobot", revision=revision, adapter_kwargs=adapter_kwargs)
    s = recipe.safety  # the limits the actor enforced during training travel with the policy
    policy = SteeredPolicy.from_base(adapter.policy, head, base_path=base_model_name_or_path or str(base),
                                     base_revision=revision, adapter_kwargs=adapter_kwargs,
                                     allow_base_mismatch=allow_base_mismatch,
                                     action_limits={"action_low": s.action_low, "action_high": s.action_high,
                                                    "max_action_step": s.max_action_step})
    policy.save_pretrained(save_directory, model_card=model_card, card_kwargs=card_kwargs)
    return Path(save_directory).expanduser().resolve()
