"""Latency and memory of steering pi0 through its initial noise, against LeRobot's own inference path.

    PYTHONPATH=.pi-overlay HF_HUB_OFFLINE=1 python benchmarks/pi0_latency.py --size tiny          # smoke run
    PYTHONPATH=.pi-overlay HF_HUB_OFFLINE=1 python benchmarks/pi0_latency.py --rounds 5 --dtype bfloat16

pi0 (LeRobot's ``PI0Policy``, built by ``tests/tiny_pi0.py``: ``--size full`` is the real 3.6B architecture,
``--size tiny`` the unit-test one; random weights either way), batch 1, ``--cameras`` images of ``--image-size`` px
and a short tokenised prompt. Per action chunk, three ways to act:

* ``base``: ``policy.predict_action_chunk(batch, noise=w)``, LeRobot's path (one prefix pass + the Euler loop);
* ``steered``: ``PI0Adapter.encode`` (one prefix pass, KV cache kept) -> LP-DS head ``z = clip(eps + Delta(s))``
  on ``Context.features`` -> ``LatentLayout.to_noise`` -> ``PI0Adapter.decode`` (the Euler loop on that cache);
* ``naive``: a separate prefix pass only for the head's features, then ``predict_action_chunk(noise=head's z)``,
  i.e. two prefix passes per chunk.

The three are timed in ONE process, interleaved in rounds (order rotated every round, ``--warmup`` untimed calls
each first) so that load from other jobs hits them alike; medians and ratios to ``base`` are reported.

Memory is measured in fresh subprocesses of this script (``--phase memory-inference`` / ``--phase memory-update``),
one model at a time, each reporting its peak minus the RSS right after the model and inputs were built:

* ``inference``: base chunks alone;
* ``update``: one steering update beside the frozen pi0: build the LP-DS head (latent critic, recipe-default
  ``HeadConfig``) and its optimisers, encode ``--update-batch`` observations, one latent-critic TD step + one
  actor step (+ the dual step) on ``Context.features``. Nothing backpropagates into pi0.

Writes ``benchmarks/results/pi0_latency.json`` (``pi0_latency_tiny.json`` for ``--size tiny``, so a smoke run
does not overwrite the real numbers; ``--output`` to choose) and prints a short table.

Cost of ``--size full`` on a CPU: every phase builds the model anew (about 1.5-2 min; LeRobot initialises in
float32 and then casts, so construction peaks near 15 GB of RSS even for bfloat16, which then holds ~7.6 GB).
``--skip-memory`` runs the timing phase only.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "tests"))  # tiny_pi0: LeRobot's pi0 at any size, random weights
VARIANTS = ("base", "steered", "naive")
MEMORY_PHASES = ("memory-inference", "memory-update")


# ------------------------------------------------------------------------------------------------------------
# model, inputs, head


def require_patched_transformers() -> None:
    try:
        from transformers.models.siglip import check
    except ImportError:
        sys.exit("pi0 needs the openpi-patched transformers: build it with `scripts/make_pi_env.sh .pi-overlay` "
                 "and run with PYTHONPATH=.pi-overlay")
    if not check.check_whether_transformers_replace_is_installed_correctly():
        sys.exit("the transformers on the path has openpi's check module but fails its version check")


def build(args):
    """``(policy, adapter, config)`` on ``args.device``: pi0 at ``args.size``, seeded random weights, frozen."""
    from tiny_pi0 import FULL, TINY, make_pi_policy

    from vla_steer.adapters.pi0 import PI0Adapter

    torch.manual_seed(0)
    # TINY keeps the unit tests' small chunk / steps / token length; FULL keeps LeRobot's defaults (50, 10, 48).
    policy = make_pi_policy("pi0", FULL if args.size == "full" else TINY, cameras=args.cameras,
                            state_dim=args.state_dim, action_dim=args.action_dim, image_size=args.image_size,
                            dtype=args.dtype, device=args.device)
    adapter = PI0Adapter(policy)  # freezes the policy in place (eval, requires_grad False)
    return policy, adapter, policy.config


def make_observations(config, batch: int, prompt: str, seed: int, device: str) -> dict[str, torch.Tensor]:
    """What ``predict_action_chunk`` takes (LeRobot's preprocessor output): images in [0, 1], a normalised state,
    the prompt as right-padded tokens. The tokenizer is the tests' word-level stand-in for PaliGemma's (gated):
    only the token count matters for the cost, and the prefix always runs over ``tokenizer_max_length`` tokens."""
    from tiny_pi0 import tiny_tokenizer

    g = torch.Generator().manual_seed(seed)
    obs = {key: torch.rand(batch, *feature.shape, generator=g)
           for key, feature in config.image_features.items()}
    obs["observation.state"] = torch.randn(batch, config.robot_state_feature.shape[0], generator=g)
    tokens = tiny_tokenizer()([prompt + "\n"] * batch, padding="max_length", truncation=True,
                              max_length=config.tokenizer_max_length, return_tensors="pt")
    obs["observation.language.tokens"] = tokens["input_ids"]
    obs["observation.language.attention_mask"] = tokens["attention_mask"].bool()
    return {key: value.to(device) for key, value in obs.items()}


def build_head(adapter, device: str):
    """LP-DS as ``vla_steer`` trains it on a VLA: recipe-default ``HeadConfig`` and the latent critic (the KV
    cache is too big for a replay buffer, so the critic is trained on ``Context.features`` and latents)."""
    from accelerate import Accelerator

    from vla_steer.adapters.base import LatentLayout
    from vla_steer.algorithms import build_algorithm
    from vla_steer.algorithms.configs import LPDSConfig
    from vla_steer.config import HeadConfig

    head = HeadConfig()
    layout = LatentLayout(head.latent_layout, adapter.noise_shape)
    accelerator = Accelerator(cpu=torch.device(device).type == "cpu")
    algo = build_algorithm(LPDSConfig(critic="latent"), head, adapter, layout, accelerator)
    return algo, layout, head


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------------------------------------
# timing


class Clock:
    """Wall-clock seconds, synchronising CUDA so that queued kernels are counted where they were launched."""

    def __init__(self, device: str):
        self.cuda = torch.device(device).type == "cuda"

    def __call__(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


def run_timing(args) -> dict:
    build_start = time.perf_counter()
    policy, adapter, config = build(args)
    build_s = time.perf_counter() - build_start
    algo, layout, head_cfg = build_head(adapter, args.device)
    obs = make_observations(config, 1, args.prompt, seed=0, device=args.device)
    clock = Clock(args.device)

    def base() -> dict[str, float]:
        t0 = clock()
        w = adapter.sample_prior_noise(1)
        policy.predict_action_chunk(dict(obs), noise=w)
        return {"total": clock() - t0}

    prefix_tokens = []

    def steered() -> dict[str, float]:
        t0 = clock()
        context = adapter.encode(dict(obs))
        t1 = clock()
        prefix_tokens.append(context.decode_state.prefix_pad_masks.shape[1])
        noise = layout.to_noise(algo.act(context.features))
        t2 = clock()
        adapter.decode(context, noise)
        t3 = clock()
        return {"total": t3 - t0, "encode": t1 - t0, "head": t2 - t1, "decode": t3 - t2}

    def naive() -> dict[str, float]:
        t0 = clock()
        features = adapter.encode(dict(obs)).features  # the KV cache of this pass is thrown away
        noise = layout.to_noise(algo.act(features))
        t1 = clock()
        policy.predict_action_chunk(dict(obs), noise=noise)
        t2 = clock()
        return {"total": t2 - t0, "features_pass": t1 - t0, "predict_action_chunk": t2 - t1}

    functions = {"base": base, "steered": steered, "naive": naive}
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    with torch.no_grad():
        for name in VARIANTS:
            for _ in range(args.warmup):
                functions[name]()
        for round_ in range(args.rounds):
            shift = round_ % len(VARIANTS)
            for name in VARIANTS[shift:] + VARIANTS[:shift]:
                samples[name].append(functions[name]())
                print(f"  round {round_ + 1}/{args.rounds} {name:<8} {samples[name][-1]['total']:.3f} s", flush=True)

    medians = {name: {part: statistics.median(s[part] for s in runs) for part in runs[0]}
               for name, runs in samples.items()}
    base_s = medians["base"]["total"]
    return {
        "architecture": {
            "policy": "lerobot PI0Policy (tests/tiny_pi0.py sized builder, random weights)", "size": args.size,
            "parameters": parameter_count(policy),
            "vlm_width": adapter.hidden_dim, "chunk_size": config.chunk_size,
            "max_action_dim": config.max_action_dim, "num_inference_steps": adapter.num_inference_steps,
            "tokenizer_max_length": config.tokenizer_max_length,
            "prompt_tokens": int(obs["observation.language.attention_mask"].sum()),
            "prefix_tokens": prefix_tokens[0],  # image tokens of every camera + the padded prompt
        },
        "head": {"algorithm": "lpds (critic: latent)", "head_config": dataclasses.asdict(head_cfg),
                 "feature_dim": adapter.feature_dim, "latent_dim": layout.latent_dim,
                 "delta_parameters": parameter_count(algo.delta_net),
                 "critic_parameters": parameter_count(algo.noise_critic)},
        "build_s": build_s,
        "seconds_per_chunk": {name: [s["total"] for s in runs] for name, runs in samples.items()},
        "median_s": medians,
        "ratio_to_base": {name: medians[name]["total"] / base_s for name in VARIANTS},
        # On a shared machine the fastest round is the one least hit by other jobs: a second view, not the headline.
        "min_s": {name: min(s["total"] for s in runs) for name, runs in samples.items()},
    }


# ------------------------------------------------------------------------------------------------------------
# memory (each phase in a fresh process)


def _status_kb(field: str) -> int | None:
    """A ``VmRSS`` / ``VmHWM`` line of /proc/self/status in KiB (Linux), or None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS; Linux >= 4.0."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_kb(reset_ok: bool) -> int:
    if reset_ok:
        return _status_kb("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux; includes construction


def run_memory(args) -> dict:
    device = torch.device(args.device)
    policy, adapter, config = build(args)
    batch = 1 if args.phase == "memory-inference" else args.update_batch
    obs = make_observations(config, batch, args.prompt, seed=1, device=args.device)
    gc.collect()
    baseline_kb = _status_kb("VmRSS")
    reset_ok = _reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        cuda_baseline = torch.cuda.memory_allocated()

    start = time.perf_counter()
    extra: dict = {}
    if args.phase == "memory-inference":
        for _ in range(2):  # the second call shows whether anything grows after the first
            policy.predict_action_chunk(dict(obs), noise=adapter.sample_prior_noise(1))
    else:
        algo, layout, _ = build_head(adapter, args.device)
        context = adapter.encode(dict(obs))  # no_grad: the head's inputs carry no graph into pi0
        features = context.features
        del context  # the update needs the features only; the KV cache goes
        update_batch = {
            "features": features,
            "next_features": features.roll(1, dims=0),  # stand-in successors: the cost does not depend on them
            "latent": algo.prior_latent(batch),
            "reward": torch.randn(batch, device=device),
            "discount": torch.full((batch,), 0.99, device=device),
            "terminated": torch.zeros(batch, device=device),
        }
        extra["update_metrics"] = algo.update(update_batch)
        assert not any(p.requires_grad or p.grad is not None for p in policy.parameters()), "pi0 must stay frozen"
        extra["head_parameters_incl_target"] = parameter_count(algo)
    seconds = time.perf_counter() - start

    peak_kb = _peak_rss_kb(reset_ok)
    result = {
        "phase": args.phase, "batch": batch, "seconds": seconds,
        "rss_after_build_mib": baseline_kb / 1024, "peak_rss_mib": peak_kb / 1024,
        "peak_minus_build_rss_mib": (peak_kb - baseline_kb) / 1024,
        "rss_method": ("VmHWM after resetting it (/proc/self/clear_refs = 5) once the model and inputs were built"
                       if reset_ok else "ru_maxrss: lifetime peak, INCLUDES model construction"),
        **extra,
    }
    if device.type == "cuda":
        result["cuda_baseline_allocated_mib"] = cuda_baseline / 2**20
        result["cuda_peak_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
        result["cuda_peak_minus_baseline_mib"] = (torch.cuda.max_memory_allocated() - cuda_baseline) / 2**20
    return result


# ------------------------------------------------------------------------------------------------------------
# orchestration


def run_phase_subprocess(phase: str) -> dict:
    """This script again with ``--phase``, in a fresh process (nothing of other phases in its heap)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "phase.json"
        command = [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:],
                   "--phase", phase, "--phase-output", str(out)]  # argparse: the last --phase wins
        print(f"[{phase}] fresh process ...", flush=True)
        subprocess.run(command, check=True)
        return json.loads(out.read_text())


def versions() -> dict:
    from vla_steer.provenance import hardware, package_versions

    return {**package_versions(), **hardware()}


def print_table(result: dict) -> None:
    timing, arch = result["timing"], result["timing"]["architecture"]
    print(f"\npi0 {arch['size']} ({arch['parameters'] / 1e6:,.1f}M params), {result['device']} {result['dtype']}, "
          f"{result['threads']} threads, {arch['prefix_tokens']} prefix tokens, {result['rounds']} rounds")
    print(f"{'path':<9}{'median s/chunk':>16}{'x base':>9}{'min s':>10}  breakdown (median s)")
    for name in VARIANTS:
        parts = {k: v for k, v in timing["median_s"][name].items() if k != "total"}
        detail = ", ".join(f"{k} {v:.3f}" for k, v in parts.items())
        print(f"{name:<9}{timing['median_s'][name]['total']:>16.3f}{timing['ratio_to_base'][name]:>9.2f}"
              f"{timing['min_s'][name]:>10.3f}  {detail}")
    for name, mem in result.get("memory", {}).items():
        line = (f"memory {name:<10} peak RSS - RSS after build: {mem['peak_minus_build_rss_mib']:8.1f} MiB "
                f"(RSS after build {mem['rss_after_build_mib']:.0f} MiB)")
        if "cuda_peak_minus_baseline_mib" in mem:
            line += f", CUDA +{mem['cuda_peak_minus_baseline_mib']:.1f} MiB"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="LeRobot's pi0 precision (bfloat16 keeps its float32 norms / patch embedding)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls of each path before the rounds")
    parser.add_argument("--cameras", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=224, help="a multiple of the 14 px patch")
    parser.add_argument("--state-dim", type=int, default=8)
    parser.add_argument("--action-dim", type=int, default=7)
    parser.add_argument("--prompt", default="pick the red cube and place it on the blue block")
    parser.add_argument("--update-batch", type=int, default=4, help="observations encoded for the update phase")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--skip-memory", action="store_true", help="timing only")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--phase", choices=("all", "timing", *MEMORY_PHASES), default="all",
                        help="internal: run one phase in this process")
    parser.add_argument("--phase-output", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    require_patched_transformers()

    if args.phase != "all":  # a worker: one phase, its result as JSON for the parent
        result = run_timing(args) if args.phase == "timing" else run_memory(args)
        args.phase_output.write_text(json.dumps(result, indent=2))
        return

    # Every phase in its own process: at most one pi0 in memory at a time (3.6B parameters).
    started = time.perf_counter()
    result = {
        "device": args.device, "dtype": args.dtype, "threads": torch.get_num_threads(), "rounds": args.rounds,
        "warmup": args.warmup, "batch": 1, "cameras": args.cameras, "image_size": args.image_size,
        "prompt": args.prompt, "versions": versions(),
        "timing": run_phase_subprocess("timing"),
    }
    if not args.skip_memory:
        result["memory"] = {phase.removeprefix("memory-"): run_phase_subprocess(phase) for phase in MEMORY_PHASES}
        result["memory_method"] = (
            "each phase in a fresh process of this script; peak RSS (VmHWM, reset after the model and inputs were "
            "built) minus the RSS at that point; on CUDA also torch.cuda.max_memory_allocated minus the allocation "
            "at that point. 'update' includes building the LP-DS head and its Adam optimisers.")
    result["wall_s"] = time.perf_counter() - started

    output = args.output or RESULTS / ("pi0_latency.json" if args.size == "full" else "pi0_latency_tiny.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    print_table(result)
    print(f"-> {output}")


if __name__ == "__main__":
    main()
