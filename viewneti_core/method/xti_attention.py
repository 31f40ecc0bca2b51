"""Per-layer cross-attention (XTI, DESIGN 3.5): layer l reads keys from keys[l], values from values[l].

Contexts travel through the UNet as `cross_attention_kwargs={"xti_keys": K, "xti_values": V}` with
K, V of shape (L, B, 77, D). Each cross-attention processor is bound to its layer index when it is
installed (no counters mutated during the forward pass), so the UNet stays `torch.compile`-friendly.
Layer index = execution order: down blocks, then the mid block, then the up blocks.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

_STAGE_ORDER = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}


def cross_attention_layer_names(unet: UNet2DConditionModel) -> list[str]:
    """Names of the attn2 modules in the order the UNet forward pass runs them.

    `unet.attn_processors` lists the mid block last; the forward pass runs it between the down and
    up blocks, so we sort by (stage, block, attention, transformer block) instead.
    """
    names = [name for name, module in unet.named_modules() if isinstance(module, Attention) and name.endswith("attn2")]

    def execution_key(name: str) -> tuple[int, ...]:
        stage = _STAGE_ORDER[name.split(".")[0]]
        return (stage, *(int(n) for n in re.findall(r"\.(\d+)(?=\.|$)", name)))

    return sorted(names, key=execution_key)


class XTICrossAttnProcessor:
    """SDPA cross-attention whose keys and values come from this layer's own contexts."""

    def __init__(self, layer_index: int):
        self.layer_index = layer_index

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        xti_keys: torch.Tensor | None = None,
        xti_values: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if xti_keys is not None:
            key_context = xti_keys[self.layer_index]
            value_context = xti_values[self.layer_index] if xti_values is not None else key_context
        else:  # stock behaviour: one shared context
            key_context = value_context = encoder_hidden_states if encoder_hidden_states is not None else hidden_states

        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        batch = hidden_states.shape[0]

        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, key_context.shape[1], batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if attn.norm_cross:
            key_context = attn.norm_encoder_hidden_states(key_context)
            value_context = attn.norm_encoder_hidden_states(value_context)
        key = attn.to_k(key_context)
        value = attn.to_v(value_context)

        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))

        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class SelfAttnProcessor(AttnProcessor2_0):
    """Stock SDPA self-attention that accepts (and ignores) the XTI contexts."""

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        xti_keys: torch.Tensor | None = None,
        xti_values: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def install_xti_processors(unet: UNet2DConditionModel) -> int:
    """Give every attn2 an index-bound XTI processor and every other attention the self processor.

    Returns the number of cross-attention layers L (16 for SD 1.x/2.x and our tiny model).
    """
    order = {name: index for index, name in enumerate(cross_attention_layer_names(unet))}
    processors = {}
    for key in unet.attn_processors:
        module_name = key.removesuffix(".processor")
        processors[key] = XTICrossAttnProcessor(order[module_name]) if module_name in order else SelfAttnProcessor()
    unet.set_attn_processor(processors)
    return len(order)
