"""benchmarks/vla_latency.py at the tiny sizes, in this process: every variant of SmolVLA and X-VLA runs, the update
phase leaves the VLA frozen, and the goals are judged on the total peak. pi0 / pi0.5 need the openpi-patched
transformers and are covered in tests/test_pi0_adapters.py. A few seconds each."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import vla_latency  # noqa: E402


def tiny_args(policy: str, *extra: str):
    return vla_latency.parse_args(["--policy", policy, "--size", "tiny", "--device", "cpu", "--rounds", "1",
                                   "--warmup", "0", *extra])


@pytest.mark.parametrize("policy, variants", [("smolvla", ["base", "steered", "naive"]), ("xvla", ["base", "steered"])])
def test_timing_runs_every_variant(policy, variants):
    timing = vla_latency.run_timing(tiny_args(policy))
    assert list(timing["median_s"]) == variants
    assert timing["ratio_to_base"]["base"] == 1.0
    assert all(seconds > 0 for runs in timing["seconds_per_chunk"].values() for seconds in runs)
    assert timing["architecture"]["size"] == "tiny" and timing["head"]["latent_dim"] > 0
    assert set(timing["median_s"]["steered"]) == {"total", "encode", "head", "decode"}


def test_xvla_drops_naive_with_a_reason():
    assert vla_latency.dropped_variants(vla_latency.FAMILIES["xvla"])["naive"]
    assert vla_latency.dropped_variants(vla_latency.FAMILIES["smolvla"]) == {}


def test_update_memory_phase_keeps_the_vla_frozen():
    result = vla_latency.run_memory(tiny_args("smolvla", "--phase", "memory-update", "--update-batch", "2"))
    rss = result["peak"]["rss"]
    assert rss["peak_mib"] >= result["peak_update_step_only"]["rss"]["at_reset_mib"]
    assert rss["increment_mib"] == pytest.approx(rss["peak_mib"] - rss["at_reset_mib"])
    assert {"critic_loss", "actor_loss"} <= set(result["update_metrics"])


def test_goals_judge_memory_on_the_total_peak():
    timing = {"ratio_to_base": {"base": 1.0, "steered": 1.02}}
    reading = lambda at_reset, peak: {"rss": {"at_reset_mib": at_reset, "peak_mib": peak,  # noqa: E731
                                              "increment_mib": peak - at_reset}}
    memory = {"inference": {"peak": reading(1000.0, 1010.0)}, "update": {"peak": reading(1000.0, 1110.0)}}
    goals = vla_latency.goals(timing, memory, "cpu")
    assert goals["latency"]["met"]
    assert goals["memory"]["update_over_inference_total"] == pytest.approx(1110 / 1010) and goals["memory"]["met"]
    assert goals["memory"]["update_over_inference_increment"] == pytest.approx(11.0)
    assert not goals["memory"]["met_by_increment"]


def test_default_output_names_size_and_device():
    assert vla_latency.default_output(tiny_args("xvla")).name == "xvla_latency_tiny_cpu.json"
    args = vla_latency.parse_args(["--policy", "pi0", "--device", "cuda"])
    assert vla_latency.default_output(args).name == "pi0_latency_cuda.json"
    assert args.image_size == 224
