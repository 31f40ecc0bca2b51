import json
import subprocess
import sys

import pytest
import torch

from viewneti_core.base_model.sd_models import (
    MODEL_INFO_FILE,
    build_components,
    check_model_available,
    load_components,
)
from viewneti_core.errors import ModelNotFoundError
from viewneti_core.method.xti_attention import cross_attention_layer_names


def test_tiny_model_roundtrip_through_the_loading_code(tiny_model_dir):
    built = build_components("tiny")
    loaded = load_components(tiny_model_dir)
    assert loaded.weights == "random"
    assert json.loads((tiny_model_dir / MODEL_INFO_FILE).read_text())["weights"] == "random"
    for a, b in ((built.unet, loaded.unet), (built.text_encoder, loaded.text_encoder), (built.vae, loaded.vae)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not any(p.requires_grad for p in loaded.unet.parameters())
    assert loaded.scheduler.config.prediction_type == "v_prediction"
    # Offline byte-level tokenizer: "!" is the pad token with id 0, like SD 2.x.
    assert loaded.tokenizer.pad_token_id == 0 and loaded.tokenizer.convert_ids_to_tokens(0) == "!"


def test_tiny_unet_has_sd_cross_attention_layout(tiny_components):
    names = cross_attention_layer_names(tiny_components.unet)
    assert len(names) == 16
    assert [n.split(".")[0] for n in names] == ["down_blocks"] * 6 + ["mid_block"] + ["up_blocks"] * 9


def test_sd21_random_architecture_matches_the_real_model():
    with torch.device("meta"):
        sd = build_components("sd21-random")
    counts = {name: sum(p.numel() for p in getattr(sd, name).parameters()) for name in ("unet", "vae", "text_encoder")}
    assert round(counts["unet"] / 1e6, 1) == 865.9
    assert round(counts["vae"] / 1e6, 1) == 83.7
    assert round(counts["text_encoder"] / 1e6, 1) == 340.4
    assert sd.text_width == 1024
    assert len(cross_attention_layer_names(sd.unet)) == 16
    assert sd.vae.config.scaling_factor == 0.18215


def test_missing_local_directory_is_explained(tmp_path):
    with pytest.raises(ModelNotFoundError) as info:
        load_components(tmp_path / "nope")
    message = str(info.value)
    assert "does not exist" in message and "local diffusers directory" in message
    assert "taken down" in message and "make-tiny" in message


def test_incomplete_local_directory_names_missing_parts(tmp_path):
    (tmp_path / "m" / "unet").mkdir(parents=True)
    with pytest.raises(ModelNotFoundError, match="missing the subfolder.*tokenizer"):
        load_components(tmp_path / "m")


def test_unreachable_hub_id_is_explained(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="stable-diffusion-2-1.*\\n.*local diffusers directory"):
        load_components("stabilityai/stable-diffusion-2-1")


def test_preflight_check_agrees_with_loading_without_reading_weights(tiny_model_dir, tmp_path, monkeypatch):
    """check_model_available runs before hours of work: it must accept what loads and refuse, with the
    same explanation, what does not."""
    assert check_model_available(tiny_model_dir) == str(tiny_model_dir)
    assert check_model_available("builtin:sd21-random") == "builtin:sd21-random"
    with pytest.raises(ModelNotFoundError, match="unknown builder"):
        check_model_available("builtin:sd15")
    with pytest.raises(ModelNotFoundError, match="does not exist.*\n.*local diffusers directory"):
        check_model_available(tmp_path / "nope")
    (tmp_path / "m" / "unet").mkdir(parents=True)
    with pytest.raises(ModelNotFoundError, match="missing the subfolder.*tokenizer"):
        check_model_available(tmp_path / "m")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="stable-diffusion-2-1.*\n.*local diffusers directory"):
        check_model_available("stabilityai/stable-diffusion-2-1")


def test_make_tiny_cli(tmp_path):
    out = tmp_path / "tiny"
    done = subprocess.run(
        [sys.executable, "-m", "viewneti_cli.viewneti", "models", "make-tiny", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "RANDOM WEIGHTS" in done.stdout
    assert load_components(out).weights == "random"
    again = subprocess.run(
        [sys.executable, "-m", "viewneti_cli.viewneti", "models", "make-tiny", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert again.returncode == 2 and "not empty" in again.stderr
