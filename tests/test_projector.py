"""The projector: residual default, the copy map's ridge fit, saving alone and refusing other backbones."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_demos, tiny_aim

from aim_icl import AIM, AIMError, Demo
from aim_icl.core.projector import LinearProjector, ResidualProjector, ridge_fit
from aim_icl.core.projector_config import CONFIG_NAME
from aim_icl.testing.tiny import build_tiny, tiny_image


def test_ridge_fit_recovers_a_linear_map():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 16, generator=g)
    w, b = torch.randn(8, 16, generator=g), torch.randn(8, generator=g)
    weight, bias = ridge_fit(x, x @ w.T + b, ridge=1e-8)
    assert torch.allclose(weight, w, atol=1e-4) and torch.allclose(bias, b, atol=1e-4)


def test_fresh_residual_projector_is_zero_until_fitted():
    proj = ResidualProjector(16, 8)
    assert not bool(proj.fitted)
    assert torch.equal(proj(torch.randn(3, 16)), torch.zeros(3, 8))


@torch.no_grad()
def copy_error(aim, demos) -> tuple[float, float]:
    """Relative distance of the demos' fused tokens to their own token embeddings, and the share of fused tokens
    whose nearest vocabulary embedding is their own token's."""
    states = aim.encode(demos)
    fused = torch.cat([aim.project(s.hidden) for s in states])
    target = torch.cat([aim.backbone.embed(s.token_ids) for s in states])
    table = aim.backbone.embed(torch.arange(aim.model.get_input_embeddings().num_embeddings))
    nearest = torch.cdist(fused, table).argmin(-1)  # the token each fused vector is closest to
    own = (nearest == torch.cat([s.token_ids for s in states])).float().mean()
    return float((fused - target).norm() / target.norm()), float(own)


def test_fitted_copy_map_reproduces_unseen_demo_text_embeddings(family):
    """Untrained AIM ≈ text-only demos, on demos the copy map was not fitted on (other images, other texts).

    Fitted on 8 demos (83 positions for a 64-wide map) the map memorised them: Gemma 3 was at 0.84 here. With
    341 positions every family but Gemma 3 is at 0.03-0.16; Gemma 3 stays at 0.57 however much it is fitted on
    (0.52 on 2,801 positions): in its tiny random model each sublayer's output is normalised (sandwich norms) to
    ~9x the norm of the token embedding, so the last layer holds its token only partly linearly.
    """
    aim = tiny_aim(family)  # fitted on make_demos(32, seed=7)
    residual, own = copy_error(aim, make_demos(16, seed=11))
    assert residual < 0.65 and own >= 0.8


def test_a_fresh_gated_projector_is_exactly_text_mode(family):
    """The gated projector starts at the demos' own word embeddings: `aim` and `text` logits are equal."""
    model, processor = build_tiny(family)
    aim = AIM(model, processor, projector_name="gated", projector_options={"mlp_ratio": 2})
    demos = make_demos(3, seed=5)
    with torch.no_grad():
        fused = aim.forward(aim.build_inputs(tiny_image(1), "what?", demos, mode="aim")).logits
        text = aim.forward(aim.build_inputs(tiny_image(1), "what?", demos, mode="text")).logits
    assert fused.shape == text.shape and torch.allclose(fused, text, atol=1e-5)
    with torch.no_grad():
        aim.projector.gate.fill_(0.5)
        opened = aim.forward(aim.build_inputs(tiny_image(1), "what?", demos, mode="aim")).logits
    assert not torch.allclose(opened, text, atol=1e-3)  # the gate opened: the MLP adds to the words


def test_fitting_on_too_few_positions_warns(caplog):
    model, processor = build_tiny("llava")
    aim = AIM(model, processor, projector_name="residual")
    with caplog.at_level("WARNING", logger="aim_icl.core.aim"):
        aim.fit_projector(make_demos(4, seed=7))
    assert "generalise poorly" in caplog.text


def test_save_and_load_round_trip(tmp_path, llava):
    llava.save_projector(tmp_path / "proj")
    config = json.loads((tmp_path / "proj" / CONFIG_NAME).read_text())
    assert config["name"] == "residual" and config["backbone"]["model_type"] == "llava"
    model, processor = build_tiny("llava")
    again = AIM(model, processor, projector=tmp_path / "proj")
    demo = Demo(tiny_image(3), "question: what? answer: red")
    assert torch.equal(llava.aggregate(demo), again.aggregate(demo))


def test_loading_onto_another_backbone_is_refused(tmp_path, llava):
    llava.save_projector(tmp_path / "proj")
    model, processor = build_tiny("qwen2_vl")
    with pytest.raises(AIMError, match="belongs to another backbone"):
        AIM(model, processor, projector=tmp_path / "proj")


def test_a_saved_projector_reads_the_layer_it_was_trained_on(tmp_path):
    model, processor = build_tiny("llava")
    AIM(model, processor, layer=1).save_projector(tmp_path / "proj")
    assert json.loads((tmp_path / "proj" / CONFIG_NAME).read_text())["layer"] == 1
    assert AIM(model, processor, projector=tmp_path / "proj").layer == 1  # not the default last layer
    with pytest.raises(AIMError, match="trained on layer 1's hidden states, not layer -1"):
        AIM(model, processor, projector=tmp_path / "proj", layer=-1)


def test_a_local_model_path_binds_nothing_a_hub_id_does(tmp_path, monkeypatch):
    """Trained from `build/model`, loaded from its absolute path (or another machine): the same backbone."""
    model, processor = build_tiny("llava")
    (tmp_path / "build" / "model").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    model.config._name_or_path = "build/model"
    AIM(model, processor).save_projector(tmp_path / "proj")
    model.config._name_or_path = str(tmp_path / "build" / "model")
    AIM(model, processor, projector=tmp_path / "proj")  # loads
    model.config._name_or_path = "org/base"
    AIM(model, processor).save_projector(tmp_path / "hub")
    model.config._name_or_path = "org/other"
    with pytest.raises(AIMError, match="name_or_path 'org/base' != 'org/other'"):
        AIM(model, processor, projector=tmp_path / "hub")


def test_missing_projector_directory_is_a_clear_error(tmp_path):
    model, processor = build_tiny("llava")
    with pytest.raises(AIMError, match="no projector_config.json"):
        AIM(model, processor, projector=tmp_path / "nowhere")


def test_projector_is_pluggable_by_name(tmp_path):
    model, processor = build_tiny("llava")
    aim = AIM(model, processor, projector_name="linear")
    assert isinstance(aim.projector, LinearProjector)
    fused = aim.aggregate(make_demos(1)[0])
    states = aim.encode(make_demos(1))[0]
    assert torch.allclose(fused, states.hidden)  # identity-initialised
    aim.save_projector(tmp_path / "linear")
    assert isinstance(AIM(model, processor, projector=tmp_path / "linear").projector, LinearProjector)
    with pytest.raises(AIMError, match="unknown projector 'resdual'; did you mean 'residual'"):
        AIM(model, processor, projector_name="resdual")


@pytest.mark.parametrize(
    "module", [lambda h, e: LinearProjector(h, e), lambda h, e: ResidualProjector(h, e, mlp_ratio=4)]
)
def test_a_projector_module_saves_as_what_it_is(tmp_path, module):
    """A module passed to AIM saves its own kind and options (not the default name), so the save loads back."""
    model, processor = build_tiny("llava")
    probe = AIM(model, processor)
    given = module(probe.backbone.hidden_size, probe.backbone.embed_size)
    torch.nn.init.normal_(next(given.parameters()))
    AIM(model, processor, projector=given).save_projector(tmp_path / "proj")
    loaded = AIM(model, processor, projector=tmp_path / "proj").projector
    assert type(loaded) is type(given)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), given.state_dict().values()))


def test_an_unregistered_projector_is_refused_when_saved(tmp_path):
    model, processor = build_tiny("llava")
    aim = AIM(model, processor, projector=torch.nn.Linear(64, 64))
    with pytest.raises(AIMError, match="'Linear' is not registered"):
        aim.save_projector(tmp_path / "proj")
    assert not (tmp_path / "proj").exists()  # nothing half-written
