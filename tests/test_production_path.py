"""The production GPU path, checked on CPU (issue 12): text contexts encoded once per (prompt, camera)
and shared across seeds and batches, fixed batch shapes (padding), chunked VAE decode, the dtype and
layout choices per device, the compile cache and the training loader. Sampling is checked against a
straightforward one-request-at-a-time sampler written out here. Tiny model."""

import os

import pytest
import torch

from viewneti_core.base_model.sd_models import resolve_dtype
from viewneti_core.config import ViewNetiConfig
from viewneti_core.method.acceleration import AccelerationOptions, compile_cache_dir, use_compile_cache
from viewneti_core.method.conditioning import text_model_of, tokenize
from viewneti_core.method.sampler import (
    SampleRequest,
    SamplerSettings,
    ViewNetiSampler,
    batch_shape,
    initial_latents,
    make_dpm_solver,
)
from viewneti_core.training.trainer import loader_workers

PROMPT = "<view>. A photo of a <object>"
STEPS, HEIGHT, WIDTH = 3, 48, 64


@torch.no_grad()
def straightforward(model, request: SampleRequest, guidance: float = 7.5) -> torch.Tensor:
    """One request alone: its contexts encoded at each step right before the UNet call, no caches."""
    components, conditioner = model.components, model.conditioner
    vae, unet = components.vae, components.unet
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    scheduler = make_dpm_solver(components, STEPS)
    latents = initial_latents(request.seed, (1, unet.config.in_channels, HEIGHT // scale, WIDTH // scale))
    latents = latents * scheduler.init_noise_sigma
    ids = conditioner.tokenize([request.prompt], [True])
    empty = conditioner.encode_plain(tokenize(conditioner.tokenizer, [""]))
    for t in scheduler.timesteps:
        k, v = conditioner.encode(ids, t.float().reshape(1), torch.tensor([request.camera], dtype=torch.float32))
        uncond = empty.expand(k.shape[0], 1, *empty.shape[1:])
        keys, values = torch.cat([uncond, k], dim=1), torch.cat([uncond, v], dim=1)
        x = scheduler.scale_model_input(torch.cat([latents, latents]), t)
        noise = unet(x, t, encoder_hidden_states=keys[0],
                     cross_attention_kwargs={"xti_keys": keys, "xti_values": values}, return_dict=False)[0]
        u, c = noise.chunk(2)
        latents = scheduler.step(u + guidance * (c - u), t, latents, return_dict=False)[0]
    image = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
    return (image / 2 + 0.5).clamp(0, 1)[0]


class RowCounter:
    """Counts the batch rows each call of a module receives (a forward pre-hook; the module runs)."""

    def __init__(self, module: torch.nn.Module):
        self.rows: list[int] = []
        self.handle = module.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        first = args[0] if args else next(v for v in kwargs.values() if torch.is_tensor(v))
        self.rows.append(int(first.shape[0]))

    def close(self):
        self.handle.remove()


@pytest.fixture
def counters(model):
    components = model.components
    made = {
        "encoder": RowCounter(text_model_of(components.text_encoder).encoder),
        "unet": RowCounter(components.unet),
        "decoder": RowCounter(components.vae.decoder),
    }
    yield made
    for counter in made.values():
        counter.close()


def test_contexts_are_shared_across_seeds_and_batches(model, dtu_like_cameras, counters):
    """3 cameras (3 + 3 + 1 seeds), view-major, 4 per batch: camera 40's seeds span both batches
    (encoded in the first, reused in the second), and the second batch is padded from 3 to 4
    requests. The encoder sees cameras x timesteps x layers conditional rows (+ 1 unconditional
    row), not x seeds; every UNet call has the same shape; pads are never decoded; and every image
    equals the straightforward sampler's."""
    settings = SamplerSettings(num_inference_steps=STEPS, height=HEIGHT, width=WIDTH, batch_size=4,
                               decode_batch_size=3)
    sampler = ViewNetiSampler(model.components, model.conditioner, settings)
    requests = [SampleRequest.with_camera(PROMPT, seed, dtu_like_cameras[cam]) for cam in (0, 40) for seed in (0, 1, 2)]
    requests.append(SampleRequest.with_camera(PROMPT, 0, dtu_like_cameras[20]))
    images = sampler.sample(requests, progress=False)

    layers = model.conditioner.num_layers
    assert sum(counters["encoder"].rows) == 3 * STEPS * layers + 1
    assert counters["unet"].rows == [2 * 4] * (2 * STEPS)  # 2 batches x 3 steps, CFG rows, padded last batch
    assert counters["decoder"].rows == [3, 1, 3]  # chunks of 3 of each batch's real images only
    assert images.shape == (7, 3, HEIGHT, WIDTH)
    for request, image in zip(requests, images, strict=True):
        assert (image - straightforward(model, request)).abs().max() < 1e-4
    assert (images[0] - images[1]).abs().mean() > 1e-2  # seeds differ: the check above can fail

    # A later call on the same sampler reuses the unconditional context: only its own camera's rows.
    counters["encoder"].rows.clear()
    counters["unet"].rows.clear()
    sampler.sample([SampleRequest.with_camera(PROMPT, 5, dtu_like_cameras[20])], progress=False)
    assert sum(counters["encoder"].rows) == STEPS * layers
    assert counters["unet"].rows == [2] * STEPS  # one request: no padding up to batch_size


def test_batches_are_even_and_padding_small():
    assert [batch_shape(n, 8) for n in (1, 6, 8, 9, 12, 16, 17, 102)] == [1, 6, 8, 5, 6, 8, 6, 8]
    for n in range(1, 200):  # the fewest calls the batch size allows, each pad below one per call
        size = batch_shape(n, 8)
        calls = -(-n // size)
        assert size <= 8 and calls == -(-n // 8) and calls * size - n < calls


def test_chunked_decode_matches_one_call(model):
    latents = torch.randn(5, model.components.unet.config.in_channels, 6, 8, generator=torch.Generator().manual_seed(0))
    def make(chunk: int) -> ViewNetiSampler:
        return ViewNetiSampler(model.components, model.conditioner,
                               SamplerSettings(height=HEIGHT, width=WIDTH, decode_batch_size=chunk))

    whole, chunked = make(5).decode(latents), make(2).decode(latents)
    assert chunked.shape == (5, 3, HEIGHT, WIDTH)
    assert (whole - chunked).abs().max() < 1e-5
    with pytest.raises(ValueError, match="decode_batch_size must be positive"):
        make(0)


def test_auto_dtype_is_bf16_on_cuda_and_fp32_on_cpu():
    assert resolve_dtype("auto", "cpu") is torch.float32
    assert resolve_dtype("auto", "cuda") is torch.bfloat16
    assert resolve_dtype("auto", torch.device("cuda:1")) is torch.bfloat16
    assert resolve_dtype("float32", "cuda") is torch.float32  # an explicit choice wins
    assert resolve_dtype("bfloat16", "cpu") is torch.bfloat16
    assert ViewNetiConfig().run.dtype == "auto"


def test_acceleration_defaults_turn_on_for_cuda_only(tmp_path):
    config = ViewNetiConfig()
    cuda = AccelerationOptions.from_config(config, "cuda")
    assert (cuda.dtype, cuda.channels_last, cuda.fuse_self_attention, cuda.tf32) == ("auto", True, True, True)
    cpu = AccelerationOptions.from_config(config, "cpu")
    assert (cpu.channels_last, cpu.fuse_self_attention, cpu.tf32, cpu.compile_cache_dir) == (False, False, False, None)
    forced = ViewNetiConfig.model_validate({"run": {"channels_last": False, "compile_unet": True,
                                                    "compile_cache_dir": str(tmp_path / "cc")}})
    options = AccelerationOptions.from_config(forced, "cuda")
    assert not options.channels_last and options.compile_cache_dir == str(tmp_path / "cc")


def test_compile_cache_dir_defaults_under_the_user_cache_and_sets_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache_dir() == tmp_path / "xdg" / "viewneti" / "compile"
    assert compile_cache_dir("~/elsewhere").is_absolute()
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "TORCHINDUCTOR_FX_GRAPH_CACHE"):
        monkeypatch.setenv(name, "")  # recorded, so the variables are restored after the test
        monkeypatch.delenv(name)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "cluster-triton"))  # an explicit setting wins
    use_compile_cache(tmp_path / "cc")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cc" / "inductor")
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "cluster-triton")
    assert (tmp_path / "cc").is_dir()


def test_loader_workers_auto_is_zero_on_cpu_and_some_on_cuda():
    assert loader_workers("auto", torch.device("cpu")) == 0
    assert 1 <= loader_workers("auto", torch.device("cuda")) <= 4
    assert loader_workers(3, torch.device("cpu")) == 3  # an explicit count wins
    assert ViewNetiConfig().data.dataloader_num_workers == "auto"
