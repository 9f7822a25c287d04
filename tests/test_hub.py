"""Sharing heads on the Hub (hub/FORMAT.md): round trips, loading by repo id from a pre-populated Hugging Face cache
with HF_HUB_OFFLINE=1, the upload plan, and hostile files.

Real objects only: a tiny LeRobot DiffusionPolicy saved with its processors (the base), heads built from their
config, and one real (tiny) training run for the built-in-base path. No network: the cache is built by hand in the
layout huggingface_hub writes (models--org--name/{blobs,snapshots/<commit>,refs/main}) and read by the real
``snapshot_download`` code path. The upload through ``HfApi.create_commit`` is in test_hub_push.py.
"""

import json
import os
import pickle
import re
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard, constants
from safetensors.torch import load_file, save_file

from tiny_common import add_to_hf_cache, save_pusht_diffusion_base
from vla_steer.adapters.base import LatentLayout
from vla_steer.cli import main as cli
from vla_steer.config import HeadConfig
from vla_steer.hub import BaseMismatchError, HeadFormatError, Limits, prepare_upload, validate_directory
from vla_steer.hub.schema import head_fields
from vla_steer.lerobot_policy import ActingHead, SteeredChunkPolicy, SteeredPolicy, load_steered

torch.set_num_threads(1)

STATE, ENV_STATE = "observation.state", "observation.environment_state"
ADAPTER_KWARGS = {"num_inference_steps": 4}
FORMAT_FILES = {"config.json", "head_config.json", "head.safetensors", "policy_preprocessor.json",
                "policy_postprocessor.json", "policy_preprocessor_step_3_normalizer_processor.safetensors",
                "policy_postprocessor_step_0_unnormalizer_processor.safetensors"}


# -------------------------------------------------------------------------------------------------------------
# builders
def load_diffusion(directory: Path):
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

    return DiffusionPolicy.from_pretrained(directory)


def make_head(noise_shape, feature_dim: int, seed: int, algorithm: str = "lpds", layout: str = "full") -> ActingHead:
    """A head whose every weight is random (not the zero-initialised output layer of a fresh LP-DS head)."""
    head = HeadConfig(latent_layout=layout, bound=3.0, hidden_dim=16, num_layers=1)
    latent_shape = LatentLayout(layout, noise_shape).latent_shape
    acting = ActingHead({"algorithm": algorithm, "head": asdict(head), "noise_shape": list(noise_shape),
                         "latent_shape": list(latent_shape), "feature_dim": feature_dim})
    generator = torch.Generator().manual_seed(seed)
    for tensor in acting.state_dict().values():
        tensor.copy_(0.3 * torch.randn(tensor.shape, generator=generator))
    return acting


def steered_on(base_dir: Path, head_seed: int = 1, base_path: str | None = None, base_revision: str | None = None,
               **kwargs) -> SteeredPolicy:
    from vla_steer.adapters import adapter_for_lerobot_policy

    base = load_diffusion(base_dir)
    adapter = adapter_for_lerobot_policy(base, **ADAPTER_KWARGS)
    head = make_head(adapter.noise_shape, adapter.feature_dim, head_seed)
    return SteeredPolicy.from_base(base, head, base_path=base_path or base_dir, base_revision=base_revision,
                                   adapter_kwargs=ADAPTER_KWARGS, **kwargs)


def batches(n: int = 3, batch_size: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [({STATE: 512 * torch.rand(batch_size, 2, generator=g), ENV_STATE: 512 * torch.rand(batch_size, 16, generator=g)},
             torch.randn(batch_size, 8, 2, generator=g)) for _ in range(n)]


def chunks(policy: SteeredPolicy, inputs) -> list[torch.Tensor]:
    policy.reset()
    return [policy.predict_action_chunk(dict(batch), noise=noise) for batch, noise in inputs]


# -------------------------------------------------------------------------------------------------------------
# fixtures
@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("hub")


@pytest.fixture(scope="module")
def base_dir(root):
    return save_pusht_diffusion_base(root / "base", seed=0)


@pytest.fixture(scope="module")
def steered_dir(root, base_dir):
    """A steered policy directory saved with save_pretrained (no card: LeRobot's default)."""
    steered_on(base_dir).save_pretrained(root / "steered")
    return root / "steered"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real tiny training run (LunarLander, built-in DDIM base, LP-DS): head/, results.json, learning_curve.png."""
    from conftest import tiny_recipe_dict

    from vla_steer.config import recipe_from_dict
    from vla_steer.training import SteeringTrainer

    recipe = recipe_from_dict(tiny_recipe_dict(tmp_path_factory.mktemp("run")))
    SteeringTrainer(recipe).run()
    return Path(recipe.train.output_dir)


def broken_copy(good: Path, directory: Path, *, config=None, head_config=None, tensors=None) -> Path:
    shutil.copytree(good, directory)
    for name, edit in (("config.json", config), ("head_config.json", head_config)):
        if edit:
            data = json.loads((directory / name).read_text())
            edit(data)
            (directory / name).write_text(json.dumps(data))
    if tensors:
        data = load_file(str(directory / "head.safetensors"))
        tensors(data)
        save_file(data, directory / "head.safetensors")
    return directory


# -------------------------------------------------------------------------------------------------------------
# round trips
def test_steered_policy_round_trip_identical_tensors_and_actions(steered_dir, base_dir, root):
    """save -> load: the same head tensors, the same actions for fixed noise; save again: the same bytes."""
    original = steered_on(base_dir)
    names = {p.name for p in steered_dir.iterdir()}
    assert names == FORMAT_FILES, names
    config = json.loads((steered_dir / "head_config.json").read_text())
    assert config["format_version"] == 1 and config["head_type"] == "lpds_residual"
    assert config["base_model_name_or_path"] == str(base_dir) and config["base_library"] == "lerobot"
    assert config["base_policy_type"] == "diffusion" and config["features"] == {"pooling": None, "adapter_kwargs": ADAPTER_KWARGS}
    assert config["base_fingerprint"]["method"] == "sha256-sampled-v1"

    loaded = SteeredPolicy.from_pretrained(steered_dir)
    head = ActingHead.from_pretrained(steered_dir)
    for other in (loaded.head, head):
        assert other.state_dict().keys() == original.head.state_dict().keys()
        for key, value in original.head.state_dict().items():
            assert torch.equal(other.state_dict()[key], value), key
    inputs = batches()
    for ours, theirs in zip(chunks(loaded, inputs), chunks(original, inputs)):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)

    again = root / "steered_again"
    loaded.save_pretrained(again)
    for name in ("head_config.json", "head.safetensors"):
        assert (again / name).read_bytes() == (steered_dir / name).read_bytes(), name


@pytest.mark.parametrize("algorithm,layout", [("dsrl_sac", "tiled"), ("lpds", "full")])
def test_head_round_trip_on_a_built_in_base(run_dir, tmp_path, algorithm, layout):
    """ActingHead.save_pretrained / from_pretrained / load_steered on vla_steer's own base: identical tensors and
    identical actions for a fixed prior draw."""
    from vla_steer.adapters import NativePolicyAdapter
    from vla_steer.config import recipe_from_dict
    from vla_steer.pipeline import ensure_base
    from vla_steer.policies import load_chunk_policy

    base_path = ensure_base(recipe_from_dict(json.loads((run_dir / "recipe.json").read_text())), show_progress=False)
    adapter = NativePolicyAdapter(load_chunk_policy(base_path))
    head = make_head(adapter.noise_shape, adapter.feature_dim, seed=5, algorithm=algorithm, layout=layout)
    saved = head.save_pretrained(tmp_path / "head", base=adapter, base_model_name_or_path=str(base_path))
    assert {p.name for p in saved.iterdir()} == {"head_config.json", "head.safetensors"}
    loaded = ActingHead.from_pretrained(saved)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in head.state_dict().items())
    policy = load_steered(saved)
    assert isinstance(policy, SteeredChunkPolicy)
    obs = torch.randn(5, adapter.feature_dim, generator=torch.Generator().manual_seed(1))
    eps = torch.randn(5, *head.layout.latent_shape, generator=torch.Generator().manual_seed(2))
    expected = adapter.decode(adapter.encode(obs), head.layout.to_noise(head(adapter.encode(obs).features, eps=eps)))
    torch.testing.assert_close(policy.predict_action_chunk(obs, noise=eps), expected, rtol=0, atol=0)


def test_training_run_exports_with_card_metrics_and_curve(run_dir, tmp_path, capsys):
    """`vla-steer push <run> --dry-run --output-dir`: the trainer recorded the base's fingerprint, the export keeps
    it, the card carries front matter, metrics and the learning curve, and the exported head acts as the run's."""
    trainer_config = json.loads((run_dir / "head" / "head_config.json").read_text())
    assert "format_version" not in trainer_config and "base_fingerprint" in trainer_config  # format 0
    out = tmp_path / "export"
    assert cli(["push", str(run_dir), "--repo-id", "me/lunar-lpds", "--dry-run", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "would upload to me/lunar-lpds" in printed
    for name in ("README.md", "head.safetensors", "head_config.json", "learning_curve.png"):
        assert name in printed and (out / name).is_file(), name
    config = json.loads((out / "head_config.json").read_text())
    assert config["base_fingerprint"] == trainer_config["base_fingerprint"]
    assert config["base_library"] == "vla_steer" and config["env"] == "LunarLanderContinuous-v3"
    assert set(config["training"]["metrics"]) == {"base", "steered"}
    assert "success_rate" in config["training"]["metrics"]["steered"]
    assert config["hyperparameters"]["algorithm.name"] == "lpds"
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "vla_steer" and card.data.pipeline_tag == "robotics"
    assert {"robotics", "vla_steer", "lpds", "diffusion"} <= set(card.data.tags)
    assert "success_rate" in card.data.metrics
    assert card.data.base_model is None  # a local path is not a Hub id: it stays out of the front matter
    assert "![learning curve](learning_curve.png)" in card.text and "| success_rate |" in card.text

    run_head = ActingHead.from_dir(run_dir / "head")
    policy = load_steered(out)
    obs = torch.randn(4, run_head.feature_dim, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(4, *run_head.layout.latent_shape, generator=torch.Generator().manual_seed(1))
    adapter = policy.adapter
    expected = adapter.decode(adapter.encode(obs), run_head.layout.to_noise(run_head(adapter.encode(obs).features, eps=eps)))
    torch.testing.assert_close(policy.predict_action_chunk(obs, noise=eps), expected, rtol=0, atol=0)

    assert cli(["info", str(out), "--base"]) == 0
    printed = capsys.readouterr().out
    assert "trained:     env LunarLanderContinuous-v3" in printed and "success_rate" in printed
    assert "fits the base" in printed
    # a format-0 head directory (the trainer's head/) loads, but does not upload: it does not name its base
    assert ActingHead.from_pretrained(run_dir / "head").format_version == 0
    with pytest.raises(HeadFormatError, match="format-0"):
        prepare_upload(run_dir / "head")


# -------------------------------------------------------------------------------------------------------------
# by repo id through the Hugging Face cache
def test_load_by_repo_id_from_the_hf_cache_offline(base_dir, root, tmp_path, monkeypatch, capsys):
    """SteeredPolicy.from_pretrained("org/name", revision=...) and load_steered through huggingface_hub's real
    snapshot_download with HF_HUB_OFFLINE=1, the base loaded by its own repo id at the revision the config pins."""
    cache = tmp_path / "hf_cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    # huggingface_hub reads these once, at import, into its constants module, and looks them up at call time
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: no request could work
    base_commit, old_commit, new_commit = "b" * 40, "1" * 40, "2" * 40
    add_to_hf_cache(cache, "org/tiny-diffusion", base_commit, base_dir)
    published = {}
    for commit, seed in ((old_commit, 1), (new_commit, 2)):
        policy = steered_on(base_dir, head_seed=seed, base_path="org/tiny-diffusion", base_revision=base_commit)
        policy.save_pretrained(tmp_path / f"head_{seed}", model_card=True, card_kwargs={"repo_id": "org/steered-head"})
        add_to_hf_cache(cache, "org/steered-head", commit, tmp_path / f"head_{seed}", ref="main" if seed == 2 else None)
        published[commit] = policy
    assert not Path("org/steered-head").exists() and not Path("org/tiny-diffusion").exists()

    inputs = batches(seed=3)
    pinned = SteeredPolicy.from_pretrained("org/steered-head", revision=old_commit)
    latest = SteeredPolicy.from_pretrained("org/steered-head")  # refs/main -> the newer commit
    for loaded, commit in ((pinned, old_commit), (latest, new_commit)):
        assert str(cache) in str(loaded._base_source) and base_commit in str(loaded._base_source)
        for key, value in published[commit].head.state_dict().items():
            assert torch.equal(loaded.head.state_dict()[key], value)
        for ours, theirs in zip(chunks(loaded, inputs), chunks(published[commit], inputs)):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert not torch.equal(chunks(pinned, inputs)[0], chunks(latest, inputs)[0])
    via_hub_api = load_steered("org/steered-head", revision=old_commit)
    torch.testing.assert_close(chunks(via_hub_api, inputs)[0], chunks(pinned, inputs)[0], rtol=0, atol=0)
    card = ModelCard.load(cache / "models--org--steered-head" / "snapshots" / new_commit / "README.md")
    assert card.data.base_model == "org/tiny-diffusion" and "lerobot" in card.data.tags

    with pytest.raises(FileNotFoundError, match="org/steered-head.*revision 3333"):
        SteeredPolicy.from_pretrained("org/steered-head", revision="3" * 40)
    assert cli(["pull", "org/steered-head", "--revision", old_commit]) == 0
    assert old_commit in capsys.readouterr().out
    assert cli(["info", "org/steered-head", "--base"]) == 0  # the base by repo id, from the cache
    assert "fits the base org/tiny-diffusion @ " + base_commit in capsys.readouterr().out


# -------------------------------------------------------------------------------------------------------------
# the upload
def test_upload_plan_lists_the_format_files_card_and_message(steered_dir, tmp_path):
    """prepare_upload (what push_to_hub sends through HfApi.create_commit): exactly the format's files with their
    bytes, a rendered card when the directory has none, the commit message; other files stay out."""
    directory = tmp_path / "to_push"
    shutil.copytree(steered_dir, directory)
    (directory / "notes.txt").write_text("private notes")
    plan = prepare_upload(directory, repo_id="me/steered-diffusion")
    assert plan.files == sorted(FORMAT_FILES | {"README.md"})
    assert plan.skipped == ["notes.txt"]
    assert plan.commit_message.startswith("Upload lpds steering head for ")
    assert "sha256-sampled-v1" in plan.commit_description
    for op in plan.operations:
        with op.as_file() as f:
            content = f.read()
        if op.path_in_repo != "README.md":
            assert content == (directory / op.path_in_repo).read_bytes(), op.path_in_repo
        else:
            card = ModelCard(content.decode())
    assert card.data.library_name == "vla_steer" and "lerobot" in card.data.tags and "lpds" in card.data.tags
    assert "lerobot-eval --policy.path=me/steered-diffusion" in card.text
    assert plan.operations[0].upload_info.sha256  # hashed as create_commit will announce it


# -------------------------------------------------------------------------------------------------------------
# hostile and broken inputs
class _TouchOnUnpickle:
    """Unpickling this object creates ``path`` (what a malicious pickle would do instead of something worse)."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return Path.touch, (self.path,)


def test_a_pickle_renamed_safetensors_is_refused_and_never_unpickled(steered_dir, tmp_path, capsys):
    control = tmp_path / "control_marker"
    pickle.loads(pickle.dumps(_TouchOnUnpickle(control)))
    assert control.exists()  # the payload is live: unpickling it does run code

    marker = tmp_path / "marker"
    hostile = broken_copy(steered_dir, tmp_path / "pickled")
    (hostile / "head.safetensors").write_bytes(pickle.dumps(_TouchOnUnpickle(marker), protocol=4))
    zipped = broken_copy(steered_dir, tmp_path / "zipped")
    torch.save({"marker": _TouchOnUnpickle(marker)}, zipped / "head.safetensors")
    for directory, message in ((hostile, "pickle"), (zipped, "zip archive")):
        for load in (SteeredPolicy.from_pretrained, ActingHead.from_pretrained, load_steered, validate_directory):
            with pytest.raises(HeadFormatError, match=message):
                load(directory)
        assert cli(["info", str(directory)]) == 2
        assert message in capsys.readouterr().err
    assert not marker.exists()


def test_truncated_and_oversized_safetensors_are_refused(steered_dir, tmp_path):
    truncated = broken_copy(steered_dir, tmp_path / "truncated")
    data = (truncated / "head.safetensors").read_bytes()
    (truncated / "head.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(HeadFormatError, match=r"truncated: its tensors need \d+ bytes of data, the file holds"):
        SteeredPolicy.from_pretrained(truncated)
    (truncated / "head.safetensors").write_bytes(data[:20])
    with pytest.raises(HeadFormatError, match="truncated: its header needs"):
        ActingHead.from_pretrained(truncated)
    (truncated / "head.safetensors").write_bytes(data[:5])
    with pytest.raises(HeadFormatError, match="truncated"):
        ActingHead.from_pretrained(truncated)
    with pytest.raises(HeadFormatError, match="over the 1000-byte limit"):
        ActingHead.from_pretrained(steered_dir, limits=Limits(max_head_bytes=1000))
    with pytest.raises(HeadFormatError, match="holds 6 tensors, over the limit of 4"):
        validate_directory(steered_dir, Limits(max_head_tensors=4))
    with pytest.raises(HeadFormatError, match="over the 100-byte limit for JSON"):
        validate_directory(steered_dir, Limits(max_json_bytes=100))
    integers = broken_copy(steered_dir, tmp_path / "integers",
                           tensors=lambda t: t.update({"delta.net.3.bias": torch.zeros(16, dtype=torch.int64)}))
    with pytest.raises(HeadFormatError, match="dtype 'I64'"):
        ActingHead.from_pretrained(integers)


def test_configs_with_unknown_missing_or_mistyped_fields_are_refused(steered_dir, tmp_path):
    cases = [
        (dict(head_config=lambda c: c.update(widget=1)), r"unknown field\(s\) \['widget'\]"),
        (dict(head_config=lambda c: c.pop("base_fingerprint")), r"missing field\(s\) \['base_fingerprint'\]"),
        (dict(head_config=lambda c: c.update(noise_shape="8x2")), "'noise_shape' must be a list of two positive integers"),
        (dict(head_config=lambda c: c["head"].update(hidden_dim="16")), "head.hidden_dim: expected int"),
        (dict(head_config=lambda c: c.update(format_version=2)), "format_version 2, written by a newer vla_steer"),
        (dict(head_config=lambda c: c.update(head_type="transformer")), "head_type 'transformer' does not match"),
        (dict(head_config=lambda c: c["base_fingerprint"].update(weights="abc")), "'base_fingerprint' must be"),
        (dict(config=lambda c: c.update(type="diffusion")), "config.json has type 'diffusion'"),
        (dict(config=lambda c: c.update(base_type="groot")), "base_type 'groot' is not one vla_steer can steer"),
    ]
    for i, (edits, message) in enumerate(cases):
        with pytest.raises(HeadFormatError, match=message):
            SteeredPolicy.from_pretrained(broken_copy(steered_dir, tmp_path / f"case{i}", **edits))
    not_json = broken_copy(steered_dir, tmp_path / "not_json")
    (not_json / "head_config.json").write_text('{"algorithm": "lpds", "algorithm": "lpds"}')
    with pytest.raises(HeadFormatError, match=r"duplicate key\(s\) \['algorithm'\]"):
        ActingHead.from_pretrained(not_json)
    (not_json / "head_config.json").write_text('{"feature_dim": NaN}')
    with pytest.raises(HeadFormatError, match="NaN"):
        ActingHead.from_pretrained(not_json)


def test_files_naming_code_are_refused_and_nothing_is_imported(steered_dir, tmp_path, monkeypatch):
    """auto_map / _target_ / trust_remote_code anywhere, and LeRobot processor steps given by class path (which
    LeRobot would import), are refused with the reason; the named module is never imported."""
    package = tmp_path / "site"
    package.mkdir()
    marker = tmp_path / "imported_marker"
    (package / "hostile_step.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Step: pass\n")
    monkeypatch.syspath_prepend(str(package))

    def class_step(processor: Path) -> None:
        data = json.loads(processor.read_text())
        data["steps"][0] = {"class": "hostile_step.Step", "config": {}}
        processor.write_text(json.dumps(data))

    processor_case = broken_copy(steered_dir, tmp_path / "processor")
    class_step(processor_case / "policy_preprocessor.json")
    traversal = broken_copy(steered_dir, tmp_path / "traversal")
    data = json.loads((traversal / "policy_preprocessor.json").read_text())
    data["steps"][3]["state_file"] = "../base/model.safetensors"
    (traversal / "policy_preprocessor.json").write_text(json.dumps(data))
    cases = [
        (broken_copy(steered_dir, tmp_path / "auto_map", head_config=lambda c: c.update(
            auto_map={"AutoModel": "hostile_step.Step"})), "field 'auto_map' is transformers remote code"),
        (broken_copy(steered_dir, tmp_path / "target", head_config=lambda c: c["training"].update(
            _target_="hostile_step.Step")), r"field 'training._target_' is a Hydra/OmegaConf instantiation target"),
        (broken_copy(steered_dir, tmp_path / "remote", config=lambda c: c.update(trust_remote_code=True)),
         "config.json: field 'trust_remote_code' is a request to run remote code"),
        (processor_case, r"policy_preprocessor.json: field 'steps\[0\].class' is a class path to import"),
        (traversal, "state_file '../base/model.safetensors' is not a processor state file name"),
    ]
    for directory, message in cases:
        with pytest.raises(HeadFormatError, match=message):
            SteeredPolicy.from_pretrained(directory)
    with pytest.raises(HeadFormatError, match="auto_map"):
        ActingHead.from_pretrained(cases[0][0])
    assert "hostile_step" not in sys.modules and not marker.exists()


def test_wrong_tensor_shapes_are_refused(steered_dir, tmp_path):
    cases = [
        (dict(tensors=lambda t: t.update({"delta.net.3.weight": torch.zeros(16, 7)})),
         r"wrong shapes \[delta.net.3.weight: file \[16, 7\] vs head \[16, 16\]\]"),
        (dict(tensors=lambda t: t.update({"delta.extra": torch.zeros(3)})), r"unexpected \['delta.extra'\]"),
        (dict(tensors=lambda t: t.pop("delta.net.0.bias")), r"missing \['delta.net.0.bias'\]"),
        # a config asking for a huge network is refused by the field's declared range, before anything is built
        (dict(head_config=lambda c: c["head"].update(hidden_dim=10**7)), r"head.hidden_dim=10000000 must be >= 1 and <= 65536"),
        # within the range, a config that disagrees with the file is checked without allocating it (meta device)
        (dict(head_config=lambda c: c["head"].update(hidden_dim=4096)), r"wrong shapes \[delta.net.0.weight: file"),
    ]
    for i, (edits, message) in enumerate(cases):
        with pytest.raises(HeadFormatError, match=message):
            ActingHead.from_pretrained(broken_copy(steered_dir, tmp_path / f"case{i}", **edits))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e30], ids=["nan", "inf", "1e30"])
def test_heads_with_non_finite_or_absurd_weights_are_refused_at_load_and_save(steered_dir, tmp_path, value):
    """Such a head would make every action NaN: refused by the loaders, `vla-steer info`, and the one writer."""
    from vla_steer.hub import write_head

    def poison(tensors):
        tensors["delta.net.0.weight"][0, 0] = value

    bad = broken_copy(steered_dir, tmp_path / "bad", tensors=poison)
    message = r"NaN, inf or values beyond 1e\+06: \['delta.net.0.weight'\]"
    with pytest.raises(HeadFormatError, match=message):
        ActingHead.from_pretrained(bad)
    with pytest.raises(HeadFormatError, match=message):
        SteeredPolicy.from_pretrained(bad)
    assert cli(["info", str(bad)]) != 0
    head = ActingHead.from_pretrained(steered_dir)
    state = {name: {k: v.clone() for k, v in module.state_dict().items()} for name, module in head.head_modules().items()}
    state["delta"]["net.0.weight"][0, 0] = value
    with pytest.raises(HeadFormatError, match=message):
        write_head(tmp_path / "written", state, json.loads((steered_dir / "head_config.json").read_text()))
    assert not (tmp_path / "written").exists(), "nothing half-written"


def test_a_head_refuses_another_base_unless_overridden(steered_dir, root, tmp_path, monkeypatch, capsys):
    other_weights = save_pusht_diffusion_base(root / "base_seed1", seed=1)  # same architecture, other weights
    longer = save_pusht_diffusion_base(root / "base_horizon16", seed=0, horizon=16)  # other noise shape
    with pytest.raises(BaseMismatchError, match="weights differ"):
        SteeredPolicy.from_pretrained(steered_dir, base_policy=load_diffusion(other_weights))
    repointed = broken_copy(steered_dir, tmp_path / "repointed", config=lambda c: c.update(base_path=str(other_weights)))
    with pytest.raises(BaseMismatchError, match="allow_base_mismatch=True"):
        SteeredPolicy.from_pretrained(repointed)
    with pytest.warns(UserWarning, match="BASE MISMATCH OVERRIDDEN.*weights differ"):
        policy = SteeredPolicy.from_pretrained(repointed, allow_base_mismatch=True)
    assert policy.predict_action_chunk(dict(batches()[0][0])).shape == (2, 4, 2)
    monkeypatch.setenv("VLA_STEER_ALLOW_BASE_MISMATCH", "1")  # for lerobot-eval, which takes no such argument
    with pytest.warns(UserWarning, match="BASE MISMATCH OVERRIDDEN"):
        SteeredPolicy.from_pretrained(repointed)
    monkeypatch.delenv("VLA_STEER_ALLOW_BASE_MISMATCH")
    # other inference options (fewer DDIM steps) change the adapted base's config
    fewer_steps = broken_copy(steered_dir, tmp_path / "steps", config=lambda c: c.update(adapter_kwargs={"num_inference_steps": 2}))
    with pytest.raises(BaseMismatchError, match="adapter_kwargs.*config differs"):
        SteeredPolicy.from_pretrained(fewer_steps)
    # shapes cannot be overridden: the head cannot act on them
    with pytest.raises(HeadFormatError, match=r"noise_shape \[8, 2\] != base noise_shape \[16, 2\]"):
        SteeredPolicy.from_pretrained(steered_dir, base_policy=load_diffusion(longer), allow_base_mismatch=True)
    with pytest.raises(BaseMismatchError):
        load_steered(steered_dir, base=str(other_weights))

    assert cli(["info", str(steered_dir), "--base", str(other_weights)]) == 1
    assert "does NOT fit the base" in capsys.readouterr().out
    assert cli(["info", str(steered_dir), "--base", str(root / "base")]) == 0
    assert "fits the base" in capsys.readouterr().out


def test_saving_never_replaces_a_directory_holding_other_files(base_dir, tmp_path):
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "thesis.tex").write_text("years of work")
    with pytest.raises(FileExistsError, match=r"refusing to replace .*\['thesis.tex'\]"):
        steered_on(base_dir).save_pretrained(occupied)
    assert (occupied / "thesis.tex").read_text() == "years of work"
    assert os.listdir(tmp_path) == ["occupied"]  # no temporary directory left behind either


# -------------------------------------------------------------------------------------------------------------
# one writer, one acting rule
def _trained_algorithm(name: str, seed: int = 0):
    """A tiny algorithm of each method on a built-in base, every head weight random (not a fresh zero Delta)."""
    from accelerate import Accelerator

    from vla_steer.adapters import NativePolicyAdapter
    from vla_steer.algorithms import algorithm_config, build_algorithm
    from vla_steer.policies import ChunkPolicyConfig, build_chunk_policy

    torch.manual_seed(seed)
    policy = build_chunk_policy(ChunkPolicyConfig(type="flow", obs_dim=5, action_dim=2, horizon=3, n_action_steps=2,
                                                  hidden_dim=16, num_layers=1, num_inference_steps=2))
    adapter = NativePolicyAdapter(policy)
    head = HeadConfig(hidden_dim=16, num_layers=1, bound=1.5)
    algo = build_algorithm(algorithm_config(name), head, adapter, LatentLayout("full", adapter.noise_shape),
                           Accelerator(cpu=True))
    with torch.no_grad():
        for tensor in algo.parameters():
            tensor.copy_(0.5 * torch.randn(tensor.shape))
    return algo, adapter, head


def _trainer_head_config(algo, adapter, head) -> dict:
    """head_config.json as a training run writes it (format 0, with the latent critic)."""
    return {"algorithm": algo.name, "head": asdict(head), "noise_shape": list(adapter.noise_shape),
            "latent_shape": list(algo.layout.latent_shape), "feature_dim": adapter.feature_dim,
            "adapter": adapter.family, "env": "test", "critic": "latent"}


@pytest.mark.parametrize("name", ["lpds", "dsrl_sac", "dsrl_na"])
def test_a_deployed_head_acts_exactly_as_its_algorithm(name, tmp_path):
    """The trainer's modules written with write_head and read back as an ActingHead act as the algorithm does:
    deterministically, for a given prior draw, and for the draw both take from the same RNG state."""
    from vla_steer.hub import write_head
    from vla_steer.steering.best_of_k import latent_critic

    algo, adapter, head = _trained_algorithm(name)
    write_head(tmp_path / "head", {**algo.head_modules(), "critic": latent_critic(algo)},
               _trainer_head_config(algo, adapter, head))
    acting = ActingHead.from_dir(tmp_path / "head")
    assert set(acting.head_modules()) == {algo.acting_rule.module, "critic"}
    features = torch.randn(6, adapter.feature_dim, generator=torch.Generator().manual_seed(1))
    eps = torch.randn(6, algo.latent_dim, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(acting(features, deterministic=True), algo.act(features, deterministic=True), rtol=0, atol=0)
    torch.testing.assert_close(acting(features, eps=eps), algo.act(features, eps=eps), rtol=0, atol=0)
    torch.manual_seed(3)
    ours = acting(features)
    torch.manual_seed(3)
    torch.testing.assert_close(ours, algo.act(features), rtol=0, atol=0)
    assert not torch.allclose(ours, acting(features))  # and it does sample
    q = latent_critic(algo)(features, ours)
    torch.testing.assert_close(acting.critic(features, ours), q, rtol=0, atol=0)


def test_write_head_refuses_what_read_head_would_refuse(tmp_path):
    from vla_steer.hub import read_head, write_head

    algo, adapter, head = _trained_algorithm("lpds")
    config = _trainer_head_config(algo, adapter, head)
    with pytest.raises(HeadFormatError, match=r"missing \['critic.net.0.bias'"):
        write_head(tmp_path / "a", algo.head_modules(), config)  # "critic": "latent" without the critic
    with pytest.raises(HeadFormatError, match=r"unknown field\(s\) \['widget'\]"):
        write_head(tmp_path / "b", algo.head_modules(), {**config, "critic": None, "widget": 1})
    halved = {"delta": {k: v.to(torch.int32) for k, v in algo.delta_net.state_dict().items()}}
    with pytest.raises(HeadFormatError, match="floating point"):
        write_head(tmp_path / "c", halved, {k: v for k, v in config.items() if k != "critic"})
    assert not any(tmp_path.iterdir())  # nothing written by a refused call
    # state dicts work as well as modules; the files read back as written
    without_critic = {k: v for k, v in config.items() if k != "critic"}
    directory = write_head(tmp_path / "d", {"delta": algo.delta_net.state_dict()}, without_critic)
    read_config, tensors = read_head(directory)
    assert json.loads((directory / "head_config.json").read_text()) == without_critic
    assert read_config["algorithm"] == "lpds" and read_config["head"] == head_fields(head)
    # fields added after format 1 are left out while unset, so releases that predate them still read the head
    assert not set(read_config["head"]) & {"latent_rows", "steered_dims"}
    assert tensors.keys() == {f"delta.{k}" for k in algo.delta_net.state_dict()}
    assert all(torch.equal(tensors[f"delta.{k}"], v) for k, v in algo.delta_net.state_dict().items())
    write_head(directory, {"delta": algo.delta_net}, without_critic)  # replaces a previous head in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


# -------------------------------------------------------------------------------------------------------------
# hostile steered directories: what `vla-steer info` passes, the loaders load
def _poison_stats(directory: Path, change) -> None:
    path = directory / "policy_preprocessor_step_3_normalizer_processor.safetensors"
    stats = load_file(str(path))
    change(stats)
    save_file(stats, path)


def _nan_stat(stats):
    stats["observation.state.max"][0] = float("nan")


def _wrong_stat_shape(stats):
    stats["observation.state.max"] = torch.ones(5)


def _bf16_stat(stats):
    stats["observation.state.max"] = stats["observation.state.max"].bfloat16()


@pytest.mark.parametrize("change, message", [
    (_nan_stat, r"statistics \['observation.state.max'\] hold NaN or inf"),
    (_wrong_stat_shape, r"statistic 'observation.state.max' has shape \[5\], which does not fit the feature's shape \[2\]"),
    (_bf16_stat, r"tensor 'observation.state.max' has dtype 'BF16'"),
], ids=["nan", "wrong-shape", "bf16"])
def test_processor_stats_with_nan_or_the_wrong_shape_are_refused(steered_dir, tmp_path, change, message):
    bad = shutil.copytree(steered_dir, tmp_path / "bad")
    _poison_stats(bad, change)
    for load in (validate_directory, SteeredPolicy.from_pretrained):
        with pytest.raises(HeadFormatError, match=message):
            load(bad)
    assert cli(["info", str(bad)]) != 0


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(surprise=1), r"config.json in .* is not a config LeRobot can load"),
    (lambda c: c.update(best_of_k=0), r"steered.best_of_k=0 must be >= 1 and <= 1024"),
    (lambda c: c.update(best_of_k=10**9), r"steered.best_of_k=1000000000 must be >= 1 and <= 1024"),
    (lambda c: c.update(base_path="../../elsewhere/base"), r"base_path '../../elsewhere/base' climbs out of the steered directory"),
], ids=["unknown-field", "best-of-k-0", "best-of-k-1e9", "base-path-climbs-out"])
def test_info_refuses_a_config_json_the_loader_refuses(steered_dir, tmp_path, capsys, edit, message):
    bad = broken_copy(steered_dir, tmp_path / "bad", config=edit)
    with pytest.raises((HeadFormatError, ValueError), match=message):
        SteeredPolicy.from_pretrained(bad)
    assert cli(["info", str(bad)]) != 0
    assert re.search(message, capsys.readouterr().err)


def test_info_checks_the_base_config_json_names_which_is_the_one_loaded(steered_dir, root, tmp_path, capsys):
    """head_config.json records the base the head was saved with; the loader loads config.json's base_path. A
    directory repointed at another base must not be reported as fitting."""
    other_weights = save_pusht_diffusion_base(root / "base_info_other", seed=1)
    repointed = broken_copy(steered_dir, tmp_path / "repointed", config=lambda c: c.update(base_path=str(other_weights)))
    with pytest.raises(BaseMismatchError):
        SteeredPolicy.from_pretrained(repointed)
    assert cli(["info", str(repointed), "--base"]) == 1
    out = capsys.readouterr().out
    assert "does NOT fit the base" in out and "base_info_other" in out and "weights differ" in out
    assert cli(["info", str(steered_dir), "--base"]) == 0 and "fits the base" in capsys.readouterr().out
    needs_critic = broken_copy(steered_dir, tmp_path / "k8", config=lambda c: c.update(best_of_k=8))
    assert cli(["info", str(needs_critic), "--base"]) == 1
    assert "best_of_k=8 needs a head that ships its critic" in capsys.readouterr().out


def test_format_files_linking_out_of_the_directory_are_refused(steered_dir, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    linked = shutil.copytree(steered_dir, tmp_path / "linked")
    (linked / "head.safetensors").rename(outside / "head.safetensors")
    (linked / "head.safetensors").symlink_to(outside / "head.safetensors")
    with pytest.raises(HeadFormatError, match=r"head.safetensors is a symbolic link to .*outside the head directory"):
        validate_directory(linked)
    inside = shutil.copytree(steered_dir, tmp_path / "inside")  # a link within the directory is fine
    (inside / "head.safetensors").rename(inside / "weights.bin")
    (inside / "head.safetensors").symlink_to(inside / "weights.bin")
    assert validate_directory(inside).config["algorithm"] == "lpds"


@pytest.mark.parametrize("content, message", [
    (b"[1, 2]", r"head config must be a JSON object, got list"),
    (b" " * (2 << 20) + b"{}", r"head_config.json is \d+ bytes, over the 1048576-byte limit"),
    (b"[" * 900 + b"]" * 900, r"nests lists / objects more than 32 deep"),
], ids=["list", "2-MB", "deep"])
def test_push_checks_a_head_config_before_parsing_it(steered_dir, tmp_path, capsys, content, message):
    bad = shutil.copytree(steered_dir, tmp_path / "bad")
    (bad / "head_config.json").write_bytes(content)
    assert cli(["push", str(bad), "--repo-id", "me/bad", "--dry-run"]) != 0
    assert re.search(message, capsys.readouterr().err)


def test_saving_leaves_a_users_tmp_and_old_directories_alone(base_dir, tmp_path):
    for suffix in (".tmp", ".old"):
        (tmp_path / f"steered{suffix}").mkdir()
        (tmp_path / f"steered{suffix}" / "notes.txt").write_text(f"mine {suffix}")
    steered_on(base_dir).save_pretrained(tmp_path / "steered")
    steered_on(base_dir, head_seed=2).save_pretrained(tmp_path / "steered")  # replacing the first save
    for suffix in (".tmp", ".old"):
        assert (tmp_path / f"steered{suffix}" / "notes.txt").read_text() == f"mine {suffix}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["steered", "steered.old", "steered.tmp"]
