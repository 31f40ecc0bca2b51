"""A REFERENCE-STYLE path: the computation pattern of the original ViewNeTI/NeTI code, on our modules.

It computes the same images and the same loss as our path (tests/test_fast_path.py checks both), but
organised the way the original was:
- the text encoder runs once per UNet cross-attention layer: 16 separate encoder calls per timestep
  per view at inference (30 x 16 = 480 calls per view, precomputed before the loop as NeTI's prompt
  manager did, and reused by every seed of that view, as the original's inference loop did), and 16
  calls per training micro-batch (each call holding the micro-batch's rows);
- two UNet calls per denoising step (unconditional, then conditional), batch 1;
- one image at a time: a loop over views, and inside it over seeds;
- attention as the original's processors computed it (`use_reference_attention`): explicit scores,
  softmax (upcast to fp32 where the model asks) and a bmm, instead of fused SDPA kernels;
- training re-encodes the images with the VAE at every step and runs in fp32 (the bench passes
  fp32 components for the reference training path).
Only the organisation differs; the maths (mappers, bypass, XTI contexts, DPM-Solver++, CFG, loss)
is the same, so the speed-up ratio compares equal work.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from viewneti_core.base_model.sd_models import SDComponents
from viewneti_core.method.conditioning import TextConditioner, tokenize
from viewneti_core.method.sampler import SampleRequest, SamplerSettings, initial_latents, make_dpm_solver
from viewneti_core.method.xti_attention import cross_attention_layer_names


class ExplicitSoftmaxAttention:
    """Attention the way the original's (diffusers 0.14-era) processors computed it: baddbmm scores,
    softmax (in fp32 when the model sets upcast_attention/upcast_softmax), bmm with the values. A
    cross-attention layer takes its keys/values from its own XTI contexts, like XTICrossAttnProcessor."""

    def __init__(self, layer_index: int | None = None):
        self.layer_index = layer_index  # None: self-attention

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 xti_keys=None, xti_values=None):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if self.layer_index is not None and xti_keys is not None:
            key_context = xti_keys[self.layer_index]
            value_context = xti_values[self.layer_index] if xti_values is not None else key_context
        else:
            key_context = value_context = encoder_hidden_states if encoder_hidden_states is not None else hidden_states
        if attn.norm_cross and key_context is not hidden_states:
            key_context = attn.norm_encoder_hidden_states(key_context)
            value_context = attn.norm_encoder_hidden_states(value_context)
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, key_context.shape[1], hidden_states.shape[0])
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(key_context))
        value = attn.head_to_batch_dim(attn.to_v(value_context))
        probs = attn.get_attention_scores(query, key, attention_mask)
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def use_reference_attention(components: SDComponents) -> None:
    """Replace every UNet attention processor by `ExplicitSoftmaxAttention` (in place; bench copies only)."""
    unet = components.unet
    order = {name: index for index, name in enumerate(cross_attention_layer_names(unet))}
    unet.set_attn_processor({
        key: ExplicitSoftmaxAttention(order.get(key.removesuffix(".processor"))) for key in unet.attn_processors
    })


def encode_one_layer(
    conditioner: TextConditioner,
    input_ids: torch.Tensor,
    timesteps: torch.Tensor,
    layer: int,
    cameras: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ONE text-encoder call for ONE UNet layer (the original's pattern): keys, values (N, 77, D).

    Same maths as `TextConditioner.encode` restricted to layer `layer`: mapper outputs substituted at
    the placeholders, encoder hidden state before the final LN, bypass, LN.
    """
    device = conditioner.device
    ids = input_ids.to(device)
    rows_t = timesteps.to(device)
    rows_l = torch.full((ids.shape[0],), layer, device=device)
    embeds = conditioner._token_embeddings(ids)
    bypasses = []
    for token_id, mapper, alpha, is_view in conditioner._placeholders():
        mask = ids == token_id
        if not bool(mask.any()):
            continue
        word, bypass = mapper(rows_t, rows_l, cameras.to(device) if is_view else None)
        embeds = torch.where(mask[..., None], word.to(embeds.dtype)[:, None, :], embeds)
        if conditioner.output_bypass and alpha > 0:
            unit = bypass / bypass.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            bypasses.append((mask, unit.to(embeds.dtype), alpha))
    hidden = conditioner._encoder_hidden(embeds)
    hidden_bypass = hidden
    for mask, unit, alpha in bypasses:
        # mask.to(dtype): a bool mask times a Python float would promote to float32 (breaks bf16)
        bypass_term = alpha * mask[..., None].to(hidden.dtype) * unit[:, None, :] * hidden.norm(dim=-1, keepdim=True)
        hidden_bypass = hidden_bypass + bypass_term
    keys = conditioner._final_norm(hidden)
    values = conditioner._final_norm(hidden_bypass) if bypasses else keys
    return keys, values


def encode_per_layer(
    conditioner: TextConditioner, input_ids: torch.Tensor, timesteps: torch.Tensor, cameras: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """num_layers separate encoder calls; stacked to (L, N, 77, D) like `TextConditioner.encode`."""
    keys, values = zip(
        *(encode_one_layer(conditioner, input_ids, timesteps, layer, cameras) for layer in range(conditioner.num_layers)),
        strict=True,
    )
    return torch.stack(keys), torch.stack(values)


class ReferenceStyleSampler:
    """One image at a time, 16 encoder calls per timestep per view (shared by its seeds), two UNet
    calls per step."""

    def __init__(self, components: SDComponents, conditioner: TextConditioner, settings: SamplerSettings):
        self.components = components
        self.conditioner = conditioner
        self.settings = settings
        scale = 2 ** (len(components.vae.config.block_out_channels) - 1)
        self.latent_shape = (components.unet.config.in_channels, settings.height // scale, settings.width // scale)

    @torch.no_grad()
    def sample(self, requests: Sequence[SampleRequest]) -> torch.Tensor:
        """Views in order, the seeds of a view after one another, reusing its contexts."""
        cache: dict = {}
        images = []
        for r in requests:
            pair = (r.prompt, r.camera)
            if pair not in cache:
                cache.clear()  # the original kept one view's contexts at a time
                cache[pair] = self.contexts(r)
            images.append(self.sample_one(r, cache[pair]))
        return torch.cat(images)

    @torch.no_grad()
    def contexts(self, request: SampleRequest) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(keys, values) per timestep, each from 16 one-layer encoder calls."""
        conditioner, dtype = self.conditioner, self.components.unet.dtype
        scheduler = make_dpm_solver(self.components, self.settings.num_inference_steps)
        ids = conditioner.tokenize([request.prompt], request.camera is not None)
        camera = torch.tensor([request.camera], dtype=torch.float32) if request.camera is not None else None
        contexts = []
        for t in scheduler.timesteps:  # 16 encoder calls per timestep
            keys, values = encode_per_layer(conditioner, ids, t.reshape(1).float(), camera)
            contexts.append((keys.to(dtype), values.to(dtype)))
        return contexts

    @torch.no_grad()
    def sample_one(self, request: SampleRequest, contexts: list | None = None) -> torch.Tensor:
        components, conditioner, settings = self.components, self.conditioner, self.settings
        unet, device, dtype = components.unet, components.device, components.unet.dtype
        scheduler = make_dpm_solver(components, settings.num_inference_steps)
        uncond = conditioner.encode_plain(tokenize(conditioner.tokenizer, [""])).to(dtype)
        contexts = self.contexts(request) if contexts is None else contexts

        latents = initial_latents(request.seed, (1, *self.latent_shape)).to(device=device, dtype=dtype)
        latents = latents * scheduler.init_noise_sigma
        for step, t in enumerate(scheduler.timesteps):
            model_input = scheduler.scale_model_input(latents, t)
            keys, values = contexts[step]
            noise_uncond = unet(model_input, t, encoder_hidden_states=uncond, return_dict=False)[0]
            noise_cond = unet(
                model_input, t, encoder_hidden_states=keys[0],
                cross_attention_kwargs={"xti_keys": keys, "xti_values": values}, return_dict=False,
            )[0]
            guided = noise_uncond + settings.guidance_scale * (noise_cond - noise_uncond)
            latents = scheduler.step(guided, t, latents, return_dict=False)[0]
        vae = components.vae
        image = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        return (image.float() / 2 + 0.5).clamp(0, 1).cpu()


def reference_diffusion_loss(
    components: SDComponents,
    conditioner: TextConditioner,
    pixels: torch.Tensor,
    input_ids: torch.Tensor,
    cameras: torch.Tensor | None,
) -> torch.Tensor:
    """The training loss computed the original way: VAE re-encode, then 16 encoder calls (one per
    layer, each holding the micro-batch), one UNet call. Random numbers are drawn in the same order
    as `viewneti_core.training.trainer.diffusion_loss`, so with the same RNG state the loss is the same."""
    scheduler, unet, vae = components.scheduler, components.unet, components.vae
    latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
    noise = torch.randn_like(latents)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    keys, values = encode_per_layer(conditioner, input_ids, timesteps.float(), cameras)
    prediction = unet(
        noisy, timesteps, encoder_hidden_states=keys[0],
        cross_attention_kwargs={"xti_keys": keys, "xti_values": values}, return_dict=False,
    )[0]
    if scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    return F.mse_loss(prediction.float(), target.float())
