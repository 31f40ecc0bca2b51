"""The fast path computes what the straightforward path computes, and the benchmarks' reference-style
path computes what our path computes (so benchmark ratios compare equal work). Tiny model, CPU."""

import os

import pytest
import torch

from bench.reference_path import (
    ExplicitSoftmaxAttention,
    ReferenceStyleSampler,
    reference_diffusion_loss,
    use_reference_attention,
)
from viewneti_core.base_model.sd_models import load_components
from viewneti_core.config import ViewNetiConfig
from viewneti_core.method.acceleration import (
    AccelerationOptions,
    FusedSelfAttnProcessor,
    apply_acceleration,
    compile_available,
    xti_layer_indices,
)
from viewneti_core.method.model import build_model
from viewneti_core.method.sampler import SampleRequest, SamplerSettings, ViewNetiSampler
from viewneti_core.method.xti_attention import XTICrossAttnProcessor
from viewneti_core.training.trainer import MapperForward, diffusion_loss

PROMPT = "<view>. A photo of a <object>"
SETTINGS = SamplerSettings(num_inference_steps=3, height=48, width=64, batch_size=4)
FAST = AccelerationOptions(channels_last=True, fuse_self_attention=True)


def make_model(tiny_model_dir, camera_normalization, acceleration=None, mode=5):
    """Same weights every call: the components come from disk, the mappers from a fixed seed."""
    components = load_components(tiny_model_dir)
    torch.manual_seed(0)
    model = build_model(
        ViewNetiConfig(learnable_mode=mode), components,
        view_camera_normalization=camera_normalization, new_object_tokens=["<object>"],
    )
    report = apply_acceleration(components, acceleration) if acceleration is not None else None
    return model, report


@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread():
    """OpenMP threads spin-wait: on a small shared CPU, 2 threads made this file ~15x slower than 1."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def requests(dtu_like_cameras):
    return [SampleRequest.with_camera(PROMPT, 0, dtu_like_cameras[0]),
            SampleRequest.with_camera(PROMPT, 1, dtu_like_cameras[40])]


@pytest.fixture(scope="module")
def plain(tiny_model_dir, camera_normalization):
    return make_model(tiny_model_dir, camera_normalization)[0]


@pytest.fixture(scope="module")
def fast(tiny_model_dir, camera_normalization):
    return make_model(tiny_model_dir, camera_normalization, FAST)


@pytest.fixture(scope="module")
def plain_images(plain, requests):
    return sample(plain, requests)


def sample(model, requests, settings=SETTINGS):
    return ViewNetiSampler(model.components, model.conditioner, settings).sample(requests, progress=False)


def test_fusing_self_attention_keeps_the_xti_processors(plain, fast):
    model, report = fast
    unet = model.components.unet
    assert xti_layer_indices(unet) == xti_layer_indices(plain.components.unet)
    assert sorted(xti_layer_indices(unet)) == list(range(16))
    processors = unet.attn_processors
    for name, processor in processors.items():
        if ".attn2." in name:
            assert isinstance(processor, XTICrossAttnProcessor)
        else:
            assert isinstance(processor, FusedSelfAttnProcessor)
    assert sum(isinstance(p, FusedSelfAttnProcessor) for p in processors.values()) == 16
    assert report.fused_self_attention_layers >= 16 and "channels_last" in report.applied
    assert not any(p.requires_grad for p in unet.parameters())  # the new to_qkv stays frozen


def test_fast_path_gives_the_same_images(fast, plain_images, requests):
    got = sample(fast[0], requests)
    assert (got - plain_images).abs().max() < 1e-4  # float32 rounding of fused/blocked matmuls only
    assert (plain_images[0] - plain_images[1]).abs().mean() > 1e-3  # and the images are not trivial


def test_reference_style_sampler_renders_the_same_images(tiny_model_dir, camera_normalization, plain, plain_images,
                                                         requests):
    """The benchmark's ratio compares equal work: the one-image-at-a-time, per-layer-encoder,
    two-UNet-calls, explicit-softmax-attention path makes the same images as our batched sampler,
    also when a view's contexts are reused for a second seed."""
    reference_model = make_model(tiny_model_dir, camera_normalization)[0]
    use_reference_attention(reference_model.components)
    processors = reference_model.components.unet.attn_processors.values()
    assert all(isinstance(p, ExplicitSoftmaxAttention) for p in processors)
    assert sorted(p.layer_index for p in processors if p.layer_index is not None) == list(range(16))
    second_seed = SampleRequest(requests[1].prompt, 0, requests[1].camera)
    reference = ReferenceStyleSampler(reference_model.components, reference_model.conditioner, SETTINGS).sample(
        [requests[1], second_seed])
    assert (reference[0] - plain_images[1]).abs().max() < 1e-4
    ours = sample(plain, [second_seed])
    assert (reference[1] - ours[0]).abs().max() < 1e-4
    assert (reference[0] - reference[1]).abs().mean() > 1e-3  # the seeds differ


def test_training_loss_and_gradients_agree_across_paths(plain, fast, dtu_like_cameras):
    """diffusion_loss on the fast path, and the reference-style loss (per-layer encoder calls), equal
    the straightforward diffusion_loss for the same random numbers: same loss, same mapper grads."""
    pixels = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    cameras = torch.tensor(dtu_like_cameras[[25, 22]].reshape(2, 12), dtype=torch.float32)
    results = []
    for model, loss_fn in (
        (plain, lambda m, ids: diffusion_loss(m.components, MapperForward(m.conditioner), pixels, ids, cameras)),
        (fast[0], lambda m, ids: diffusion_loss(m.components, MapperForward(m.conditioner), pixels, ids, cameras)),
        (plain, lambda m, ids: reference_diffusion_loss(m.components, m.conditioner, pixels, ids, cameras)),
    ):
        mapper = model.conditioner.object_mappers["<object>"]
        ids = model.conditioner.tokenize([PROMPT] * 2, True)
        torch.manual_seed(7)
        loss = loss_fn(model, ids)
        loss.backward()
        results.append((loss.detach(), mapper.net[0].weight.grad.clone()))
        mapper.zero_grad(set_to_none=True)
    (loss_a, grad_a), *others = results
    for loss_b, grad_b in others:
        torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad_b, grad_a, rtol=1e-3, atol=1e-6)


def test_fast_path_in_bf16_stays_within_bf16_noise(tiny_model_dir, camera_normalization, plain_images, requests):
    fast_bf16, _ = make_model(tiny_model_dir, camera_normalization, AccelerationOptions(
        dtype="bfloat16", channels_last=True, fuse_self_attention=True))
    got = sample(fast_bf16, requests[:1])
    assert (got - plain_images[:1]).abs().mean() < 2e-2  # bf16 keeps ~3 significant digits


def test_acceleration_options_follow_the_run_config():
    config = ViewNetiConfig.model_validate({"run": {"dtype": "bfloat16", "channels_last": True, "compile_unet": True,
                                                    "compile_cache_dir": "/tmp/cc"}})
    options = AccelerationOptions.from_config(config, "cpu")
    assert options == AccelerationOptions(dtype="bfloat16", channels_last=True, fuse_self_attention=True,
                                          compile_unet=True, compile_cache_dir="/tmp/cc")
    # The defaults: "auto" dtype and layout, resolved per device (tests/test_production_path.py has CUDA).
    assert AccelerationOptions.from_config(ViewNetiConfig(), "cpu") == AccelerationOptions(dtype="auto")
    # CUDA graphs are a config choice too: torch.compile's "reduce-overhead" mode.
    graphs = ViewNetiConfig.model_validate({"run": {"compile_unet": True, "compile_mode": "reduce-overhead"}})
    assert AccelerationOptions.from_config(graphs, "cpu").compile_mode == "reduce-overhead"
    with pytest.raises(ValueError, match="compile_mode"):
        ViewNetiConfig.model_validate({"run": {"compile_mode": "cudagraphs-please"}})


@pytest.mark.slow  # inductor compiling the tiny UNet: 100 s on 2 quiet cores (8 min once on a busy machine)
@pytest.mark.skipif(not compile_available()[0], reason=f"torch.compile unavailable: {compile_available()[1]}")
@pytest.mark.skipif(os.environ.get("VIEWNETI_TEST_COMPILE") == "0", reason="VIEWNETI_TEST_COMPILE=0")
def test_compiled_unet_gives_the_same_images(tiny_model_dir, camera_normalization, plain_images, requests):
    compiled, report = make_model(tiny_model_dir, camera_normalization, AccelerationOptions(
        channels_last=True, fuse_self_attention=True, compile_unet=True))
    assert any(a.startswith("compile_unet") for a in report.applied)
    assert (sample(compiled, requests) - plain_images).abs().max() < 1e-4
