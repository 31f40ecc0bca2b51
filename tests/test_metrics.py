"""DTU metrics (DESIGN 3.9): our batched torch SSIM must equal skimage's, LPIPS is the lpips package's
module and must equal an independent statement of its math, masked PSNR must follow the masked-MSE
formula, and the two protocols' backgrounds must differ where it matters. No pretrained VGG is available
offline: LPIPS parity uses an explicitly requested, labelled random backbone (and a stand-in VGG file),
and the pretrained path must fail loudly, naming the missing file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import structural_similarity

from viewneti_core.evaluation import metrics
from viewneti_core.evaluation.metrics import (
    LPIPS,
    VGG16_FILE,
    VGG16_URL,
    MissingWeightsError,
    apply_background,
    image_metrics,
    masked_mse,
    mse_to_psnr,
    resize_bicubic_uint8,
    ssim,
)


def _skimage_ssim(x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    return np.array([structural_similarity(a.numpy(), b.numpy(), channel_axis=0, data_range=1.0)
                     for a, b in zip(x.double(), y.double(), strict=True)])


def _structured_pairs(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients, a checkerboard, flat regions and a black-masked object: real-image-like structure."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    grad = torch.stack([xx, yy, (xx + yy) / 2])
    checker = (((torch.arange(h)[:, None] // 5 + torch.arange(w)[None] // 5) % 2).float()).expand(3, h, w)
    flat = torch.full((3, h, w), 0.5)
    disk = (((xx - 0.5) ** 2 + (yy - 0.5) ** 2) < 0.1).float()
    obj = grad * disk
    x = torch.stack([grad, checker, flat, obj])
    y = torch.stack([grad**1.3, checker.roll(2, dims=-1), flat + 0.01, (obj * 0.8 + 0.05 * disk)])
    return x, y.clamp(0, 1)


def test_ssim_matches_skimage_on_random_images():
    gen = torch.Generator().manual_seed(0)
    for h, w in ((48, 64), (37, 53), (300, 400)):
        x = torch.rand(2, 3, h, w, generator=gen)
        y = (x + 0.2 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
        ours = ssim(x, y).numpy()
        ref = _skimage_ssim(x, y)
        assert np.abs(ours - ref).max() < 1e-4, (h, w, ours, ref)
        assert np.abs(ours - ref).max() < 1e-8  # float64 throughout: in fact exact to rounding


def test_ssim_matches_skimage_on_structured_images():
    x, y = _structured_pairs(60, 80)
    ours, ref = ssim(x, y).numpy(), _skimage_ssim(x, y)
    assert np.abs(ours - ref).max() < 1e-4
    assert ours.min() < 0.95 < ours.max() <= 1.0 + 1e-12  # the cases are not all trivial
    assert ssim(x, x).numpy() == pytest.approx(1.0, abs=1e-12)


def test_ssim_rejects_images_smaller_than_the_window():
    with pytest.raises(ValueError, match="win_size"):
        ssim(torch.rand(1, 3, 5, 40), torch.rand(1, 3, 5, 40))


def test_masked_psnr_matches_numpy():
    rng = np.random.default_rng(1)
    gt = rng.random((3, 3, 30, 40))
    pred = np.clip(gt + rng.normal(0, 0.1, gt.shape), 0, 1)
    mask = rng.random((3, 30, 40)) > 0.6
    m3 = np.repeat(mask[:, None].astype(np.float64), 3, axis=1)
    expected_mse = ((gt * m3 - pred * m3) ** 2).reshape(3, -1).sum(1) / m3.reshape(3, -1).sum(1)
    expected_psnr = -10 * np.log10(expected_mse)
    mse = masked_mse(torch.from_numpy(pred), torch.from_numpy(gt), torch.from_numpy(mask))
    np.testing.assert_allclose(mse.numpy(), expected_mse, rtol=1e-12)
    np.testing.assert_allclose(mse_to_psnr(mse).numpy(), expected_psnr, rtol=1e-12)
    # errors outside the mask do not count
    pred_out = pred + (1 - m3) * 0.5
    mse_out = masked_mse(torch.from_numpy(pred_out), torch.from_numpy(gt), torch.from_numpy(mask))
    np.testing.assert_allclose(mse_out.numpy(), expected_mse, rtol=1e-12)


def test_empty_mask_gives_nan_not_a_number_made_up():
    x = torch.rand(1, 3, 20, 20)
    assert torch.isnan(masked_mse(x, x * 0.5, torch.zeros(1, 20, 20, dtype=torch.bool))).all()


def test_backgrounds_differ_where_it_matters():
    """A bright object whose prediction is darker: on a white background the object barely stands out from
    the background in either image, on black it does — SSIM differs; PSNR is the same in both protocols."""
    h, w = 48, 64
    gen = torch.Generator().manual_seed(3)
    mask = torch.zeros(1, h, w, dtype=torch.bool)
    mask[:, 10:38, 12:52] = True
    gt = (0.85 + 0.15 * torch.rand(1, 3, h, w, generator=gen)).clamp(0, 1)
    pred = gt * 0.7
    pred[..., :5, :] = torch.rand(1, 3, 5, w, generator=gen)  # outside the mask: must not matter
    m = mask[:, None].expand(-1, 3, -1, -1).double()
    black = _skimage_ssim(pred * m, gt * m)
    white = _skimage_ssim(pred * m + 1 - m, gt * m + 1 - m)
    assert abs(black[0] - white[0]) > 0.05
    v = image_metrics(pred, gt, mask, "viewneti")
    r = image_metrics(pred, gt, mask, "regnerf")
    assert v["ssim"][0].item() == pytest.approx(black[0], abs=1e-4)
    assert r["ssim"][0].item() == pytest.approx(white[0], abs=1e-4)
    assert v["psnr"][0].item() == pytest.approx(r["psnr"][0].item(), abs=1e-9)
    assert torch.isnan(v["lpips"]).all()  # no LPIPS model given: NaN, not zero
    white_img = apply_background(pred, mask, "white")
    assert (white_img[..., :5, :] == 1).all() and (apply_background(pred, mask, "black")[..., :5, :] == 0).all()


def test_unknown_protocol_and_background_are_rejected():
    with pytest.raises(ValueError, match="protocol"):
        metrics.get_protocol("nerf")
    with pytest.raises(ValueError, match="background"):
        apply_background(torch.rand(1, 3, 8, 8), torch.ones(1, 8, 8), "grey")


def test_protocols_are_as_designed():
    assert metrics.PROTOCOLS["viewneti"].background == "black"
    assert not metrics.PROTOCOLS["viewneti"].dtu_test_views_only
    assert metrics.PROTOCOLS["regnerf"].background == "white"
    assert metrics.PROTOCOLS["regnerf"].dtu_test_views_only


def _package_lins() -> list[torch.Tensor]:
    """The LPIPS linear layers as the lpips package ships them, read from its file directly."""
    state = torch.load(metrics.lpips_linear_weights_path(), map_location="cpu", weights_only=True)
    return [state[f"lin{k}.model.1.weight"] for k in range(5)]


def _pair(n: int = 3, h: int = 40, w: int = 56) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, h, w, generator=gen) * 2 - 1
    return x, (x + 0.3 * torch.randn(x.shape, generator=gen)).clamp(-1, 1)


def test_lpips_is_the_lpips_package_module():
    import lpips

    ours = LPIPS(backbone_weights="random", seed=0)
    assert isinstance(ours.net, lpips.LPIPS) and ours.net.pnet_type == "vgg" and ours.net.version == "0.1"
    assert ours.backbone_label == "random"
    for k, weight in enumerate(_package_lins()):  # the linear layers are the package's shipped weights
        assert torch.equal(ours.net.lins[k].model[-1].weight, weight)
    assert not any(p.requires_grad for p in ours.parameters()) and not ours.training


def test_lpips_matches_an_independent_statement_of_its_math():
    from fixtures.reference_math import lpips_vgg_v01

    ours = LPIPS(backbone_weights="random", seed=0)
    trunk = ours.trunk_parameters()
    assert len(trunk) == 26  # 13 convs x (weight, bias), torchvision's names
    x, y = _pair()
    with torch.no_grad():
        got = ours(x, y)
        single = torch.cat([ours(x[i : i + 1], y[i : i + 1]) for i in range(3)])
    expected = lpips_vgg_v01(trunk, _package_lins(), x, y)
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(single, got, rtol=1e-4, atol=1e-6)  # batching does not change results
    assert got.shape == (3,) and (got > 0).all()
    assert ours(x, x).abs().max() < 1e-6


def test_random_backbone_is_seeded():
    a, b, c = (LPIPS("random", seed=s).trunk_parameters()["features.0.weight"] for s in (1, 1, 2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_missing_vgg_weights_error_names_file_path_url_and_cli_choices(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    expected = tmp_path / "torch-home" / "hub" / "checkpoints" / VGG16_FILE
    assert metrics.vgg16_weights_path() == expected
    with pytest.raises(MissingWeightsError) as info:
        LPIPS()  # default: pretrained
    text = str(info.value)
    assert VGG16_FILE in text and str(expected) in text and VGG16_URL in text
    assert "--lpips none" in text and "--lpips random" in text and "evaluation.lpips_weights" in text
    assert "backbone_weights=" not in text  # a Python argument means nothing to a CLI user
    assert isinstance(info.value, FileNotFoundError)
    assert not expected.exists()  # nothing was downloaded
    # a truncated / wrong file at that path is refused too, never loaded
    expected.parent.mkdir(parents=True)
    expected.write_bytes(b"not a checkpoint")
    with pytest.raises(MissingWeightsError, match="sha256"):
        LPIPS("pretrained")


def test_pretrained_path_loads_a_torchvision_vgg16_file_into_the_package_trunk(tmp_path, monkeypatch):
    """The real ImageNet file cannot be downloaded here, so a torchvision VGG16 state dict (random init,
    the same key layout) stands in for it; its sha256 prefix is registered as the expected one, so the
    file check runs as it does on the real file. The package's trunk must hold that file's tensors."""
    import hashlib

    import torchvision
    from fixtures.reference_math import lpips_vgg_v01

    torch.manual_seed(0)
    features = torchvision.models.vgg16(weights=None).features
    state = {f"features.{k}": v for k, v in features.state_dict().items()}  # the classifier is never read
    path = tmp_path / "hub" / "checkpoints" / VGG16_FILE
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(metrics, "VGG16_SHA256_PREFIX", hashlib.sha256(path.read_bytes()).hexdigest()[:8])

    ours = LPIPS()  # default: pretrained, from $TORCH_HOME/hub/checkpoints
    assert ours.backbone_label == "pretrained"
    trunk = ours.trunk_parameters()
    assert sorted(trunk) == sorted(state)
    for name, value in state.items():
        assert torch.equal(trunk[name], value), name
    x, y = _pair(2, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, y).double(), lpips_vgg_v01(state, _package_lins(), x, y),
                                   rtol=1e-4, atol=1e-6)


def test_lpips_preflight_names_the_missing_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    assert metrics.check_lpips_weights("random") == "random" and metrics.check_lpips_weights("none") == "none"
    with pytest.raises(MissingWeightsError, match=VGG16_FILE):
        metrics.check_lpips_weights("pretrained")


def test_lpips_rejects_unknown_backbone_label():
    with pytest.raises(ValueError, match="backbone_weights"):
        LPIPS("imagenet")


def test_resize_is_the_original_non_antialiased_bicubic():
    """The original (torchvision 0.14) resized uint8 tensors with plain bicubic, no antialiasing (DESIGN 3.9)."""
    from fixtures.reference_math import bicubic_resize_no_antialias_uint8

    gen = torch.Generator().manual_seed(0)
    for shape in ((2, 3, 120, 160), (1, 3, 576, 768)):  # up- and down-sampling to 300x400
        images = torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
        ours = resize_bicubic_uint8(images, (300, 400))
        ref = torch.from_numpy(bicubic_resize_no_antialias_uint8(images.numpy(), (300, 400)))
        diff = (ours.int() - ref.int()).abs()
        assert ours.dtype == torch.uint8 and ours.shape == ref.shape
        # the original interpolated in float32 (as we do); float32 weights put values up to ~0.02 away
        # from the float64 statement, so a few values near .5 round the other way, never by two levels
        assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) < 5e-3


def test_resize_differs_from_antialiased_resize_when_downsampling():
    """Guard: the antialiased resize (today's torchvision default) gives visibly different pixels."""
    import torchvision.transforms.functional as TF
    from fixtures.reference_math import bicubic_resize_no_antialias_uint8

    gen = torch.Generator().manual_seed(1)
    down = torch.randint(0, 256, (1, 3, 576, 768), generator=gen, dtype=torch.uint8)
    smooth = TF.resize(down, [300, 400], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    ours = resize_bicubic_uint8(down)
    ref = torch.from_numpy(bicubic_resize_no_antialias_uint8(down.numpy(), (300, 400)))
    assert float((smooth.int() - ref.int()).abs().float().mean()) > 5  # noise: antialiasing averages it away
    assert float((ours.int() - ref.int()).abs().float().mean()) < 5e-3


def test_mask_binarised_above_one_percent(tmp_path):
    for value, expected in ((2, False), (3, True), (0, False), (255, True)):
        path = tmp_path / f"m{value}.png"
        Image.new("L", (160, 120), value).save(path)
        mask = metrics.load_mask(path)
        assert mask.shape == (300, 400) and mask.dtype == torch.bool
        assert bool(mask.all()) is expected and bool(mask.any()) is expected  # 2/255 < 0.01 < 3/255


def test_ground_truth_resized_to_render_size_first(tmp_path):
    path = tmp_path / "gt.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(path)
    gt = metrics.load_ground_truth(path)
    assert gt.shape == (3, 576, 768) and gt.dtype == torch.uint8
    expected = np.asarray(Image.open(path).convert("RGB").resize((768, 576), Image.BICUBIC))
    assert np.array_equal(gt.permute(1, 2, 0).numpy(), expected)
    square = tmp_path / "square.png"
    Image.new("RGB", (64, 64)).save(square)
    with pytest.raises(ValueError, match="aspect"):
        metrics.load_ground_truth(square)
