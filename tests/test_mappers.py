import math

import numpy as np
import pytest
import torch

from viewneti_core.data.cameras import CameraNormalization, normalize_cameras
from viewneti_core.method.mappers import FourierFeatures, build_mapper, load_mapper, save_mapper


def test_fourier_matrix_is_seed0_normal_scaled_per_input():
    sigmas = [0.03, 2.0, 0.5, 0.5]
    ff = FourierFeatures(sigmas, num_features=32)
    expected = torch.randn(32, 4, generator=torch.Generator().manual_seed(0)) * torch.tensor(sigmas)
    assert torch.equal(ff.weight, expected)
    x = torch.tensor([[0.1, -0.2, 0.3, 0.4]])
    out = ff(x)
    assert out.shape == (1, 64)
    proj = x @ expected.T
    assert torch.allclose(out, torch.cat([proj.sin(), proj.cos()], dim=-1))


def test_view_mapper_architecture_and_norm(camera_normalization):
    mapper = build_mapper(
        "view", 1024, 0.37, token="<view>", super_category_token="view", camera_normalization=camera_normalization
    )
    layers = [type(m).__name__ for m in mapper.net]
    assert layers == ["Linear", "LayerNorm", "LeakyReLU", "Linear", "LayerNorm", "LeakyReLU", "Linear"]
    assert (mapper.net[0].in_features, mapper.net[0].out_features, mapper.net[-1].out_features) == (64, 64, 2048)
    assert mapper.fourier.weight.shape == (32, 14)
    assert torch.allclose(mapper.fourier.weight[:, 0] / torch.randn(32, 14, generator=torch.Generator().manual_seed(0))[:, 0],
                          torch.full((32,), 0.03))
    cams = torch.randn(5, 12) * 100
    word, bypass = mapper(torch.tensor([0, 250, 500, 750, 999]), torch.arange(5), cams)
    assert word.shape == bypass.shape == (5, 1024)
    assert torch.allclose(word.norm(dim=-1), torch.full((5,), 0.37), atol=1e-5)
    assert not torch.allclose(bypass.norm(dim=-1), torch.full((5,), 0.37))  # bypass is not normalised


def test_inputs_are_rescaled_to_minus_one_one(camera_normalization, dtu_like_cameras):
    flat = torch.tensor(dtu_like_cameras.reshape(-1, 12), dtype=torch.float32)
    scaled = normalize_cameras(flat, torch.tensor(camera_normalization.minimum), torch.tensor(camera_normalization.maximum))
    varying = flat.max(0).values > flat.min(0).values
    assert torch.allclose(scaled.min(0).values[varying], torch.tensor(-1.0), atol=1e-5)
    assert torch.allclose(scaled.max(0).values[varying], torch.tensor(1.0), atol=1e-5)
    assert torch.all(scaled[:, ~varying] == 0)

    # t/1000*2-1 and l/16*2-1 feed the Fourier features: check one row by hand.
    mapper = build_mapper("object", 8, 1.0, token="<object>", super_category_token="object")
    x = torch.tensor([[500 / 1000 * 2 - 1, 4 / 16 * 2 - 1]])
    expected = mapper.net(mapper.fourier(x))[:, :8]
    expected = expected / expected.norm() * 1.0
    word, _ = mapper(torch.tensor([500]), torch.tensor([4]))
    assert torch.allclose(word, expected, atol=1e-6)


def test_normalisation_travels_with_the_checkpoint(tmp_path, camera_normalization):
    mapper = build_mapper("view", 32, 0.5, token="<view>", super_category_token="view", camera_normalization=camera_normalization)
    save_mapper(mapper, tmp_path / "view_mapper")
    loaded = load_mapper(tmp_path / "view_mapper")
    assert loaded.config.camera == camera_normalization
    cams = torch.randn(3, 12)
    args = (torch.tensor([1, 500, 998]), torch.tensor([0, 7, 15]), cams)
    for a, b in zip(mapper(*args), loaded(*args), strict=True):
        assert torch.equal(a, b)
    assert set(loaded.state_dict()) >= {"camera_min", "camera_max", "fourier.weight", "target_norm"}


def test_spherical_cameras_supported():
    norm = CameraNormalization.from_cameras(np.array([[0.1, 0.0, 2.0], [1.2, math.pi, 3.0]]), "spherical")
    mapper = build_mapper("view", 16, 1.0, token="<view>", super_category_token="view", camera_normalization=norm)
    assert mapper.fourier.weight.shape == (32, 5)
    word, _ = mapper(torch.tensor([10]), torch.tensor([3]), torch.tensor([[0.5, 1.0, 2.5]]))
    assert word.shape == (1, 16)


def test_bad_cameras_are_rejected(camera_normalization):
    mapper = build_mapper("view", 16, 1.0, token="<view>", super_category_token="view", camera_normalization=camera_normalization)
    t, layer = torch.tensor([1, 2]), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"shape \(N, 12\)"):
        mapper(t, layer, torch.zeros(2, 9))
    bad = torch.zeros(2, 12)
    bad[1, 3] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite values \(rows \[1\]\)"):
        mapper(t, layer, bad)
    with pytest.raises(ValueError, match="needs a camera"):
        mapper(t, layer, None)
    with pytest.raises(ValueError, match="camera normalisation"):
        build_mapper("view", 16, 1.0, token="<view>", super_category_token="view")


def test_mappers_run_in_float32_under_bf16_autocast(camera_normalization):
    """Training under bf16 autocast must compute the same mapper outputs as float32 inference."""
    mapper = build_mapper("view", 64, 0.37, token="<view>", super_category_token="view",
                          camera_normalization=camera_normalization)
    t = torch.tensor([999, 966, 933, 33, 0])  # adjacent sampling timesteps differ by 33
    layers = torch.tensor([0, 3, 7, 11, 15])
    cams = torch.randn(5, 12, generator=torch.Generator().manual_seed(0)) * 100
    with torch.no_grad():
        expected = mapper(t, layers, cams)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = mapper(t, layers, cams)
            # what the mapper would compute if autocast reached it: bf16 linear layers
            leaked = mapper.net(mapper.fourier(torch.cat(
                [(t.float() / 1000 * 2 - 1)[:, None], (layers.float() / 16 * 2 - 1)[:, None],
                 normalize_cameras(cams, mapper.camera_min, mapper.camera_max)], dim=-1)))
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == torch.float32 and torch.equal(a, b)
    assert leaked.dtype == torch.bfloat16  # the guard: autocast really would change the computation
