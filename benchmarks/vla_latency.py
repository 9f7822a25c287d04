"""Latency and memory of steering a LeRobot VLA through its initial noise, against LeRobot's own inference path.

    HF_HUB_OFFLINE=1 python benchmarks/vla_latency.py --policy smolvla --size tiny --rounds 2     # smoke run
    HF_HUB_OFFLINE=1 python benchmarks/vla_latency.py --policy xvla --device cuda --dtype bfloat16 --rounds 20
    PYTHONPATH=.pi-overlay HF_HUB_OFFLINE=1 python benchmarks/vla_latency.py --policy pi05 --dtype bfloat16

Policies (LeRobot 0.4.4's own classes, random weights, built offline by the tests' sized builders; ``--size full``
is the real architecture, ``--size tiny`` the unit-test one):

* ``pi0`` / ``pi05``: ``PI0Policy`` / ``PI05Policy`` (``tests/tiny_pi0.py``; PaliGemma 2B + Gemma 300M expert,
  3.5B parameters). They need the openpi-patched transformers: ``PYTHONPATH=.pi-overlay``
  (``scripts/make_pi_env.sh .pi-overlay``).
* ``smolvla``: ``SmolVLAPolicy`` on SmolVLM2-500M written to a temporary directory (``tests/tiny_vla.py``,
  ``FULL_SMOLVLM``; 450M parameters once LeRobot keeps 16 of the 32 text layers).
* ``xvla``: ``XVLAPolicy`` on Florence-2-large (``tests/tiny_xvla.py``, ``full_xvla_config``; 0.9B parameters).

SmolVLA and X-VLA run on the stock transformers of the environment, without the overlay.

Batch 1, ``--cameras`` images (default: at the policy's input resolution) and a prompt tokenised as the policy's
preprocessor does (the tests' offline word-level tokenizers stand in for the real ones, whose vocabularies are not
available offline; only the token count matters for the cost): pi0 and pi0.5 pad to ``tokenizer_max_length``
(pi0.5's prompt also carries the discretised state, written by LeRobot's own processor step), SmolVLA and X-VLA
pad as their ``pad_language_to`` says (SmolVLA: to the longest prompt, i.e. not at all for one prompt; X-VLA: to
``tokenizer_max_length``). Per action chunk, up to three ways to act:

* ``base``: LeRobot's ``policy.predict_action_chunk`` (one VLM pass + the denoising loop). pi0, pi0.5 and SmolVLA
  are given ``noise=w`` with ``w ~ N(0, I)``; X-VLA's ``predict_action_chunk`` ignores ``noise=`` and draws its
  own with ``torch.randn``, so its base is ``predict_action_chunk(batch)``;
* ``steered``: the adapter's ``encode`` (one VLM pass, its cache or token states kept) -> LP-DS head
  ``z = clip(eps + Delta(s))`` on ``Context.features`` -> ``LatentLayout.to_noise`` -> the adapter's ``decode``
  (the denoising loop on that cache);
* ``naive``: a separate VLM pass only for the head's features, then ``predict_action_chunk(noise=head's z)``:
  two VLM passes per chunk. Not for X-VLA: its ``predict_action_chunk`` cannot be steered (it ignores
  ``noise=``), so there is no LeRobot path to run the head's noise through.

The variants are timed in ONE process, interleaved in rounds (order rotated every round, ``--warmup`` untimed calls
each first) so that load from other jobs hits them alike; medians and ratios to ``base`` are reported. On CUDA the
clock synchronises the device around every measured span.

Memory is measured in fresh subprocesses of this script (``--phase memory-inference`` / ``--phase memory-update``),
one model at a time; each resets its peak counters once the model and inputs are built and reports the peak since
then, as a total and as the increment over the usage at that point: on the CPU the process RSS (VmHWM), on CUDA
``torch.cuda.max_memory_allocated`` (the RSS too, for reference).

* ``inference``: two base chunks;
* ``update``: one steering update beside the frozen VLA: build the LP-DS head (latent critic, recipe-default
  ``HeadConfig``) and its optimisers, encode ``--update-batch`` observations, one latent-critic TD step + one
  actor step (+ the dual step) on ``Context.features``. Nothing backpropagates into the VLA. The peak of the update
  step alone (from just before ``algo.update``) is reported beside the whole phase.

The goals (issue): steered / base median latency <= 1.03, and head-training memory <= 1.15x inference. Memory is
judged on the TOTAL peak with the model resident (what decides whether training fits on the GPU that serves the
policy); the ratio of increments over the resident model is reported too, and is far larger since inference at
batch 1 adds little to the weights.

Writes ``benchmarks/results/<policy>_latency[_tiny]_<device>.json`` (``--output`` to choose) and prints a table.

Cost of ``--size full`` on a CPU: every phase builds the model anew (pi0: about 1.5-2 min and ~15 GB of RSS while
LeRobot initialises in float32; SmolVLA and X-VLA: well under a minute). ``--skip-memory`` runs the timing phase
only.
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
sys.path[:0] = [str(ROOT / "tests"),  # the sized builders of LeRobot's VLAs and their offline tokenizers
                str(ROOT)]  # vla_steer from this checkout, also where it is not installed (a bare GPU machine)
MEMORY_PHASES = ("memory-inference", "memory-update")
LATENCY_GOAL = 1.03  # steered / base median seconds per chunk
MEMORY_GOAL = 1.15  # update / inference peak memory
FULL_ROBOT = {"state_dim": 8, "action_dim": 7}  # the robot of the full-size runs (the tiny builders have their own)


# ------------------------------------------------------------------------------------------------------------
# policies: how each family is built, fed and called


def require_patched_transformers() -> None:
    try:
        from transformers.models.siglip import check
    except ImportError:
        sys.exit("pi0 / pi0.5 need the openpi-patched transformers: build it with `scripts/make_pi_env.sh "
                 ".pi-overlay` and run with PYTHONPATH=.pi-overlay")
    if not check.check_whether_transformers_replace_is_installed_correctly():
        sys.exit("the transformers on the path has openpi's check module but fails its version check")


def robot_kwargs(args) -> dict:
    """Cameras and state / action widths for a builder: the full-size robot unless given; at tiny size the tiny
    builder's own widths (its padded ``max_state_dim`` / ``max_action_dim`` are small)."""
    given = {"state_dim": args.state_dim, "action_dim": args.action_dim}
    defaults = FULL_ROBOT if args.size == "full" else {}
    return {"cameras": args.cameras, **defaults, **{k: v for k, v in given.items() if v is not None}}


class Family:
    """What differs between the VLA families; the benchmark itself is written once, against this."""

    name: str
    needs_pi_overlay = False
    steerable_predict_action_chunk = True  # whether predict_action_chunk(noise=...) uses the noise (naive path)
    image_size: dict[str, int]  # default camera side (px) per size: the policy's input resolution

    def build(self, args):
        """``(policy, adapter)`` on ``args.device``: seeded random weights, frozen by the adapter."""
        raise NotImplementedError

    def language(self, policy, observation: dict, prompt: str) -> dict[str, torch.Tensor]:
        """``observation.language.tokens`` / ``attention_mask`` as the policy's preprocessor writes them."""
        raise NotImplementedError

    def base_chunk(self, policy, adapter, observation: dict) -> torch.Tensor:
        """LeRobot's own path for one chunk, from noise the base policy would draw itself."""
        noise = adapter.sample_prior_noise(next(iter(observation.values())).shape[0])
        return policy.predict_action_chunk(dict(observation), noise=noise)

    def token_counts(self, context) -> dict[str, int]:
        """How many tokens the VLM pass of ``encode`` ran over (images of every camera + the padded prompt)."""
        raise NotImplementedError

    def num_steps(self, adapter) -> int:
        raise NotImplementedError

    def vlm_width(self, adapter) -> int:
        return adapter.hidden_size


class PiFamily(Family):
    """pi0 / pi0.5 (``tests/tiny_pi0.py``). ``--dtype bfloat16`` is LeRobot's ``dtype="bfloat16"`` (it keeps its
    float32 norms and patch embedding). The camera side is also the model's resolution (a multiple of 14 px)."""

    needs_pi_overlay = True
    image_size = {"full": 224, "tiny": 28}  # LeRobot's default / tests/tiny_pi0.py's TINY_IMAGE_SIZE

    def __init__(self, name: str):
        self.name = name

    def build(self, args):
        from tiny_pi0 import FULL, TINY, make_pi_policy

        from vla_steer.adapters.pi0 import PI0Adapter, PI05Adapter

        torch.manual_seed(0)
        # TINY keeps the unit tests' small chunk / steps / token length; FULL keeps LeRobot's defaults
        # (chunk 50, 10 steps, 48 prompt tokens for pi0, 200 for pi0.5).
        policy = make_pi_policy(self.name, FULL if args.size == "full" else TINY, image_size=args.image_size,
                                dtype=args.dtype, device=args.device, **robot_kwargs(args))
        return policy, (PI0Adapter if self.name == "pi0" else PI05Adapter)(policy)

    def language(self, policy, observation, prompt):
        from tiny_common import language_tokens
        from tiny_pi0 import tiny_tokenizer

        batch = observation["observation.state"].shape[0]
        texts = ([prompt + "\n"] * batch if self.name == "pi0"  # LeRobot's Pi0NewLineProcessor
                 else pi05_prompts(policy.config, observation["observation.state"], prompt))
        return language_tokens(tiny_tokenizer(), texts, policy.config.tokenizer_max_length, padding="max_length")

    def token_counts(self, context):
        return {"prefix_tokens": context.decode_state.prefix_pad_masks.shape[1]}

    def num_steps(self, adapter):
        return adapter.num_inference_steps

    def vlm_width(self, adapter):
        return adapter.hidden_dim


def pi05_prompts(config, state: torch.Tensor, prompt: str) -> list[str]:
    """pi0.5's prompts with the discretised state, written by LeRobot's own processor step (the preprocessor runs it
    after normalisation, before tokenising)."""
    from lerobot.policies.pi05.processor_pi05 import Pi05PrepareStateTokenizerProcessorStep
    from lerobot.processor.core import TransitionKey

    step = Pi05PrepareStateTokenizerProcessorStep(max_state_dim=config.max_state_dim)
    transition = {TransitionKey.OBSERVATION: {"observation.state": state.cpu()},
                  TransitionKey.COMPLEMENTARY_DATA: {"task": [prompt] * state.shape[0]}}
    return step(transition)[TransitionKey.COMPLEMENTARY_DATA]["task"]


class SmolVLAFamily(Family):
    """SmolVLA (``tests/tiny_vla.py``). ``--dtype bfloat16`` casts the VLM only, as LeRobot's
    ``load_vlm_weights=True`` loads it (``from_pretrained(torch_dtype="bfloat16")``); the expert and the
    projections stay float32 and LeRobot casts between them. Cameras are resized with padding to 512 px (32 tiny)."""

    name = "smolvla"
    image_size = {"full": 512, "tiny": 32}

    def build(self, args):
        from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
        from tiny_vla import FULL_SMOLVLM, full_smolvla_config, tiny_smolvla_config, write_tiny_smolvlm

        from vla_steer.adapters.smolvla import SmolVLAAdapter

        full = args.size == "full"
        # SmolVLA reads the VLM's config and processor from this directory at construction only.
        with tempfile.TemporaryDirectory() as vlm_dir:
            write_tiny_smolvlm(vlm_dir, **(FULL_SMOLVLM if full else {}))
            make_config = full_smolvla_config if full else tiny_smolvla_config
            config = make_config(vlm_dir, camera_shape=(3, args.image_size, args.image_size), device=args.device,
                                 **robot_kwargs(args))
            torch.manual_seed(0)
            policy = SmolVLAPolicy(config)
        if args.dtype == "bfloat16":
            policy.model.vlm_with_expert.vlm.to(torch.bfloat16)
        return policy.to(args.device), SmolVLAAdapter(policy)

    def language(self, policy, observation, prompt):
        from tiny_common import language_tokens

        batch = observation["observation.state"].shape[0]
        tokenizer = policy.model.vlm_with_expert.processor.tokenizer
        return language_tokens(tokenizer, [prompt + "\n"] * batch,  # LeRobot's SmolVLANewLineProcessor
                               policy.config.tokenizer_max_length, padding=policy.config.pad_language_to)

    def token_counts(self, context):
        return {"prefix_tokens": context.decode_state["prefix_pad_masks"].shape[1]}

    def num_steps(self, adapter):
        return adapter.num_steps


class XVLAFamily(Family):
    """X-VLA (``tests/tiny_xvla.py``). ``--dtype bfloat16`` is LeRobot's ``XVLAConfig.dtype`` (the whole model).
    Cameras are resized with padding to 224 px (32 tiny), one view per camera."""

    name = "xvla"
    steerable_predict_action_chunk = False
    image_size = {"full": 224, "tiny": 32}

    def build(self, args):
        from tiny_xvla import full_xvla_config, tiny_xvla_config, xvla_policy

        from vla_steer.adapters.xvla import XVLAAdapter

        make_config = full_xvla_config if args.size == "full" else tiny_xvla_config
        robot = robot_kwargs(args)
        views = {} if args.size == "full" else {"num_image_views": robot["cameras"]}  # tiny's default pads a view
        config = make_config(camera_shape=(3, args.image_size, args.image_size), dtype=args.dtype,
                             device=args.device, **views, **robot)
        policy = xvla_policy(config, seed=0).to(args.device)
        return policy, XVLAAdapter(policy)

    def language(self, policy, observation, prompt):
        from tiny_common import language_tokens
        from tiny_xvla import tiny_bart_tokenizer

        batch = observation["observation.state"].shape[0]
        return language_tokens(tiny_bart_tokenizer(), [prompt] * batch, policy.config.tokenizer_max_length,
                               padding=policy.config.pad_language_to)

    def base_chunk(self, policy, adapter, observation):
        return policy.predict_action_chunk(dict(observation))  # noise= would be ignored: X-VLA draws its own

    def token_counts(self, context):
        # the encoder reads view 0's image tokens + the prompt; the other views go to the action transformer
        return {"encoder_tokens": context.decode_state["vlm_features"].shape[1],
                "aux_visual_tokens": context.decode_state["aux_visual_inputs"].shape[1]}

    def num_steps(self, adapter):
        return adapter.num_denoising_steps


FAMILIES: dict[str, Family] = {"pi0": PiFamily("pi0"), "pi05": PiFamily("pi05"), "smolvla": SmolVLAFamily(),
                               "xvla": XVLAFamily()}


def variants(family: Family) -> tuple[str, ...]:
    return ("base", "steered", "naive") if family.steerable_predict_action_chunk else ("base", "steered")


def dropped_variants(family: Family) -> dict[str, str]:
    if family.steerable_predict_action_chunk:
        return {}
    return {"naive": f"{family.name}'s predict_action_chunk ignores noise= (it draws its own with torch.randn), so "
                     "the head's noise cannot go through LeRobot's path"}


def make_observations(family: Family, policy, batch: int, prompt: str, seed: int, device: str) -> dict:
    """What ``predict_action_chunk`` takes (the preprocessor's output): images in [0, 1] per camera, a normalised
    state, the tokenised prompt."""
    from tiny_common import random_batch

    observation = random_batch(policy, batch, seed, tasks=[prompt] * batch, tokenize=lambda tasks: {})
    observation.update(family.language(policy, observation, prompt))
    return {key: value.to(device) for key, value in observation.items()}


def build_head(adapter, device: str):
    """LP-DS as ``vla_steer`` trains it on a VLA: recipe-default ``HeadConfig`` and the latent critic (the KV
    cache is too big for a replay buffer, so the critic is trained on ``Context.features`` and latents)."""
    from accelerate import Accelerator

    from vla_steer.adapters.base import LatentLayout
    from vla_steer.algorithms import build_algorithm
    from vla_steer.algorithms.configs import LPDSConfig
    from vla_steer.config import HeadConfig

    head = HeadConfig()
    layout = LatentLayout.from_head(head, adapter.noise_shape)
    accelerator = Accelerator(cpu=torch.device(device).type == "cpu")
    algo = build_algorithm(LPDSConfig(critic="latent"), head, adapter, layout, accelerator)
    return algo, layout, head


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def versions(device: str) -> dict:
    from vla_steer.provenance import git_commit, hardware, package_versions

    out = {**package_versions(), **hardware(), "commit": git_commit()}
    if torch.device(device).type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        out.update(gpu=torch.cuda.get_device_name(device), gpu_memory_gib=properties.total_memory / 2**30,
                   cuda_runtime=torch.version.cuda)
    return out


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


def variant_functions(family: Family, policy, adapter, algo, layout, observation: dict, clock: Clock,
                      token_counts: list[dict]) -> dict:
    """One action chunk per call, each returning its timed spans in seconds (``total`` and a breakdown)."""

    def base() -> dict[str, float]:
        t0 = clock()
        family.base_chunk(policy, adapter, observation)
        return {"total": clock() - t0}

    def steered() -> dict[str, float]:
        t0 = clock()
        context = adapter.encode(dict(observation))
        t1 = clock()
        token_counts.append(family.token_counts(context))
        noise = layout.to_noise(algo.act(context.features))
        t2 = clock()
        adapter.decode(context, noise)
        t3 = clock()
        return {"total": t3 - t0, "encode": t1 - t0, "head": t2 - t1, "decode": t3 - t2}

    def naive() -> dict[str, float]:
        t0 = clock()
        features = adapter.encode(dict(observation)).features  # the cache of this pass is thrown away
        noise = layout.to_noise(algo.act(features))
        t1 = clock()
        policy.predict_action_chunk(dict(observation), noise=noise)
        t2 = clock()
        return {"total": t2 - t0, "features_pass": t1 - t0, "predict_action_chunk": t2 - t1}

    functions = {"base": base, "steered": steered, "naive": naive}
    return {name: functions[name] for name in variants(family)}


def run_timing(args) -> dict:
    family = FAMILIES[args.policy]
    build_start = time.perf_counter()
    policy, adapter = family.build(args)
    build_s = time.perf_counter() - build_start
    algo, layout, head_cfg = build_head(adapter, args.device)
    observation = make_observations(family, policy, 1, args.prompt, seed=0, device=args.device)
    token_counts: list[dict] = []
    functions = variant_functions(family, policy, adapter, algo, layout, observation, Clock(args.device),
                                  token_counts)

    names = tuple(functions)
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    with torch.no_grad():
        for name in names:
            for _ in range(args.warmup):
                functions[name]()
        for round_ in range(args.rounds):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                samples[name].append(functions[name]())
                print(f"  round {round_ + 1}/{args.rounds} {name:<8} {samples[name][-1]['total']:.4f} s", flush=True)

    medians = {name: {part: statistics.median(s[part] for s in runs) for part in runs[0]}
               for name, runs in samples.items()}
    base_s = medians["base"]["total"]
    config = policy.config
    return {
        "versions": versions(args.device),
        "architecture": {
            "policy": f"lerobot {type(policy).__name__} (tests' sized builder, random weights)", "size": args.size,
            "parameters": parameter_count(policy),
            "vlm_width": family.vlm_width(adapter), "chunk_size": config.chunk_size,
            "noise_shape": list(adapter.noise_shape), "num_steps": family.num_steps(adapter),
            "tokenizer_max_length": config.tokenizer_max_length,
            "prompt_tokens": int(observation["observation.language.attention_mask"].sum()),
            **token_counts[0],
        },
        "head": {"algorithm": "lpds (critic: latent)", "head_config": dataclasses.asdict(head_cfg),
                 "feature_dim": adapter.feature_dim, "latent_dim": layout.latent_dim,
                 "delta_parameters": parameter_count(algo.delta_net),
                 "critic_parameters": parameter_count(algo.noise_critic)},
        "build_s": build_s,
        "seconds_per_chunk": {name: [s["total"] for s in runs] for name, runs in samples.items()},
        "median_s": medians,
        "ratio_to_base": {name: medians[name]["total"] / base_s for name in names},
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


class PeakMemory:
    """Peak memory since :meth:`reset` and the usage at that reset, in MiB: ``rss`` always (VmHWM after resetting it;
    where the kernel refuses, ``ru_maxrss``, which includes everything before), ``cuda`` on a CUDA device
    (``torch.cuda.max_memory_allocated``: tensors only, not the allocator's cache or the CUDA context)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.rss_reset_ok = False
        self.at_reset: dict[str, float] = {}

    def reset(self) -> None:
        gc.collect()
        self.at_reset = {"rss": _status_kb("VmRSS") / 1024}
        self.rss_reset_ok = _reset_peak_rss()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.at_reset["cuda"] = torch.cuda.memory_allocated() / 2**20

    def read(self) -> dict[str, dict[str, float]]:
        """``{kind: {"at_reset_mib", "peak_mib", "increment_mib"}}``."""
        peaks = {"rss": (_status_kb("VmHWM") if self.rss_reset_ok
                         else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024}  # KiB on Linux
        if self.cuda:
            torch.cuda.synchronize()
            peaks["cuda"] = torch.cuda.max_memory_allocated() / 2**20
        return {kind: {"at_reset_mib": self.at_reset[kind], "peak_mib": peak,
                       "increment_mib": peak - self.at_reset[kind]} for kind, peak in peaks.items()}


def merge_readings(first: dict, second: dict) -> dict:
    """Two consecutive readings as one, against the first baseline (the larger peak of the two)."""
    merged = {}
    for kind, reading in first.items():
        peak = max(reading["peak_mib"], second[kind]["peak_mib"])
        merged[kind] = {"at_reset_mib": reading["at_reset_mib"], "peak_mib": peak,
                        "increment_mib": peak - reading["at_reset_mib"]}
    return merged


def update_batch(algo, features: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
    batch = features.shape[0]
    return {
        "features": features,
        "next_features": features.roll(1, dims=0),  # stand-in successors: the cost does not depend on them
        "latent": algo.prior_latent(batch),
        "reward": torch.randn(batch, device=device),
        "discount": torch.full((batch,), 0.99, device=device),
        "terminated": torch.zeros(batch, device=device),
    }


def run_memory(args) -> dict:
    family = FAMILIES[args.policy]
    device = torch.device(args.device)
    policy, adapter = family.build(args)
    batch = 1 if args.phase == "memory-inference" else args.update_batch
    observation = make_observations(family, policy, batch, args.prompt, seed=1, device=args.device)
    meter = PeakMemory(device)
    meter.reset()

    start = time.perf_counter()
    result: dict = {"phase": args.phase, "batch": batch}
    if args.phase == "memory-inference":
        for _ in range(2):  # the second call shows whether anything grows after the first
            family.base_chunk(policy, adapter, observation)
        result["peak"] = meter.read()
    else:
        algo, _, _ = build_head(adapter, args.device)
        context = adapter.encode(dict(observation))  # no_grad: the head's inputs carry no graph into the VLA
        features = context.features
        del context  # the update needs the features only; the cache goes
        before_update = meter.read()
        meter.reset()
        result["update_metrics"] = algo.update(update_batch(algo, features, device))
        update_step = meter.read()
        assert not any(p.requires_grad or p.grad is not None for p in policy.parameters()), "the VLA must stay frozen"
        result["peak"] = merge_readings(before_update, update_step)
        result["peak_update_step_only"] = update_step
        result["head_parameters_incl_target"] = parameter_count(algo)
    result["seconds"] = time.perf_counter() - start
    result["rss_method"] = ("VmHWM after resetting it (/proc/self/clear_refs = 5) once the model and inputs were "
                            "built" if meter.rss_reset_ok else "ru_maxrss: lifetime peak, INCLUDES model construction")
    return result


# ------------------------------------------------------------------------------------------------------------
# orchestration


def run_phase_subprocess(argv: list[str], phase: str) -> dict:
    """This script again with ``--phase``, in a fresh process (nothing of other phases in its heap)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "phase.json"
        command = [sys.executable, str(Path(__file__).resolve()), *argv,
                   "--phase", phase, "--phase-output", str(out)]  # argparse: the last --phase wins
        print(f"[{phase}] fresh process ...", flush=True)
        subprocess.run(command, check=True)
        return json.loads(out.read_text())


def goals(timing: dict, memory: dict | None, device: str) -> dict:
    """The issue's targets, met or not: latency steered / base <= 1.03, update memory <= 1.15x inference."""
    ratio = timing["ratio_to_base"]["steered"]
    out = {"latency": {"steered_over_base_median": ratio, "goal": LATENCY_GOAL, "met": ratio <= LATENCY_GOAL}}
    if memory:
        kind = "cuda" if torch.device(device).type == "cuda" else "rss"
        inference, update = memory["inference"]["peak"][kind], memory["update"]["peak"][kind]
        total = update["peak_mib"] / inference["peak_mib"]
        increment = update["increment_mib"] / max(inference["increment_mib"], 1e-9)
        out["memory"] = {
            "measure": {"cuda": "torch.cuda.max_memory_allocated", "rss": "process RSS"}[kind],
            "definition": "total: peak with the model resident (decides whether training fits beside the policy); "
                          "increment: peak minus the usage once the model and inputs were built",
            "update_over_inference_total": total, "update_over_inference_increment": increment,
            "goal": MEMORY_GOAL, "met": total <= MEMORY_GOAL, "met_by_increment": increment <= MEMORY_GOAL,
        }
    return out


def default_output(args) -> Path:
    tiny = "_tiny" if args.size == "tiny" else ""
    return RESULTS / f"{args.policy}_latency{tiny}_{torch.device(args.device).type}.json"


def print_table(result: dict) -> None:
    timing, arch = result["timing"], result["timing"]["architecture"]
    tokens = ", ".join(f"{arch[k]} {k.replace('_', ' ')}" for k in ("prefix_tokens", "encoder_tokens",
                                                                    "aux_visual_tokens") if k in arch)
    gpu = result["versions"].get("gpu")
    print(f"\n{result['policy']} {arch['size']} ({arch['parameters'] / 1e6:,.1f}M params), {result['device']}"
          f"{f' ({gpu})' if gpu else ''} {result['dtype']}, {result['threads']} threads, {tokens}, "
          f"{result['rounds']} rounds")
    print(f"{'path':<9}{'median s/chunk':>16}{'x base':>9}{'min s':>10}  breakdown (median s)")
    for name in timing["median_s"]:
        parts = {k: v for k, v in timing["median_s"][name].items() if k != "total"}
        detail = ", ".join(f"{k} {v:.4f}" for k, v in parts.items())
        print(f"{name:<9}{timing['median_s'][name]['total']:>16.4f}{timing['ratio_to_base'][name]:>9.3f}"
              f"{timing['min_s'][name]:>10.4f}  {detail}")
    for name, reason in result["dropped_variants"].items():
        print(f"{name:<9}(not run: {reason})")
    for name, mem in result.get("memory", {}).items():
        line = ", ".join(f"{kind} peak {r['peak_mib']:.1f} MiB (+{r['increment_mib']:.1f} over {r['at_reset_mib']:.1f})"
                         for kind, r in mem["peak"].items())
        print(f"memory {name:<10} {line}")
    latency = result["goals"]["latency"]
    print(f"goal latency steered/base {latency['steered_over_base_median']:.3f} <= {LATENCY_GOAL}: "
          f"{'met' if latency['met'] else 'NOT met'}")
    if "memory" in result["goals"]:
        memory = result["goals"]["memory"]
        print(f"goal memory update/inference ({memory['measure']}) total {memory['update_over_inference_total']:.3f}"
              f" <= {MEMORY_GOAL}: {'met' if memory['met'] else 'NOT met'}; increments "
              f"{memory['update_over_inference_increment']:.2f}")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", choices=tuple(FAMILIES), required=True)
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="the policy's precision as LeRobot sets it (see each family: pi0 / pi0.5 keep float32 "
                             "norms, SmolVLA casts its VLM only, X-VLA the whole model)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls of each path before the rounds")
    parser.add_argument("--cameras", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=None,
                        help="camera side in px; default: the policy's input resolution (pi: 224, SmolVLA: 512, "
                             "X-VLA: 224; tiny: 28 / 32 / 32). For pi0 / pi0.5 also the model's resolution")
    parser.add_argument("--state-dim", type=int, default=None, help="default: 8 at full size, the tiny builder's")
    parser.add_argument("--action-dim", type=int, default=None, help="default: 7 at full size, the tiny builder's")
    parser.add_argument("--prompt", default="pick the red cube and place it on the blue block")
    parser.add_argument("--update-batch", type=int, default=4, help="observations encoded for the update phase")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--skip-memory", action="store_true", help="timing only")
    parser.add_argument("--output", type=Path, default=None,
                        help="default: benchmarks/results/<policy>_latency[_tiny]_<device type>.json")
    parser.add_argument("--phase", choices=("all", "timing", *MEMORY_PHASES), default="all",
                        help="internal: run one phase in this process")
    parser.add_argument("--phase-output", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.image_size is None:
        args.image_size = FAMILIES[args.policy].image_size[args.size]
    return args


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    family = FAMILIES[args.policy]
    if family.needs_pi_overlay:
        require_patched_transformers()

    if args.phase != "all":  # a worker: one phase, its result as JSON for the parent
        result = run_timing(args) if args.phase == "timing" else run_memory(args)
        args.phase_output.write_text(json.dumps(result, indent=2))
        return

    # Every phase in its own process: at most one model in memory at a time, and the parent never touches the
    # device (no CUDA context of its own beside the measured one).
    started = time.perf_counter()
    timing = run_phase_subprocess(argv, "timing")
    worker_versions = timing.pop("versions")
    result = {
        "policy": args.policy, "device": args.device, "dtype": args.dtype,
        "threads": worker_versions["torch_threads"], "rounds": args.rounds, "warmup": args.warmup, "batch": 1,
        "cameras": args.cameras, "image_size": args.image_size, "prompt": args.prompt, "versions": worker_versions,
        "variants": list(timing["median_s"]), "dropped_variants": dropped_variants(family),
        "timing": timing,
    }
    memory = None
    if not args.skip_memory:
        memory = {phase.removeprefix("memory-"): run_phase_subprocess(argv, phase) for phase in MEMORY_PHASES}
        result["memory"] = memory
        result["memory_method"] = (
            "each phase in a fresh process of this script; peak since the model and inputs were built, as a total "
            "and as the increment over the usage at that point: process RSS (VmHWM reset then), and on CUDA "
            "torch.cuda.max_memory_allocated (reset_peak_memory_stats then). 'update' includes building the LP-DS "
            "head and its Adam optimisers and encoding the update batch; 'peak_update_step_only' is algo.update "
            "alone, from just before it.")
    result["goals"] = goals(timing, memory, args.device)
    result["wall_s"] = time.perf_counter() - started

    output = args.output or default_output(args)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    print_table(result)
    print(f"-> {output}")


if __name__ == "__main__":
    main()
