"""The registered ``steered`` LeRobot policy on LeRobot's real SmolVLA (tiny, random, offline; tiny_vla.py).

Heads are built from a ``head_config.json`` + ``head.safetensors`` written exactly as the trainer writes them,
with weights set by hand (no RL run). Test (d) loads a saved directory through LeRobot's own plugin discovery in
a fresh interpreter, which needs the plugin distribution installed:
``pip install -e plugins/lerobot_policy_steered``.
"""

import json
import os
import pickle
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
from lerobot.policies.smolvla.processor_smolvla import make_smolvla_pre_post_processors
from lerobot.utils.constants import OBS_STATE
from safetensors.torch import load_file, save_file

from tiny_common import save_pusht_diffusion_base
from tiny_vla import save_pusht_smolvla_base, tiny_smolvla_batch, tiny_smolvla_policy, write_tiny_smolvlm
from vla_steer.adapters.base import LatentLayout
from vla_steer.config import HeadConfig
from vla_steer.lerobot_policy import HeadFormatError, SteeredConfig, SteeredPolicy
from vla_steer.steering import CriticEnsemble, ResidualPerturbation, TanhGaussianLatentPolicy

torch.set_num_threads(1)

CAMERA = "observation.images.cam0"
NOISE_SHAPE, FEATURE_DIM = (8, 8), 64  # tiny SmolVLA: chunk 8 x max_action_dim 8; "mean+last" of a 32-wide VLM
STATS = {
    OBS_STATE: {"mean": torch.tensor([1.0, -1.0, 0.5, 0.0]), "std": torch.tensor([2.0, 0.5, 1.0, 3.0])},
    "action": {"mean": torch.tensor([0.3, -2.0]), "std": torch.tensor([0.1, 4.0])},
}


def write_trainer_head(directory: Path, algorithm: str = "lpds", delta_bias: float = 0.0, bound: float = 10.0,
                       latent_layout: str = "full", critic: bool = False, latent_rows: int | None = None,
                       steered_dims: int | None = None) -> Path:
    """``head/`` as ``SteeringTrainer.save_head`` writes it, with hand-set weights.

    LP-DS: the residual's last layer is zero except its bias, so ``Delta(s) = delta_bias`` for every state.
    """
    head = HeadConfig(latent_layout=latent_layout, bound=bound, hidden_dim=16, num_layers=1, encoder_dim=8,
                      latent_rows=latent_rows, steered_dims=steered_dims)
    layout = LatentLayout.from_head(head, NOISE_SHAPE)
    torch.manual_seed(3)
    if algorithm == "lpds":
        modules = {"delta": ResidualPerturbation(FEATURE_DIM, layout.latent_dim, 16, 1, 8)}
        torch.nn.init.constant_(modules["delta"].net[-1].bias, delta_bias)
    else:
        modules = {"actor": TanhGaussianLatentPolicy(FEATURE_DIM, layout.latent_dim, 16, 1, bound, 8)}
    if critic:  # the latent critic Q^W(s, z) the trainer ships for best-of-K
        modules["critic"] = CriticEnsemble(FEATURE_DIM, layout.latent_dim, head.num_critics, 16, 1, 8)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"{name}.{k}": v.detach().cpu().contiguous() for name, m in modules.items() for k, v in m.state_dict().items()}
    save_file(tensors, directory / "head.safetensors")
    (directory / "head_config.json").write_text(json.dumps({
        "algorithm": algorithm, "head": asdict(head), "noise_shape": list(NOISE_SHAPE),
        "latent_shape": list(layout.latent_shape), "feature_dim": FEATURE_DIM, "adapter": "smolvla", "env": "test",
        **({"critic": "latent"} if critic else {})}))
    return directory


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("steered")


@pytest.fixture(scope="module")
def base_dir(root):
    """A tiny SmolVLA saved the LeRobot way: config, weights and its pre/post processor files."""
    vlm_dir = write_tiny_smolvlm(root / "vlm")
    policy = tiny_smolvla_policy(vlm_dir, seed=0)
    preprocessor, postprocessor = make_smolvla_pre_post_processors(policy.config, dataset_stats=STATS)
    directory = root / "base"
    policy.save_pretrained(directory)
    preprocessor.save_pretrained(directory)
    postprocessor.save_pretrained(directory)
    return directory


def load_base(base_dir) -> SmolVLAPolicy:
    return SmolVLAPolicy.from_pretrained(base_dir)


def steered(base_dir, tmp_path, **head_kwargs) -> SteeredPolicy:
    head_dir = write_trainer_head(tmp_path / f"head_{len(list(tmp_path.iterdir()))}", **head_kwargs)
    return SteeredPolicy.from_base(load_base(base_dir), head_dir, base_path=base_dir,
                                   adapter_kwargs={"pooling": "mean+last"})


def eps(batch_size: int, seed: int) -> torch.Tensor:
    return torch.randn(batch_size, *NOISE_SHAPE, generator=torch.Generator().manual_seed(seed))


# -------------------------------------------------------------------------------------------------------------
def test_zero_delta_is_the_base_and_a_nonzero_head_steers(base_dir, tmp_path):
    """(a) one encode + head + decode equals the base's predict_action_chunk(noise=eps + Delta)."""
    policy = steered(base_dir, tmp_path, delta_bias=0.0)
    base = policy.base
    batch = tiny_smolvla_batch(base, 3, seed=1)
    w = eps(3, 2)
    ours = policy.predict_action_chunk(dict(batch), noise=w)
    assert ours.shape == (3, 8, 2)
    torch.testing.assert_close(ours, base.predict_action_chunk(dict(batch), noise=w.clone()), rtol=0, atol=1e-5)

    moved = steered(base_dir, tmp_path, delta_bias=0.4)
    steered_chunk = moved.predict_action_chunk(dict(batch), noise=w)
    assert not torch.allclose(steered_chunk, ours, atol=1e-3)
    torch.testing.assert_close(steered_chunk, moved.base.predict_action_chunk(dict(batch), noise=w + 0.4), rtol=0, atol=1e-5)
    # deterministic: eps = 0, i.e. the noise is Delta(s) itself
    deterministic = moved.predict_action_chunk(dict(batch), deterministic=True)
    torch.testing.assert_close(deterministic, moved.base.predict_action_chunk(dict(batch), noise=torch.full_like(w, 0.4)),
                               rtol=0, atol=1e-5)
    # the bound clips eps + Delta, as in training
    clipped = steered(base_dir, tmp_path, delta_bias=0.4, bound=1.0)
    torch.testing.assert_close(clipped.predict_action_chunk(dict(batch), noise=w),
                               clipped.base.predict_action_chunk(dict(batch), noise=(w + 0.4).clamp(-1, 1)), rtol=0, atol=1e-5)
    # stochastic by default: two calls without noise differ
    assert not torch.allclose(moved.predict_action_chunk(dict(batch)), moved.predict_action_chunk(dict(batch)))


def test_a_head_gone_non_finite_acts_with_the_base_s_own_noise(base_dir, tmp_path):
    """Loading refuses non-finite weights; should a head still output NaN / inf at run time (overflowing features),
    the deployed policy decodes the prior draw instead, as the actor does: nothing non-finite reaches the base."""
    policy = steered(base_dir, tmp_path, delta_bias=0.4)
    batch, w = tiny_smolvla_batch(policy.base, 2, seed=3), eps(2, 4)
    with torch.no_grad():
        for parameter in policy.head.parameters():
            parameter.fill_(float("nan"))
    chunk = policy.predict_action_chunk(dict(batch), noise=w)
    assert torch.isfinite(chunk).all()
    torch.testing.assert_close(chunk, policy.base.predict_action_chunk(dict(batch), noise=w.clone()), rtol=0, atol=1e-5)


def test_best_of_k_acts_on_the_proposal_the_shipped_critic_ranks_first(base_dir, tmp_path):
    head_dir = write_trainer_head(tmp_path / "critic_head", delta_bias=0.3, critic=True)
    policy = SteeredPolicy.from_base(load_base(base_dir), head_dir, base_path=base_dir, best_of_k=4,
                                     adapter_kwargs={"pooling": "mean+last"})
    batch = tiny_smolvla_batch(policy.base, batch_size=2, seed=1)
    w = torch.randn(2 * 4, NOISE_SHAPE[0] * NOISE_SHAPE[1], generator=torch.Generator().manual_seed(2))
    features = policy.adapter.encode(batch).features.float()
    chosen = policy.head.best_of_k(features, 4, eps=w)
    expected = policy.adapter.predict_action_chunk(policy.adapter.encode(batch), policy.head.layout.to_noise(chosen))
    torch.testing.assert_close(policy.predict_action_chunk(dict(batch), noise=w), expected, rtol=0, atol=0)
    # the saved directory keeps the setting and the critic
    policy.save_pretrained(tmp_path / "saved")
    loaded = SteeredPolicy.from_pretrained(tmp_path / "saved")
    assert loaded.config.best_of_k == 4
    torch.testing.assert_close(loaded.predict_action_chunk(dict(batch), noise=w), expected, rtol=0, atol=1e-6)
    with pytest.raises(HeadFormatError, match="best_of_k=4 needs a head that ships its critic"):
        SteeredPolicy.from_base(load_base(base_dir), write_trainer_head(tmp_path / "no_critic"), base_path=base_dir,
                                best_of_k=4, adapter_kwargs={"pooling": "mean+last"})
    with pytest.raises(ValueError, match=r"steered.best_of_k=0 must be >= 1 and <= 1024"):
        SteeredConfig(best_of_k=0)


def test_dsrl_head_acts_with_its_tanh_gaussian(base_dir, tmp_path):
    """DSRL heads: deterministic = bound * tanh(mean(s)); a given eps is the reparameterised draw."""
    policy = steered(base_dir, tmp_path, algorithm="dsrl_sac", bound=1.5)
    actor = policy.head.actor
    batch = tiny_smolvla_batch(policy.base, 2, seed=4)
    features = policy.adapter.encode(dict(batch)).features
    mean_latent = actor(features, deterministic=True)[0].reshape(2, *NOISE_SHAPE)
    torch.testing.assert_close(policy.predict_action_chunk(dict(batch), deterministic=True),
                               policy.base.predict_action_chunk(dict(batch), noise=mean_latent), rtol=0, atol=1e-5)
    zero_draw = policy.predict_action_chunk(dict(batch), noise=torch.zeros(2, *NOISE_SHAPE))
    torch.testing.assert_close(zero_draw, policy.predict_action_chunk(dict(batch), deterministic=True), rtol=0, atol=0)


def test_tiled_layout(base_dir, tmp_path):
    policy = steered(base_dir, tmp_path, delta_bias=0.2, latent_layout="tiled")
    batch = tiny_smolvla_batch(policy.base, 2, seed=5)
    row = torch.randn(2, 1, NOISE_SHAPE[1], generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(policy.predict_action_chunk(dict(batch), noise=row),
                               policy.base.predict_action_chunk(dict(batch), noise=(row + 0.2).expand(-1, 8, -1).contiguous()),
                               rtol=0, atol=1e-5)


def test_interpolated_layout_on_the_real_action_dims(base_dir, tmp_path):
    """3 control rows over the 8-row chunk, steering only SmolVLA's 2 real action dims of its 8 padded ones: the
    deployed policy decodes exactly the trainer's noise, padded dims from the prior, and survives save / load."""
    policy = steered(base_dir, tmp_path, delta_bias=0.2, latent_layout="interpolated", latent_rows=3, steered_dims=2)
    layout = policy.head.layout
    assert layout.latent_shape == (3, 2) and layout.describe() == "interpolated(3), 2 of 8 dims"
    batch = tiny_smolvla_batch(policy.base, 2, seed=5)
    latent = torch.randn(2, 3, 2, generator=torch.Generator().manual_seed(6))
    torch.manual_seed(9)
    expected = policy.base.predict_action_chunk(dict(batch), noise=layout.to_noise((latent + 0.2).flatten(1)))
    torch.manual_seed(9)
    torch.testing.assert_close(policy.predict_action_chunk(dict(batch), noise=latent), expected, rtol=0, atol=1e-5)
    policy.save_pretrained(tmp_path / "saved")
    loaded = SteeredPolicy.from_pretrained(tmp_path / "saved")
    assert loaded.head.layout.describe() == layout.describe()
    torch.manual_seed(9)
    torch.testing.assert_close(loaded.predict_action_chunk(dict(batch), noise=latent), expected, rtol=0, atol=1e-5)


def test_save_load_round_trip(base_dir, root, tmp_path):
    """(b) save -> load gives identical actions for fixed noise; the directory is JSON + safetensors only."""
    policy = steered(base_dir, tmp_path, delta_bias=0.3)
    out = root / "saved"
    policy.save_pretrained(out)
    names = sorted(p.name for p in out.iterdir())
    assert {"config.json", "head.safetensors", "head_config.json", "policy_preprocessor.json",
            "policy_postprocessor.json"} <= set(names)
    assert all(name.endswith((".json", ".safetensors")) for name in names), names
    assert "model.safetensors" not in names  # the base's weights are referenced, not copied
    config = json.loads((out / "config.json").read_text())
    assert config["type"] == "steered" and config["base_type"] == "smolvla" and config["base_path"] == str(base_dir)
    assert load_file(str(out / "head.safetensors")).keys() == policy.head.state_dict().keys()

    loaded = SteeredPolicy.from_pretrained(out)
    assert isinstance(loaded.config, SteeredConfig) and loaded.config.adapter_kwargs == {"pooling": "mean+last"}
    batch = tiny_smolvla_batch(policy.base, 3, seed=7)
    w = eps(3, 8)
    torch.testing.assert_close(loaded.predict_action_chunk(dict(batch), noise=w),
                               policy.predict_action_chunk(dict(batch), noise=w), rtol=0, atol=0)

    # the processor files are the base's: raw observation + task -> env-space actions, as for the base
    from lerobot.policies.factory import make_pre_post_processors

    base_pre, base_post = make_pre_post_processors(policy.base.config, pretrained_path=str(base_dir))
    pre, post = make_pre_post_processors(loaded.config, pretrained_path=str(out))
    g = torch.Generator().manual_seed(9)
    raw = {OBS_STATE: torch.randn(2, 4, generator=g), CAMERA: torch.rand(2, 3, 24, 40, generator=g),
           "task": ["pick up the red cube", "open the drawer"]}
    w = eps(2, 10)
    ours = post(loaded.predict_action_chunk(pre(dict(raw)), noise=w))
    reference = base_post(policy.base.predict_action_chunk(base_pre(dict(raw)), noise=w + 0.3))
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)

    # a relative base_path is looked up inside the steered directory (self-contained directories)
    portable = root / "portable"
    shutil.copytree(out, portable)
    shutil.copytree(base_dir, portable / "base")
    config["base_path"] = "base"
    (portable / "config.json").write_text(json.dumps(config))
    again = SteeredPolicy.from_pretrained(portable)
    w = eps(3, 8)
    torch.testing.assert_close(again.predict_action_chunk(dict(batch), noise=w),
                               policy.predict_action_chunk(dict(batch), noise=w), rtol=0, atol=0)


def test_select_action_queue_matches_lerobot(base_dir, tmp_path):
    """(c) n_action_steps actions per chunk, then a new chunk; reset clears the queue. Same actions as the base's
    own select_action fed the noise the head picks (Delta = 0.25 everywhere)."""
    policy = steered(base_dir, tmp_path, delta_bias=0.25)
    reference = load_base(base_dir)  # a second copy of the base with its own LeRobot queues
    n = policy.n_action_steps
    assert n == 4
    encodes = []
    encode = policy.adapter.encode
    policy.adapter.encode = lambda obs: encodes.append(1) or encode(obs)  # count VLM passes

    batches = [tiny_smolvla_batch(reference, 2, seed=20 + step) for step in range(2 * n + 1)]
    draws = [eps(2, 40 + step) for step in range(2 * n + 1)]
    policy.reset(), reference.reset()
    for step, (batch, w) in enumerate(zip(batches, draws)):
        ours = policy.select_action(dict(batch), noise=w)
        theirs = reference.select_action(dict(batch), noise=w + 0.25)
        assert ours.shape == (2, 2)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
        assert len(encodes) == step // n + 1, "one encode per chunk, none in between"

    # reset mid-chunk: the queue is cleared, the next call draws a new chunk
    policy.select_action(dict(batches[0]), noise=draws[0])
    assert len(encodes) == 3 and len(policy._queues["action"]) == n - 2
    policy.reset()
    assert len(policy._queues["action"]) == 0
    first = policy.select_action(dict(batches[1]), noise=draws[1])
    assert len(encodes) == 4
    torch.testing.assert_close(first, policy.predict_action_chunk(dict(batches[1]), noise=draws[1])[:, 0], rtol=0, atol=0)


def test_lerobot_factory_loads_the_directory_after_plugin_discovery(base_dir, root, tmp_path):
    """(d) a fresh interpreter: register_third_party_plugins() -> PreTrainedConfig.from_pretrained(dir) ->
    get_policy_class("steered").from_pretrained(dir) (what make_policy does) and the processor factory."""
    import importlib.metadata

    if "lerobot_policy_steered" not in {d.metadata.get("Name") for d in importlib.metadata.distributions()}:
        pytest.fail("the LeRobot plugin is not installed: pip install -e plugins/lerobot_policy_steered")
    policy = steered(base_dir, tmp_path, delta_bias=0.3)
    out = root / "for_factory"
    policy.save_pretrained(out)
    batch = tiny_smolvla_batch(policy.base, 2, seed=11)
    w = eps(2, 12)
    torch.save({"batch": batch, "noise": w}, tmp_path / "inputs.pt")
    expected = policy.predict_action_chunk(dict(batch), noise=w)

    script = f"""
import sys, torch
from lerobot.configs.policies import PreTrainedConfig
from lerobot.policies.factory import get_policy_class, make_pre_post_processors
from lerobot.utils.import_utils import register_third_party_plugins
assert "steered" not in PreTrainedConfig.get_known_choices()
register_third_party_plugins()
assert "vla_steer.lerobot_policy" in sys.modules
cfg = PreTrainedConfig.from_pretrained({str(out)!r}, cli_overrides=["--device=cpu"])
cls = get_policy_class(cfg.type)
policy = cls.from_pretrained(pretrained_name_or_path={str(out)!r}, config=cfg)
pre, post = make_pre_post_processors(cfg, pretrained_path={str(out)!r})
fresh_pre, fresh_post = make_pre_post_processors(cfg)  # no directory: the plugin's processor factory
assert [type(s).__name__ for s in fresh_pre.steps] == [type(s).__name__ for s in pre.steps]
inputs = torch.load({str(tmp_path / "inputs.pt")!r})
torch.save(policy.predict_action_chunk(inputs["batch"], noise=inputs["noise"]), {str(tmp_path / "out.pt")!r})
print(cfg.type, type(policy).__module__, type(policy).__name__)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            cwd=str(tmp_path), env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "steered vla_steer.lerobot_policy.modeling_steered SteeredPolicy" in result.stdout
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), expected, rtol=0, atol=0)


def test_bad_head_directories_fail_clearly(base_dir, root, tmp_path):
    """(e) unknown fields, wrong tensor shapes and a head that does not fit the base are rejected by name."""
    policy = steered(base_dir, tmp_path, delta_bias=0.1)
    good = root / "good"
    policy.save_pretrained(good)

    def broken(name, edit_config=None, edit_tensors=None) -> Path:
        directory = tmp_path / name
        shutil.copytree(good, directory)
        if edit_config:
            config = json.loads((directory / "head_config.json").read_text())
            edit_config(config)
            (directory / "head_config.json").write_text(json.dumps(config))
        if edit_tensors:
            tensors = load_file(str(directory / "head.safetensors"))
            edit_tensors(tensors)
            save_file(tensors, directory / "head.safetensors")
        return directory

    cases = [
        (broken("unknown_top", lambda c: c.update(pooling="mean")), r"unknown field\(s\) \['pooling'\]"),
        (broken("unknown_head", lambda c: c["head"].update(widht=3)), r"'head' has unknown field\(s\) \['widht'\]"),
        (broken("bad_algorithm", lambda c: c.update(algorithm="ppo")), "algorithm 'ppo' is unknown"),
        (broken("bad_latent", lambda c: c.update(latent_shape=[1, 8])), "latent_shape"),
        (broken("wrong_shape", edit_tensors=lambda t: t.update({"delta.net.3.weight": torch.zeros(64, 7)})),
         r"wrong shapes \[delta.net.3.weight: file \[64, 7\] vs head \[64, 16\]\]"),
        (broken("missing", edit_tensors=lambda t: t.pop("delta.net.3.bias")), r"missing \['delta.net.3.bias'\]"),
        (broken("other_feature_dim", lambda c: c.update(feature_dim=32),
                lambda t: t.update({"delta.encoder.net.0.weight": torch.zeros(8, 32)})), "feature_dim 32 != adapter feature_dim 64"),
        (broken("other_adapter", lambda c: c.update(adapter="pi0")), "trained on a 'pi0' adapter"),
    ]
    for directory, message in cases:
        with pytest.raises(HeadFormatError, match=message):
            SteeredPolicy.from_pretrained(directory)
    with pytest.raises(FileNotFoundError, match="missing"):
        (tmp_path / "empty").mkdir()
        shutil.copy(good / "config.json", tmp_path / "empty" / "config.json")
        SteeredPolicy.from_pretrained(tmp_path / "empty")
    with pytest.raises(ValueError, match="from_pretrained"):
        SteeredPolicy(policy.config)  # no head: a steered policy cannot be built from scratch


# -------------------------------------------------------------------------------------------------------------
# lerobot-eval on steered policies over PushT: DiffusionPolicy on state observations, SmolVLA on pixels


def save_constant_delta_steered(base_dir: Path, root: Path, name: str, bias: float, **adapter_kwargs) -> Path:
    """A steered directory on the LeRobot checkpoint at ``base_dir``: an LP-DS head with ``Delta(s) = bias``."""
    from lerobot.policies.factory import get_policy_class

    from vla_steer.adapters import adapter_for_lerobot_policy

    policy_type = json.loads((base_dir / "config.json").read_text())["type"]
    adapter = adapter_for_lerobot_policy(get_policy_class(policy_type).from_pretrained(base_dir), **adapter_kwargs)
    layout = LatentLayout("full", adapter.noise_shape)
    delta = ResidualPerturbation(adapter.feature_dim, layout.latent_dim, 16, 1)
    torch.nn.init.constant_(delta.net[-1].bias, bias)
    head_dir = root / f"{name}_head"
    head_dir.mkdir()
    save_file({f"delta.{k}": v.contiguous() for k, v in delta.state_dict().items()}, head_dir / "head.safetensors")
    (head_dir / "head_config.json").write_text(json.dumps({
        "algorithm": "lpds", "head": asdict(HeadConfig(bound=3.0, hidden_dim=16, num_layers=1)),
        "noise_shape": list(adapter.noise_shape), "latent_shape": list(layout.latent_shape),
        "feature_dim": adapter.feature_dim, "adapter": adapter.family}))
    policy = SteeredPolicy.from_base(adapter.policy, head_dir, base_path=base_dir, adapter_kwargs=adapter_kwargs)
    policy.save_pretrained(root / f"steered_{name}")
    return root / f"steered_{name}"


def steered_pusht_diffusion(root: Path) -> Path:
    """The tiny PushT DiffusionPolicy (observation history of 2), steered with a constant Delta. Returns the steered
    directory."""
    base_dir = save_pusht_diffusion_base(root / "diffusion_base")
    return save_constant_delta_steered(base_dir, root, "diffusion", 0.2, num_inference_steps=4)


def steered_pusht_smolvla(root: Path, image_key: str = "observation.image") -> Path:
    """LeRobot's real SmolVLA on the toy SmolVLM for PushT's pixels (``save_pusht_smolvla_base``), steered with a
    constant Delta."""
    return save_constant_delta_steered(save_pusht_smolvla_base(root, image_key), root, "smolvla", 0.3)


def test_steered_diffusion_history_matches_lerobot(tmp_path):
    """A base with an observation history (n_obs_steps = 2): same actions as the base's select_action."""
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

    policy = SteeredPolicy.from_pretrained(steered_pusht_diffusion(tmp_path))
    reference = DiffusionPolicy.from_pretrained(tmp_path / "diffusion_base")
    reference.diffusion.noise_scheduler = policy.adapter.scheduler  # the adapter's DDIM, as in the steered base
    reference.diffusion.num_inference_steps = policy.adapter.num_inference_steps
    g = torch.Generator().manual_seed(0)
    policy.reset(), reference.reset()
    for step in range(9):
        batch = {"observation.state": torch.rand(2, 2, generator=g), "observation.environment_state": torch.rand(2, 16, generator=g)}
        w = torch.randn(2, 8, 2, generator=g)
        torch.testing.assert_close(policy.select_action(dict(batch), noise=w),
                                   reference.select_action(dict(batch), noise=(w + 0.2).clamp(-3, 3)), rtol=0, atol=1e-5)


@pytest.mark.parametrize("steered_dir_builder, obs_type", [(steered_pusht_diffusion, "environment_state_agent_pos"),
                                                          (steered_pusht_smolvla, "pixels_agent_pos")],
                         ids=["diffusion-state", "smolvla-pixels"])
def test_lerobot_eval_runs_a_steered_policy(tmp_path, steered_dir_builder, obs_type):
    """``lerobot-eval --policy.path=<steered dir>`` as LeRobot documents it (needs gym-pusht and the plugin)."""
    # gym-pusht is installed by the README / CI test command (with --no-deps: its opencv-python and pygame pins
    # clash with LeRobot's opencv-python-headless and pygame-ce, which already provide cv2 and pygame)
    import gym_pusht  # noqa: F401
    steered_dir = steered_dir_builder(tmp_path)
    command = [str(Path(sys.executable).parent / "lerobot-eval"), f"--policy.path={steered_dir}", "--env.type=pusht",
               f"--env.obs_type={obs_type}", "--eval.n_episodes=2", "--eval.batch_size=2",
               "--policy.device=cpu", f"--output_dir={tmp_path / 'eval'}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=str(tmp_path),
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    info = json.loads((tmp_path / "eval" / "eval_info.json").read_text())
    assert info["overall"]["n_episodes"] == 2 and "pc_success" in info["overall"]
    metrics = info["per_task"][0]["metrics"]
    assert len(metrics["sum_rewards"]) == 2 and len(metrics["successes"]) == 2
    assert "base_path" in result.stdout + result.stderr  # the config lerobot-eval logs is the steered one


def test_lerobot_async_policy_server_serves_a_steered_smolvla(tmp_path, monkeypatch):
    """LeRobot's own gRPC policy server (``vla-steer serve`` enables the type) loads a steered directory by path and
    answers an observation with the chunk the steered policy computes, through the base's processors."""
    from concurrent import futures

    monkeypatch.chdir(tmp_path)  # importing LeRobot's policy server opens a log file under ./logs

    import grpc
    import numpy as np
    from lerobot.async_inference.configs import PolicyServerConfig
    from lerobot.async_inference.helpers import RemotePolicyConfig, TimedObservation
    from lerobot.async_inference.policy_server import PolicyServer
    from lerobot.transport import services_pb2, services_pb2_grpc
    from lerobot.transport.utils import send_bytes_in_chunks

    from vla_steer.lerobot_policy.serve import enable_steered_policies

    steered_dir = steered_pusht_smolvla(tmp_path, image_key="observation.images.front")
    enable_steered_policies()
    policy_server = PolicyServer(PolicyServerConfig(host="127.0.0.1", port=50051, inference_latency=0.0))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    services_pb2_grpc.add_AsyncInferenceServicer_to_server(policy_server, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        stub = services_pb2_grpc.AsyncInferenceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        stub.Ready(services_pb2.Empty())
        features = {"observation.state": {"dtype": "float32", "shape": (2,), "names": ["x", "y"]},
                    "observation.images.front": {"dtype": "image", "shape": (96, 96, 3), "names": ["height", "width", "channels"]}}
        stub.SendPolicyInstructions(services_pb2.PolicySetup(data=pickle.dumps(RemotePolicyConfig(
            policy_type="steered", pretrained_name_or_path=str(steered_dir), lerobot_features=features,
            actions_per_chunk=8, device="cpu"))))
        assert isinstance(policy_server.policy, SteeredPolicy)

        image = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
        raw = {"x": 200.0, "y": 300.0, "front": image, "task": ""}
        observation = TimedObservation(timestamp=0.0, timestep=0, observation=raw, must_go=True)
        stub.SendObservations(send_bytes_in_chunks(pickle.dumps(observation), services_pb2.Observation))
        torch.manual_seed(0)  # the head's prior draw eps, taken in the server's worker thread from the global generator
        timed_actions = pickle.loads(stub.GetActions(services_pb2.Empty()).data)
        served = torch.stack([a.get_action() for a in timed_actions])

        # the same observation and eps through the steered policy directly, with the base's processors
        policy = SteeredPolicy.from_pretrained(steered_dir)
        preprocessor, postprocessor = policy.base_processors()
        batch = preprocessor({"observation.state": torch.tensor([[200.0, 300.0]]),
                              "observation.images.front": torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255,
                              "task": ""})
        torch.manual_seed(0)
        expected = postprocessor(policy.predict_action_chunk(batch))[0]
        assert [a.get_timestep() for a in timed_actions] == list(range(8))
        torch.testing.assert_close(served, expected, rtol=0, atol=1e-4)
        torch.manual_seed(1)
        assert not torch.allclose(postprocessor(policy.predict_action_chunk(batch))[0], expected)  # eps matters
    finally:
        server.stop(None)
