"""The WEICOM recipes run as the authors ran them: pretrained towers without a trained
checkpoint (a bare open_clip state dict, as the RemoteCLIP releases are), open_clip's own
evaluation transform, the paper's λ per model."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO
from rsir.config import load_config, to_dict
from rsir.data.transforms import prepare_image
from rsir.models import create_model, preprocessing_mismatches
from rsir.models.towers import create_open_clip

SHARED = REPO.parent / "shared" / "data" / "images"


def tiny_remoteclip_recipe(weights: Path, *overrides: str):
    """configs/patterncom_weicom_remoteclip.yaml with rsir-tiny towers from ``weights``."""
    return load_config(REPO / "configs" / "patterncom_weicom_remoteclip.yaml", [
        "model.image_tower.options.model_name=rsir-tiny", f"model.image_tower.options.pretrained={weights}",
        "model.text_tower.options.model_name=rsir-tiny", f"model.text_tower.options.pretrained={weights}",
        "model.embed_dim=128", "data.image_size=64", "scaling.use_gpu=false",
        "scaling.gpus_per_worker=0", *overrides])


def save_bare_state_dict(path: Path, seed: int = 3) -> dict[str, torch.Tensor]:
    """A tiny open_clip CLIP's whole state dict, saved bare (no wrapper key), like the
    RemoteCLIP-ViT-*.pt releases."""
    torch.manual_seed(seed)
    state = create_open_clip("rsir-tiny").state_dict()
    torch.save(state, path)
    return state


def test_the_two_recipes_hold_the_papers_lambdas_and_transform() -> None:
    clip = load_config(REPO / "configs" / "patterncom_weicom.yaml")
    remote = load_config(REPO / "configs" / "patterncom_weicom_remoteclip.yaml")
    assert (clip.eval.weicom_lambda, remote.eval.weicom_lambda) == (0.3, 0.6)
    for cfg in (clip, remote):  # ViT-L/14 (the OpenAI weights' QuickGELU variant allowed)
        assert cfg.model.image_tower.options["model_name"].startswith("ViT-L-14")
        assert cfg.model.text_tower.options["model_name"].startswith("ViT-L-14")
        assert (cfg.data.resize, cfg.data.image_size) == ("bicubic_center_crop", 224)
    assert remote.model.image_tower.options["pretrained"] == "/models/RemoteCLIP-ViT-L-14.pt"


def test_a_bare_open_clip_state_dict_loads_into_both_towers(tmp_path: Path) -> None:
    from rsir.inference import pretrained_weights, resolve_checkpoint

    state = save_bare_state_dict(tmp_path / "RemoteCLIP-rsir-tiny.pt")
    cfg = tiny_remoteclip_recipe(tmp_path / "RemoteCLIP-rsir-tiny.pt")
    assert resolve_checkpoint(cfg, None) is None  # training-free: no checkpoint needed
    assert pretrained_weights(cfg) == {"image_tower": str(tmp_path / "RemoteCLIP-rsir-tiny.pt"),
                                       "text_tower": str(tmp_path / "RemoteCLIP-rsir-tiny.pt")}
    model = create_model(cfg.model, cfg.loss)
    visual = model.image_tower.visual.state_dict()
    assert set(visual) == {k.removeprefix("visual.") for k in state if k.startswith("visual.")}
    for name, tensor in visual.items():
        assert torch.equal(tensor, state[f"visual.{name}"]), name
    text = {k: v for k, v in model.text_tower.clip.state_dict().items()}
    text_keys = [k for k in state if not k.startswith("visual.")]
    assert text_keys and all(torch.equal(text[k], state[k]) for k in text_keys)
    # a randomly initialised tower is not the file's
    assert not torch.equal(create_open_clip("rsir-tiny").visual.conv1.weight, state["visual.conv1.weight"])


def test_without_checkpoint_or_pretrained_towers_the_error_says_what_is_missing() -> None:
    from rsir.evaluate import _checkpoint
    from rsir.inference import resolve_checkpoint

    demo = load_config(REPO / "configs" / "demo.yaml")
    with pytest.raises(ValueError, match=r"--checkpoint FILE.*image_tower.pretrained=None"):
        resolve_checkpoint(demo, None)
    with pytest.raises(SystemExit, match="a trained checkpoint is needed"):
        _checkpoint(demo, None)
    with pytest.raises(ValueError, match="no such file"):
        resolve_checkpoint(demo, "/nonexistent/model.pt")
    # pretrained towers but a trainable head: still needs training
    clip = load_config(REPO / "configs" / "patterncom_weicom.yaml", ["model.head=ffn"])
    with pytest.raises(ValueError, match="head='ffn'"):
        resolve_checkpoint(clip, None)


def test_pretrained_towers_without_checkpoint_refuse_another_preprocessing(tmp_path: Path) -> None:
    from rsir.inference import load_trained

    save_bare_state_dict(tmp_path / "w.pt")
    cfg = tiny_remoteclip_recipe(tmp_path / "w.pt", "data.resize=bilinear", "data.mean=[0.5,0.5,0.5]")
    with pytest.raises(ValueError, match=r"data.resize is 'bilinear'.*data.mean is \[0.5, 0.5, 0.5\]"):
        load_trained(to_dict(cfg), None)
    good = tiny_remoteclip_recipe(tmp_path / "w.pt")
    _, model = load_trained(to_dict(good), None)
    assert preprocessing_mismatches(model, good.data) == []


def _real_non_square_images() -> list[tuple[str, np.ndarray]]:
    """RGB.byte.tif (791 x 718 Landsat, read as RGB) and a LEVIR-CD tile cropped to 256 x 180."""
    tif = SHARED / "multispectral" / "RGB.byte.tif"
    levir = sorted((SHARED / "levircd_dsifn_samples" / "samples_LEVIR").rglob("*.png"))
    if not tif.is_file() or not levir:
        pytest.skip(f"real images not found under {SHARED}")
    return [("RGB.byte.tif", np.asarray(Image.open(tif).convert("RGB"))),
            ("LEVIR-CD crop", np.asarray(Image.open(levir[0]).convert("RGB"))[:180])]


def test_bicubic_center_crop_equals_open_clip_eval_transform(tmp_path: Path) -> None:
    import open_clip

    from rsir.models.towers import _open_clip

    _open_clip()  # registers rsir-tiny
    _, _, reference = open_clip.create_model_and_transforms("rsir-tiny")
    save_bare_state_dict(tmp_path / "w.pt")
    cfg = tiny_remoteclip_recipe(tmp_path / "w.pt")
    for name, array in _real_non_square_images():
        assert array.shape[0] != array.shape[1], name
        png = io.BytesIO()
        Image.fromarray(array).save(png, format="PNG")
        ours = prepare_image(png.getvalue(), ["R", "G", "B"], cfg.data, None)
        theirs = reference(Image.fromarray(array))
        assert ours.shape == theirs.shape == (3, 64, 64), name
        assert torch.allclose(ours, theirs, atol=1e-5, rtol=0), (name, (ours - theirs).abs().max())
        # the plain stretch differs visibly: this test tells the two apart
        plain = prepare_image(png.getvalue(), ["R", "G", "B"],
                              load_config(REPO / "configs" / "patterncom_weicom.yaml",
                                          ["data.resize=bilinear", "data.image_size=64"]).data, None)
        assert (plain - theirs).abs().max() > 0.1, name


def test_serving_a_training_free_recipe_needs_no_checkpoint_and_takes_its_lambda(tmp_path: Path) -> None:
    from rsir.config import save_config
    from rsir.serve.app import load_recipe
    from rsir.serve.config import LimitsConfig, ServeConfig
    from rsir.serve.requests import parse_search

    save_bare_state_dict(tmp_path / "w.pt")
    save_config(tiny_remoteclip_recipe(tmp_path / "w.pt"), tmp_path / "remoteclip.yaml")
    recipe = load_recipe(ServeConfig(recipe=str(tmp_path / "remoteclip.yaml")))
    assert recipe["eval"]["weicom_lambda"] == 0.6
    with pytest.raises(ValueError, match="neither 'checkpoint' nor 'recipe'"):
        load_recipe(ServeConfig())
    with pytest.raises(ValueError, match="a trained checkpoint is needed"):
        load_recipe(ServeConfig(recipe=str(REPO / "configs" / "demo.yaml")))
    # `rsir serve`'s preflight says the same before anything starts
    from rsir.serve.preflight import check_serve

    assert check_serve(ServeConfig(recipe=str(tmp_path / "remoteclip.yaml"))).problems == []
    assert any("a trained checkpoint is needed" in p for p in
               check_serve(ServeConfig(recipe=str(REPO / "configs" / "demo.yaml"))).problems)
    assert any("neither 'checkpoint' nor 'recipe'" in p for p in check_serve(ServeConfig()).problems)

    png = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png, format="PNG")
    body = {"kind": "composed", "text": "red", "image": png.getvalue(), "target": "images"}
    req = parse_search(body, LimitsConfig(), 10, ["R", "G", "B"], {"images"}, default_lambda=0.6)
    assert req.lam == 0.6
    assert parse_search({**body, "lambda": 0.2}, LimitsConfig(), 10, ["R", "G", "B"], {"images"},
                        default_lambda=0.6).lam == 0.2
