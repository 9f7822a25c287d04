"""Critic-guided best-of-K noise selection at inference time.

For each observation the head proposes K latents; one encode is shared by all K (``repeat_context``) and the
critic picks the best. With an action critic (DSRL-NA, LP-DS with ``critic: action``) the K latents are
decoded in one batched call and scored as executed actions, Q^A(s, a), the critic trained by TD on real
transitions. Otherwise (DSRL-SAC, LP-DS with ``critic: latent``) they are scored in latent space, Q^W(s, z),
and only the chosen one needs decoding.
"""

from __future__ import annotations

import torch

from vla_steer.adapters.base import Context, LatentLayout, SteerableAdapter


def latent_critic(algo):
    """The algorithm's Q^W(s, z): ``noise_critic`` (DSRL-NA, LP-DS) or ``critic`` (DSRL-SAC)."""
    critic = getattr(algo, "noise_critic", None) or getattr(algo, "critic", None)
    if critic is None:
        raise ValueError(f"{type(algo).__name__} has no latent-space critic to rank noise with")
    return critic


@torch.no_grad()
def best_of_k(algo, adapter: SteerableAdapter, layout: LatentLayout, context: Context, k: int,
              deterministic_proposals: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pick one latent per observation out of ``k`` head proposals by the critic's mean over its heads.

    Returns ``(latent [B, latent_dim], actions [B, n_action_steps, action_dim] or None)``: the executed rows, returned
    when the proposals were decoded for scoring, so the caller need not decode again.
    """
    if k < 1:
        raise ValueError(f"best-of-K needs k >= 1, got {k}")
    batch = context.batch_size
    repeated = adapter.repeat_context(context, k)
    proposals = algo.act(repeated.features, deterministic=deterministic_proposals)  # [B * k, latent_dim]
    action_critic = getattr(algo, "action_critic", None)
    if action_critic is not None:
        actions = adapter.decode(repeated, layout.to_noise(proposals))
        q = action_critic.reduce(action_critic(repeated.features, actions.flatten(1)), "mean")
    else:
        actions = None
        critic = latent_critic(algo)
        q = critic.reduce(critic(repeated.features, proposals), "mean")
    best = q.view(batch, k).argmax(dim=1)
    rows = torch.arange(batch, device=best.device) * k + best
    return proposals[rows], None if actions is None else actions[rows]
