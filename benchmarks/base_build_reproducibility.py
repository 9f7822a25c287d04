"""Does a BC base rebuilt from the same seeds have the same weights? Same demonstrations, seeds and code, with MKL's
CPU dispatch as the only thing changed (``MKL_CBWR``), each build in its own one-thread process:

    python benchmarks/base_build_reproducibility.py recipes/metaworld_push_lpds.yaml env.id=metaworld/reach-v3

MKL picks its matmul kernels by CPU (AVX-512 on this Intel Xeon, AVX2 on an AMD EPYC), and a kernel's summation
order changes the float rounding, which 2000 optimiser steps amplify into other weights. Forcing a code path on one
machine shows the effect without a second machine: ``MKL_CBWR=AVX512`` here is the default path, ``AVX2`` is the
kind of path another CPU takes, ``COMPATIBLE`` is MKL's vendor-independent mode (slower). The suite's runs record
their base's weight digest, so RESULTS.md can say when a task's runs sit on two builds of one base.
Writes ``benchmarks/results/base_build_reproducibility.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
SETTINGS = {  # name -> extra environment of the build process
    "default": {},
    "default, again": {},
    "MKL_CBWR=AVX512": {"MKL_CBWR": "AVX512"},
    "MKL_CBWR=AVX2": {"MKL_CBWR": "AVX2"},
    "MKL_CBWR=COMPATIBLE": {"MKL_CBWR": "COMPATIBLE"},
}


def build(recipe_path: str, overrides: list[str], out: Path) -> None:
    """One BC build of the recipe's base into ``out`` (run in a fresh process: MKL reads MKL_CBWR once)."""
    import torch
    from accelerate import Accelerator

    from vla_steer.config import load_recipe
    from vla_steer.pipeline import base_policy_config, ensure_demos
    from vla_steer.policies.bc import train_bc

    torch.set_num_threads(1)
    recipe = load_recipe(recipe_path, overrides)
    b = recipe.base
    start = time.perf_counter()
    train_bc(base_policy_config(recipe), ensure_demos(recipe, show_progress=False), steps=b.bc_steps,
             batch_size=b.bc_batch_size, lr=b.bc_lr, seed=b.seed, output_dir=out, accelerator=Accelerator(cpu=True),
             show_progress=False)
    (out / "seconds.json").write_text(json.dumps(time.perf_counter() - start))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--build-into", type=Path, help=argparse.SUPPRESS)  # worker mode
    args = parser.parse_args()
    if args.build_into:
        return build(args.recipe, args.overrides, args.build_into)

    import torch

    from vla_steer.config import load_recipe
    from vla_steer.hub.fingerprint import base_fingerprint
    from vla_steer.pipeline import base_policy_config, ensure_demos
    from vla_steer.policies.base import load_chunk_policy
    from vla_steer.provenance import hardware

    recipe = load_recipe(args.recipe, args.overrides)
    demos = ensure_demos(recipe)  # once, before the builds: they all read the same demonstrations
    builds = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name, extra in SETTINGS.items():
            out = Path(scratch) / f"build{len(builds)}"
            env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}
            subprocess.run([sys.executable, __file__, args.recipe, *args.overrides, "--build-into", str(out)],
                           env=env, check=True)
            policy = load_chunk_policy(out)
            builds[name] = {"weights": base_fingerprint(policy)["weights"],
                            "seconds": json.loads((out / "seconds.json").read_text()),
                            "state": {k: v.clone() for k, v in policy.state_dict().items()}}
            print(f"{name:<22} weights {builds[name]['weights'][:12]}  ({builds[name]['seconds']:.0f} s)", flush=True)
    reference = builds["default"]["state"]
    for build_ in builds.values():
        state = build_.pop("state")
        build_["max_abs_weight_difference_to_default"] = max(
            float((state[k] - reference[k]).abs().max()) for k in reference)
    result = {"recipe": args.recipe, "overrides": args.overrides, "demonstrations": demos.name,
              "policy": asdict(base_policy_config(recipe)), "bc_steps": recipe.base.bc_steps, "seed": recipe.base.seed,
              "torch": torch.__version__, "cpu": hardware()["processor"], "builds": builds}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "base_build_reproducibility.json"
    path.write_text(json.dumps(result, indent=2))
    for name, build_ in builds.items():
        print(f"{name:<22} max |w - w_default| = {build_['max_abs_weight_difference_to_default']:.3g}")
    print(f"-> {path}")


if __name__ == "__main__":
    main()
