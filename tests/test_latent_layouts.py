"""Latent layouts: what each does to the base's noise distribution, and `vla-steer check-layout` before any RL."""

from __future__ import annotations

import json

import pytest
import torch

from vla_steer.adapters.base import LatentLayout, interpolation_matrix
from vla_steer.cli import main as cli
from vla_steer.config import RecipeError, recipe_from_dict
from vla_steer.training.layout_check import candidate_layouts, keeps_base, layout_warning, recommend

PI0_NOISE = (50, 32)  # pi0 / pi0.5: chunk 50, actions padded to 32


def empirical_noise(layout: LatentLayout, draws: int = 40_000) -> torch.Tensor:
    torch.manual_seed(0)
    return layout.to_noise(torch.randn(draws, layout.latent_dim))


@pytest.mark.parametrize("name,rows", [("full", None), ("tiled", None), ("interpolated", 3), ("interpolated", 4)])
def test_prior_latents_give_unit_gaussian_entries_with_the_documented_time_covariance(name, rows):
    layout = LatentLayout(name, (7, 3), rows)
    noise = empirical_noise(layout)
    assert noise.shape == (40_000, 7, 3)
    torch.testing.assert_close(noise.mean(0), torch.zeros(7, 3), rtol=0, atol=0.03)
    expected = layout.noise_covariance_along_time()
    torch.testing.assert_close(expected.diag(), torch.ones(7))  # every entry stays N(0, 1)
    for dim in range(3):
        torch.testing.assert_close(noise[:, :, dim].T.cov(), expected, rtol=0, atol=0.03)
    cross = torch.cov(torch.cat([noise[:, :, 0], noise[:, :, 1]], dim=1).T)[:7, 7:]
    torch.testing.assert_close(cross, torch.zeros(7, 7), rtol=0, atol=0.03)  # action dims stay independent


def test_layout_correlations_along_time():
    """full: independent rows; tiled: identical rows; interpolated: control rows pass through exactly and rows
    two control intervals apart are independent."""
    assert torch.equal(LatentLayout("full", (5, 2)).noise_covariance_along_time(), torch.eye(5))
    assert torch.equal(LatentLayout("tiled", (5, 2)).noise_covariance_along_time(), torch.ones(5, 5))
    layout = LatentLayout("interpolated", (9, 2), rows=3)  # control rows at t = 0, 4, 8
    latent = torch.randn(4, 3, 2)
    noise = layout.to_noise(latent.flatten(1))
    torch.testing.assert_close(noise[:, [0, 4, 8]], latent)
    cov = layout.noise_covariance_along_time()
    assert cov[0, 8] == 0 and cov[0, 4] == 0 and 0 < cov[3, 5] < 1
    # the two limits: one control row is tiled, one per noise row is full
    z = torch.randn(2, 5 * 2)
    torch.testing.assert_close(LatentLayout("interpolated", (5, 2), rows=5).to_noise(z), LatentLayout("full", (5, 2)).to_noise(z))
    z1 = torch.randn(2, 2)
    torch.testing.assert_close(LatentLayout("interpolated", (5, 2), rows=1).to_noise(z1), LatentLayout("tiled", (5, 2)).to_noise(z1))
    assert torch.all(interpolation_matrix(50, 4).norm(dim=1).sub(1).abs() < 1e-6)


@pytest.mark.parametrize("name,rows,latent_shape", [("full", None, (50, 7)), ("tiled", None, (1, 7)),
                                                    ("interpolated", 5, (5, 7))])
def test_pi0_padded_dims_keep_fresh_prior_draws(name, rows, latent_shape):
    layout = LatentLayout(name, PI0_NOISE, rows, steered_dims=7)
    assert layout.latent_shape == latent_shape and layout.masked
    latent = torch.randn(3, layout.latent_dim)
    first, second = layout.to_noise(latent), layout.to_noise(latent)
    assert first.shape == (3, 50, 32)
    torch.testing.assert_close(first[..., :7], second[..., :7], rtol=0, atol=0)  # the steered dims: the latent's
    assert not torch.equal(first[..., 7:], second[..., 7:])  # the padded dims: a new prior draw every call
    padded = empirical_noise(layout, 4_000)[..., 7:]
    torch.testing.assert_close(padded.mean(), torch.tensor(0.0), rtol=0, atol=0.02)
    torch.testing.assert_close(padded.reshape(4_000, -1).var(0).mean(), torch.tensor(1.0), rtol=0, atol=0.02)
    assert LatentLayout(name, PI0_NOISE, rows).latent_shape == (latent_shape[0], 32)  # unmasked: all 32


def test_bad_layouts_are_refused_with_the_fix(tiny_recipe):
    with pytest.raises(ValueError, match="unknown latent layout 'diagonal'"):
        LatentLayout("diagonal", (4, 2))
    with pytest.raises(ValueError, match="needs head.latent_rows between 1 and the chunk length 4"):
        LatentLayout("interpolated", (4, 2))
    with pytest.raises(ValueError, match="needs head.latent_rows between 1 and the chunk length 4"):
        LatentLayout("interpolated", (4, 2), rows=5)
    with pytest.raises(ValueError, match="applies only to latent_layout 'interpolated'"):
        LatentLayout("tiled", (4, 2), rows=2)
    with pytest.raises(ValueError, match="head.steered_dims must be between 1 and the noise width 2"):
        LatentLayout("full", (4, 2), steered_dims=3)
    with pytest.raises(RecipeError, match="head.latent_rows .* goes with head.latent_layout: interpolated"):
        recipe_from_dict(tiny_recipe(head={"latent_layout": "tiled", "latent_rows": 2}))
    with pytest.raises(RecipeError, match="head.latent_rows .* goes with head.latent_layout: interpolated"):
        recipe_from_dict(tiny_recipe(head={"latent_layout": "interpolated"}))


def test_candidates_recommendation_and_the_train_warning():
    names = [layout.describe() for layout in candidate_layouts((8, 8), action_dim=2)]
    assert names == ["full", "tiled", "interpolated(2)", "interpolated(4)", "full, 2 of 8 dims", "tiled, 2 of 8 dims",
                     "interpolated(2), 2 of 8 dims", "interpolated(4), 2 of 8 dims"]
    assert [layout.describe() for layout in candidate_layouts((4, 3), action_dim=3)] == ["full", "tiled", "interpolated(2)"]
    base = {"success_rate": 0.5, "return_mean": 10.0}
    assert keeps_base(base, {"success_rate": 0.4, "return_mean": 0.0})
    assert not keeps_base(base, {"success_rate": 0.3, "return_mean": 50.0})
    never = {"success_rate": 0.0, "return_mean": -100.0}  # a base that never succeeds is judged on its return
    assert keeps_base(never, {"success_rate": 0.0, "return_mean": -115.0})
    assert not keeps_base(never, {"success_rate": 0.0, "return_mean": -130.0})
    rows = [{"layout": "full", "latent_dim": 64, "keeps_base": True, "success_rate": 0.5, "return_mean": 1.0},
            {"layout": "tiled", "latent_dim": 8, "keeps_base": False, "success_rate": 0.0, "return_mean": 0.0},
            {"layout": "interpolated(2)", "latent_dim": 16, "keeps_base": True, "success_rate": 0.45, "return_mean": 1.0}]
    assert recommend(rows) == "interpolated(2)"
    assert recommend([{**r, "keeps_base": False} for r in rows]) is None
    tiled = LatentLayout("tiled", (8, 8))
    assert layout_warning(tiled, base, {"success_rate": 0.5, "return_mean": 10.0}) is None
    warning = layout_warning(tiled, base, {"success_rate": 0.0, "return_mean": -3.0})
    assert "collapses under latent layout 'tiled'" in warning and "0.50 -> 0.00" in warning


def test_check_layout_on_the_built_in_base(tiny_recipe, tmp_path, capsys):
    """One row per layout beside the base's own noise, a recommendation, and the JSON report; the built-in base's
    chunk is 4 x 2, so no padded dims and one interpolated layout (K = 2)."""
    import yaml

    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(tiny_recipe(head={"latent_layout": "interpolated", "latent_rows": 2})))
    status = cli(["check-layout", str(recipe_file), "train.eval_episodes=2", "--output", str(tmp_path / "report.json")])
    out = capsys.readouterr().out
    assert status in (0, 1)
    assert "recipe's layout: interpolated(2)" in out and "base (its own i.i.d. noise)" in out
    table = [line.split()[0] for line in out.splitlines() if line.startswith("  ") and line.split()[0] in
             ("full", "tiled", "interpolated(2)")]
    assert table == ["full", "tiled", "interpolated(2)"]
    report = json.loads((tmp_path / "report.json").read_text())
    assert [r["layout"] for r in report["layouts"]] == ["full", "tiled", "interpolated(2)"]
    assert report["base"]["episodes"] == 2 and all(r["episodes"] == 2 for r in report["layouts"])
    assert all(r["action_drift"] >= 0 for r in report["layouts"])
    own = next(r for r in report["layouts"] if r["layout"] == "interpolated(2)")
    assert status == (0 if own["keeps_base"] else 1)
    assert report["layouts"][1]["latent_dim"] == 2 and report["layouts"][0]["latent_dim"] == 8
    assert ("recommended: " + str(report["recommended"])) in out or report["recommended"] is None


def test_check_layout_on_a_tiny_lerobot_smolvla(tmp_path, capsys):
    """The real SmolVLA pads its 2 action dims to 8: every layout is checked again steering only the real ones."""
    import yaml
    from test_lerobot_native import PUSHT_STATE, native_recipe
    from tiny_vla import save_pusht_smolvla_base

    base = save_pusht_smolvla_base(tmp_path)
    pixels = {**PUSHT_STATE, "obs_type": "pixels_agent_pos", "episode_length": 16}
    recipe = native_recipe(tmp_path, str(base), env=pixels, base={"adapter_kwargs": {}},
                           train={"eval_episodes": 2, "entropy_states": 2})
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    cli(["check-layout", str(tmp_path / "recipe.yaml"), "--rows", "4", "--output", str(tmp_path / "report.json")])
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "report.json").read_text())
    names = ["full", "tiled", "interpolated(4)", "full, 2 of 8 dims", "tiled, 2 of 8 dims", "interpolated(4), 2 of 8 dims"]
    assert [r["layout"] for r in report["layouts"]] == names
    assert "noise [8, 8], 2 action dims" in out and all(name in out for name in names)
    assert [r["latent_dim"] for r in report["layouts"]] == [64, 8, 32, 16, 2, 8]


def test_training_under_an_interpolated_layout_checks_the_base_and_ships_the_layout(tiny_recipe):
    from vla_steer.lerobot_policy.head import ActingHead
    from vla_steer.training import SteeringTrainer

    recipe = recipe_from_dict(tiny_recipe(head={"latent_layout": "interpolated", "latent_rows": 2},
                                          algorithm={"name": "dsrl_sac", "batch_size": 32}))
    trainer = SteeringTrainer(recipe)
    trainer.run()
    assert trainer.layout.latent_shape == (2, 2) and trainer.algo.latent_dim == 4
    records = [json.loads(line) for line in (trainer.output_dir / "metrics.jsonl").read_text().splitlines()]
    base_eval = next(r for r in records if r["event"] == "base_eval")
    assert "base/under_latent_layout/success_rate" in base_eval  # the base under the layout, before any RL
    head = ActingHead.from_dir(trainer.output_dir / "head")
    config = json.loads((trainer.output_dir / "head" / "head_config.json").read_text())
    assert config["head"]["latent_layout"] == "interpolated" and config["head"]["latent_rows"] == 2
    assert config["latent_shape"] == [2, 2] and head.layout.describe() == "interpolated(2)"
