"""One steering update captured as a CUDA graph and replayed: the update's few hundred small kernels launched at once.

A head's update is a handful of small MLPs (batch 256, width 256): on a GPU each kernel finishes before Python has
launched the next, so eager updates are bound by launch overhead, not arithmetic. Capturing ``update_on_device`` once
and replaying it removes that overhead; the maths is the same (see ``tests/test_cuda_graph.py`` for the
CPU-side contract and ``benchmarks/gpu_update_speed.py`` for the measured speed-up).

What makes the capture valid: the algorithms' ``update_on_device`` never waits for the device, their optimisers are
capturable on CUDA (``SteeringAlgorithm.make_optimizer``), and every batch is copied into the same static tensors.
Capture needs a few eager warm-up updates (on a side stream, as CUDA requires); their effect on the weights and
optimiser states is undone afterwards, so a graphed run starts from the same weights and optimiser state and takes as
many updates as an eager one (its random draws differ: the warm-up used some of the CUDA generator's stream).
"""

from __future__ import annotations

import warnings

import torch

from vla_steer.algorithms import SteeringAlgorithm


class CudaGraphUpdate:
    """``update(batch) -> metrics`` for ``algo``, replaying one captured update. Build it with :func:`graphed_update`,
    which falls back to eager updates where capture is impossible."""

    def __init__(self, algo: SteeringAlgorithm, example_batch: dict[str, torch.Tensor], warmup_updates: int = 3):
        self.algo = algo
        self.static_batch = {key: value.detach().clone() for key, value in example_batch.items()}
        saved = _snapshot(algo)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: lazily created optimiser state, cuBLAS workspaces, autograd caches
            for _ in range(warmup_updates):
                algo.update_on_device(self.static_batch)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_metrics = algo.update_on_device(self.static_batch)
        _restore(algo, saved)  # in place: the graph keeps pointing at the same tensors

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if batch.keys() != self.static_batch.keys():
            raise ValueError(f"a captured update takes the batch keys {sorted(self.static_batch)}, got {sorted(batch)}")
        for key, value in batch.items():
            self.static_batch[key].copy_(value)  # raises on a shape change (a different batch size needs a new graph)
        self.graph.replay()
        return self.static_metrics


def graphed_update(algo: SteeringAlgorithm, example_batch: dict[str, torch.Tensor]):
    """A CUDA-graph update for ``algo`` where it can be captured (one CUDA process), else ``None`` with a warning
    saying why; the weights are unchanged either way."""
    if algo.device.type != "cuda" or algo.accelerator.num_processes > 1:
        return None  # CPU, or gradients averaged across processes inside the update
    saved = _snapshot(algo)
    try:
        return CudaGraphUpdate(algo, example_batch)
    except Exception as error:  # noqa: BLE001 - any capture failure means: run eagerly, as before
        torch.cuda.synchronize()
        _restore(algo, saved)
        warnings.warn(f"{algo.name}: the update could not be captured as a CUDA graph ({type(error).__name__}: "
                      f"{error}); updates run eagerly. Set train.cuda_graph_updates=false to skip the attempt.",
                      stacklevel=2)
        return None


def _state_tensors(algo: SteeringAlgorithm) -> list[torch.Tensor]:
    tensors = list(algo.parameters()) + list(algo.buffers())
    for optimizer in algo.optimizers.values():
        for state in optimizer.state.values():
            tensors.extend(value for value in state.values() if torch.is_tensor(value))
    return tensors


def _snapshot(algo: SteeringAlgorithm) -> dict:
    return {"tensors": {id(t): t.detach().clone() for t in _state_tensors(algo)}}


@torch.no_grad()
def _restore(algo: SteeringAlgorithm, saved: dict) -> None:
    """Every parameter, buffer and optimiser-state tensor back to its snapshot, in place. Optimiser state created
    after the snapshot (by the warm-up) is zeroed, which is Adam's fresh state (step 0, zero moments)."""
    for tensor in _state_tensors(algo):
        before = saved["tensors"].get(id(tensor))
        tensor.copy_(before) if before is not None else tensor.zero_()
