"""`eval.eval_batch_size: auto` / `eval.decode_batch_size: auto` (issue 12): the planning arithmetic
against numbers worked out by hand, the context bytes against the tensors the sampler really holds,
the memory probes against the shapes the sampler really runs, and the CPU path (fixed sizes, the
same images as explicit ones). The CUDA measurement itself (`torch.cuda.max_memory_allocated`) runs
in bench/gpu_check.sh."""

import pytest
import torch
from pydantic import ValidationError

from viewneti_core.config import ViewNetiConfig
from viewneti_core.method import batch_sizing
from viewneti_core.method.batch_sizing import MemoryCost, context_bytes_per_request, plan_batches
from viewneti_core.method.sampler import SampleRequest, SamplerSettings, ViewNetiSampler, make_dpm_solver

PROMPT = "<view>. A photo of a <object>"
GIB = 2**30


def test_cost_line_through_two_peaks():
    cost = MemoryCost.from_peaks(3 * GIB, 5 * GIB)  # 1 item: 3 GiB, 2 items: 5 GiB
    assert (cost.fixed, cost.per_item) == (1 * GIB, 2 * GIB)
    assert cost.largest(budget=11.5 * GIB, cap=100) == 5  # 1 + 2 * 5 = 11 <= 11.5 < 13
    assert cost.largest(budget=0.5 * GIB, cap=100) == 1  # never below one
    assert cost.largest(budget=1000 * GIB, cap=7) == 7  # never above the requests there are


def test_plan_fills_free_memory_and_leaves_the_batch_contexts_to_the_decode():
    # 10 GiB free, 85% plannable = 8.5 GiB. UNet: 1 GiB + 0.5 per request, contexts 0.25 per request:
    # (8.5 - 1) / 0.75 = 10 requests. Decode beside 10 x 0.25 GiB of contexts: 6 GiB for
    # 0.5 GiB + 1 GiB per image: 5 images.
    unet, decode = MemoryCost(1 * GIB, GIB // 2), MemoryCost(GIB // 2, 1 * GIB)
    plan = plan_batches(10 * GIB, unet, decode, GIB // 4, n_requests=102, headroom=0.85)
    assert (plan.batch_size, plan.decode_batch_size, plan.free_bytes) == (10, 5, 10 * GIB)
    small = plan_batches(10 * GIB, unet, decode, GIB // 4, n_requests=6, headroom=0.85)
    # capped by the requests of the call; 6 x 0.25 GiB of contexts leave 7 GiB: (7 - 0.5) / 1 -> 6 images
    assert (small.batch_size, small.decode_batch_size) == (6, 6)
    starved = plan_batches(GIB, unet, decode, GIB // 4, n_requests=102, headroom=0.85)
    assert (starved.batch_size, starved.decode_batch_size) == (1, 1)
    # an explicit UNet batch of 20 is kept; its contexts (5 GiB) leave 3.5 GiB: (3.5 - 0.5) / 1 -> 3 images
    fixed = plan_batches(10 * GIB, unet, decode, GIB // 4, n_requests=102, batch=20, headroom=0.85)
    assert (fixed.batch_size, fixed.decode_batch_size) == (20, 3)
    both = plan_batches(10 * GIB, unet, decode, GIB // 4, n_requests=102, batch=20, decode_batch=2, headroom=0.85)
    assert (both.batch_size, both.decode_batch_size) == (20, 2)


def test_context_bytes_are_the_tensors_the_sampler_holds(model, dtu_like_cameras):
    settings = SamplerSettings(num_inference_steps=3, height=48, width=64, batch_size=1, decode_batch_size=1)
    sampler = ViewNetiSampler(model.components, model.conditioner, settings)
    timesteps = make_dpm_solver(model.components, 3).timesteps
    cache: dict = {}
    keys, values = sampler._contexts([SampleRequest.with_camera(PROMPT, 0, dtu_like_cameras[3])], timesteps, cache)
    held = sum(t.numel() * t.element_size() for t in (keys, values, *next(iter(cache.values()))))
    conditioner, unet = model.conditioner, model.components.unet
    expected = context_bytes_per_request(3, conditioner.num_layers, conditioner.tokenizer.model_max_length,
                                         unet.config.cross_attention_dim, unet.dtype.itemsize)
    assert held == expected


def test_probes_run_the_shapes_the_sampler_runs(model, dtu_like_cameras):
    """The probes must cost what a real batch costs: the UNet sees the same rows and per-layer
    contexts as in `sample`, the decoder the same latents."""
    components, conditioner = model.components, model.conditioner
    sampler = ViewNetiSampler(components, conditioner, SamplerSettings(num_inference_steps=2, height=48, width=64,
                                                                       batch_size=3, decode_batch_size=3))
    seen: dict[str, list] = {"unet": [], "decoder": []}

    def unet_hook(module, args, kwargs):
        seen["unet"].append((tuple(args[0].shape), tuple(kwargs["cross_attention_kwargs"]["xti_keys"].shape)))

    def decoder_hook(module, args, kwargs):
        seen["decoder"].append(tuple(args[0].shape))

    hooks = [components.unet.register_forward_pre_hook(unet_hook, with_kwargs=True),
             components.vae.decoder.register_forward_pre_hook(decoder_hook, with_kwargs=True)]
    try:
        sampler.sample([SampleRequest.with_camera(PROMPT, s, dtu_like_cameras[3]) for s in range(3)], progress=False)
        real = dict(unet=seen["unet"][0], decoder=seen["decoder"][0])
        seen["unet"].clear()
        seen["decoder"].clear()
        length, width = conditioner.tokenizer.model_max_length, components.unet.config.cross_attention_dim
        batch_sizing.unet_probe(components.unet, sampler.latent_shape, conditioner.num_layers, length, width)(3)
        batch_sizing.decode_probe(components.vae, sampler.latent_shape)(3)
    finally:
        for hook in hooks:
            hook.remove()
    assert seen["unet"] == [real["unet"]]
    assert seen["decoder"] == [real["decoder"]]


def test_auto_is_the_fixed_cpu_sizes_and_renders_the_same_images(model, dtu_like_cameras):
    auto = ViewNetiSampler(model.components, model.conditioner, SamplerSettings(num_inference_steps=2, height=48,
                                                                                width=64))
    plan = auto.plan(102)
    assert (plan.batch_size, plan.decode_batch_size, plan.free_bytes) == (8, 4, None)
    fixed = ViewNetiSampler(model.components, model.conditioner, SamplerSettings(
        num_inference_steps=2, height=48, width=64, batch_size=8, decode_batch_size=4))
    requests = [SampleRequest.with_camera(PROMPT, s, dtu_like_cameras[c]) for c in (3, 9) for s in (0, 1)]
    assert torch.equal(auto.sample(requests, progress=False), fixed.sample(requests, progress=False))
    assert auto.last_plan == plan  # what the call used, as bench scene records it
    mixed = ViewNetiSampler(model.components, model.conditioner, SamplerSettings(height=48, width=64, batch_size=5))
    assert (mixed.plan(102).batch_size, mixed.plan(102).decode_batch_size) == (5, 4)  # an explicit size wins
    with pytest.raises(ValueError, match="may be 'auto'"):
        ViewNetiSampler(model.components, model.conditioner, SamplerSettings(height=48, width=64, batch_size="big"))


def test_config_default_is_auto_and_bad_sizes_name_the_key():
    config = ViewNetiConfig()
    assert (config.eval.eval_batch_size, config.eval.decode_batch_size) == ("auto", "auto")
    assert ViewNetiConfig.model_validate({"eval": {"eval_batch_size": 16}}).eval.eval_batch_size == 16
    with pytest.raises(ValidationError, match="eval_batch_size"):
        ViewNetiConfig.model_validate({"eval": {"eval_batch_size": "big"}})
    with pytest.raises(ValidationError, match="decode_batch_size"):
        ViewNetiConfig.model_validate({"eval": {"decode_batch_size": 0}})
