"""The critic ensembles' LayerNorm with an identity affine inside against the plain form, in one process.

    python benchmarks/layer_norm_affine.py --rounds 8

``EnsembleLayerNorm`` computes ``layer_norm(x) * weight + bias`` with a weight and bias per ensemble member. On a CPU
thread, ``F.layer_norm`` takes its vectorised kernel only with an affine (x1.25-2 alone), so the module passes an identity
affine (ones, zeros) and applies its own afterwards: the same bits (``tests/test_rl_units.py``), less time. This
times whole updates of each method at the push recipe's sizes (``gpu_update_speed``'s learners on the CPU), the two
forms interleaved in rounds so that load from other jobs hits both alike, and writes
``benchmarks/results/layer_norm_affine.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from gpu_update_speed import vla_steer_learner
from vla_steer.config import load_recipe
from vla_steer.provenance import git_commit, hardware
from vla_steer.steering import networks

RESULTS = Path(__file__).parent / "results"


def plain_layer_norm(self, x):
    """The form before: F.layer_norm without an affine, then the member's affine."""
    return F.layer_norm(x, x.shape[-1:]) * self.weight + self.bias


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/metaworld_push_dsrl_sac.yaml")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--updates", type=int, default=40, help="timed updates per form and round")
    args = parser.parse_args()
    torch.set_num_threads(1)
    recipe = load_recipe(args.recipe, ["env.id=Pendulum-v1", "env.reward_mode=env"])  # no simulator is stepped
    forms = {"identity affine inside": networks.EnsembleLayerNorm.forward, "plain": plain_layer_norm}
    result = {"recipe": args.recipe, "rounds": args.rounds, "updates_per_round": args.updates, "git_commit": git_commit(),
              "hardware": hardware(), "updates_per_s": {}, "speedup": {}}
    try:
        for method in ("dsrl_sac", "lpds", "dsrl_na"):
            run = vla_steer_learner(recipe, method, torch.device("cpu"), 20_000, graph=False)
            seconds = dict.fromkeys(forms, 0.0)
            for round_ in range(args.rounds):
                for name, forward in (forms.items() if round_ % 2 == 0 else reversed(forms.items())):  # ABBA order
                    networks.EnsembleLayerNorm.forward = forward
                    run(5)  # warm caches after the other form ran
                    start = time.perf_counter()
                    run(args.updates)
                    seconds[name] += time.perf_counter() - start
            rates = {name: args.rounds * args.updates / s for name, s in seconds.items()}
            result["updates_per_s"][method] = rates
            result["speedup"][method] = rates["identity affine inside"] / rates["plain"]
            print(f"{method}: {rates['plain']:.1f} -> {rates['identity affine inside']:.1f} updates/s "
                  f"(x{result['speedup'][method]:.2f})", flush=True)
    finally:
        networks.EnsembleLayerNorm.forward = forms["identity affine inside"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "layer_norm_affine.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
