"""Critic-guided best-of-K: the chosen latent is the critic's argmax over the head's K proposals."""

import numpy as np
import pytest
import torch

from vla_steer.config import recipe_from_dict
from vla_steer.steering.best_of_k import best_of_k, latent_critic
from vla_steer.training import SteeringTrainer


@pytest.mark.parametrize("algorithm", [{"name": "lpds", "critic": "action"}, {"name": "dsrl_sac"}])
def test_best_of_k_picks_the_critic_argmax_and_evaluates(tiny_recipe, algorithm):
    trainer = SteeringTrainer(recipe_from_dict(tiny_recipe(algorithm=algorithm, train={"eval_best_of_k": 4})))
    algo, adapter, layout = trainer.algo, trainer.adapter, trainer.layout
    obs = torch.randn(3, 8)
    context = adapter.encode(obs)
    k = 5

    torch.manual_seed(0)
    chosen, actions = best_of_k(algo, adapter, layout, context, k)
    # the same proposals, scored by hand
    torch.manual_seed(0)
    repeated = adapter.repeat_context(context, k)
    proposals = algo.act(repeated.features)
    if algorithm["name"] == "lpds":
        executed = adapter.decode(repeated, layout.to_noise(proposals)).flatten(1)
        q = algo.action_critic(repeated.features, executed).mean(0)
    else:
        q = latent_critic(algo)(repeated.features, proposals).mean(0)
    q = q.view(3, k)
    expected = proposals.view(3, k, -1)[torch.arange(3), q.argmax(1)]
    assert torch.equal(chosen, expected)
    assert (q.max(1).values > q.mean(1)).all()  # the pick is better than a random proposal on average
    if actions is not None:  # decoded once for scoring: they are the chosen latent's actions
        assert torch.allclose(actions, adapter.decode(context, layout.to_noise(chosen)), atol=1e-6)

    metrics = trainer.evaluate("policy")  # the eval path with train.eval_best_of_k = 4
    assert metrics["episodes"] == 2 and np.isfinite(metrics["return_mean"])
    with pytest.raises(ValueError, match="k >= 1"):
        best_of_k(algo, adapter, layout, context, 0)


@pytest.mark.parametrize("algorithm", ["lpds", "dsrl_sac"])
def test_an_exported_head_ranks_proposals_with_the_critic_it_ships(tiny_recipe, tmp_path, algorithm):
    """The trainer's head/ carries Q^W (critic.*); a head loaded from it (and re-saved in the shared format) picks
    the same latents as the trainer's own critic would, for the same prior draws."""
    from vla_steer.lerobot_policy import ActingHead

    trainer = SteeringTrainer(recipe_from_dict(tiny_recipe(algorithm={"name": algorithm})))
    trainer.run()
    algo, critic = trainer.algo, latent_critic(trainer.algo)
    head = ActingHead.from_run(trainer.output_dir)
    shared = ActingHead.from_pretrained(head.save_pretrained(tmp_path / "shared", base=trainer.adapter,
                                                             base_model_name_or_path="local/base"))
    features = trainer.adapter.encode(torch.randn(3, 8)).features
    k = 6
    eps = torch.randn(3 * k, head.latent_dim, generator=torch.Generator().manual_seed(1))

    repeated = features.repeat_interleave(k, dim=0)
    if algorithm == "lpds":
        proposals = (eps + algo.delta_net(repeated)).clamp(-head.bound, head.bound)
    else:
        mean, log_std = algo.actor.net(algo.actor.encoder(repeated)).chunk(2, dim=-1)
        proposals = head.bound * torch.tanh(mean + log_std.clamp(algo.actor.LOG_STD_MIN, algo.actor.LOG_STD_MAX).exp() * eps)
    q = critic.reduce(critic(repeated, proposals), "mean").view(3, k)
    expected = proposals.view(3, k, -1)[torch.arange(3), q.argmax(1)]
    for loaded in (head, shared):
        assert torch.allclose(loaded.best_of_k(features, k, eps=eps), expected, atol=1e-6)
    assert not torch.allclose(head.best_of_k(features, 1, eps=eps[::k]), expected)  # k = 1: no choice made
