"""The update as the Learner runs it, eagerly and as a CUDA graph.

On any machine: an update's metrics stay on the device until read; the warm-up that a capture needs leaves no trace
(weights and optimiser states are restored, so the next update is the one a fresh learner would take); a CPU learner
never tries to capture. On a CUDA machine (the GPU runs of benchmarks/gpu_update_speed.py): graphed updates give the
weights eager ones give.
"""

import copy

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from vla_steer.adapters import NativePolicyAdapter
from vla_steer.adapters.base import LatentLayout
from vla_steer.algorithms import algorithm_config, build_algorithm
from vla_steer.config import HeadConfig
from vla_steer.policies import ChunkPolicyConfig, build_chunk_policy
from vla_steer.training.cuda_graph import _restore, _snapshot, graphed_update

OBS_DIM, ACTION_DIM, HORIZON, BATCH = 5, 2, 2, 32
METHODS = [("dsrl_sac", {}), ("dsrl_na", {}), ("lpds", {"critic": "action"}), ("lpds", {"critic": "latent"})]


def learner(name: str, fields: dict, device: str = "cpu"):
    torch.manual_seed(0)
    policy = build_chunk_policy(ChunkPolicyConfig(type="diffusion", obs_dim=OBS_DIM, action_dim=ACTION_DIM,
                                                  horizon=HORIZON, n_action_steps=HORIZON, hidden_dim=32,
                                                  num_layers=2, num_inference_steps=2))
    AcceleratorState._reset_state(reset_partial_state=True)  # a process-wide singleton: else the first device sticks
    accelerator = Accelerator(cpu=device == "cpu")
    adapter = NativePolicyAdapter(policy.to(accelerator.device))
    layout = LatentLayout("full", adapter.noise_shape)
    head = HeadConfig(hidden_dim=32, num_layers=2)
    return build_algorithm(algorithm_config(name, batch_size=BATCH, **fields), head, adapter, layout, accelerator)


def batch(seed: int, device: str = "cpu") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rows = {"features": OBS_DIM, "next_features": OBS_DIM, "decode_state": OBS_DIM, "next_decode_state": OBS_DIM,
            "latent": HORIZON * ACTION_DIM, "action": HORIZON * ACTION_DIM}
    out = {key: torch.randn(BATCH, width, generator=g) for key, width in rows.items()}
    out.update(reward=torch.randn(BATCH, generator=g), discount=torch.full((BATCH,), 0.99), terminated=torch.zeros(BATCH))
    return {key: value.to(device) for key, value in out.items()}


def weights(algo) -> torch.Tensor:
    return torch.cat([p.detach().flatten().float().cpu() for p in algo.parameters()])


@pytest.mark.parametrize("name,fields", METHODS)
def test_metrics_stay_on_the_device_until_read(name, fields):
    algo = learner(name, fields)
    metrics = algo.update_on_device(batch(0))
    assert metrics and all(torch.is_tensor(v) and v.dim() == 0 and not v.requires_grad for v in metrics.values())
    as_floats = algo.update(batch(1))
    assert as_floats.keys() == metrics.keys() and all(isinstance(v, float) for v in as_floats.values())


@pytest.mark.parametrize("name,fields", METHODS)
def test_a_restored_warm_up_leaves_no_trace(name, fields):
    """The capture's warm-up updates are undone: weights, multiplier and Adam state (created by the warm-up, then
    zeroed = fresh) are back, so the next update is exactly the one a learner that never warmed up takes."""
    algo = learner(name, fields)
    algo.update(batch(0))  # some optimiser state exists before the snapshot, as in a resumed run
    twin = copy.deepcopy(algo)
    saved = _snapshot(algo)
    for seed in (1, 2, 3):
        algo.update(batch(seed))
    assert not torch.equal(weights(algo), weights(twin))
    _restore(algo, saved)
    assert torch.equal(weights(algo), weights(twin))
    torch.manual_seed(7)
    algo.update(batch(4))
    torch.manual_seed(7)
    twin.update(batch(4))
    assert torch.equal(weights(algo), weights(twin))
    for name_, optimizer in algo.optimizers.items():
        for p, q in zip(optimizer.state.values(), twin.optimizers[name_].state.values()):
            assert all(torch.equal(p[k], q[k]) for k in p if torch.is_tensor(p[k]))


def test_a_cpu_learner_is_never_captured():
    algo = learner("dsrl_sac", {})
    assert graphed_update(algo, batch(0)) is None
    assert algo.optimizers["critic"].state == {}  # nothing ran


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (run on the device machine)")
@pytest.mark.parametrize("name,fields", METHODS)
def test_graphed_updates_match_eager_ones_on_cuda(name, fields):
    eager, graphed = learner(name, fields, "cuda"), learner(name, fields, "cuda")
    assert graphed.device.type == "cuda"
    replay = graphed_update(graphed, batch(0, "cuda"))
    assert replay is not None, "the update could not be captured"
    assert torch.equal(weights(eager), weights(graphed)), "capture left a trace of its warm-up"
    start = weights(eager)
    for seed in range(1, 21):
        torch.cuda.manual_seed(seed)
        eager.update(batch(seed, "cuda"))
        torch.cuda.manual_seed(seed)
        replay(batch(seed, "cuda"))
    moved = (weights(eager) - start).norm()
    gap = (weights(eager) - weights(graphed)).norm()
    assert moved > 0 and gap <= 1e-3 * moved, f"graphed weights drift from eager ones: gap {gap:.3g}, moved {moved:.3g}"
