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
        executed = adapter.decode(repeated, layout.to_noise(proposals))[:, : adapter.n_action_steps].flatten(1)
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
