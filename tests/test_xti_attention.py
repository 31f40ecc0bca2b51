"""Per-layer cross-attention: execution order, per-layer effect, equivalence with the stock UNet."""

import torch

from viewneti_core.base_model.sd_models import load_components
from viewneti_core.method.xti_attention import (
    XTICrossAttnProcessor,
    cross_attention_layer_names,
    install_xti_processors,
)


def _inputs(unet, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, unet.config.in_channels, 8, 6, generator=g)
    context = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=g)
    return sample, torch.tensor([500, 20]), context


@torch.no_grad()
def test_execution_order_matches_bound_index(tiny_components):
    unet = tiny_components.unet
    assert install_xti_processors(unet) == 16
    seen = []
    modules = dict(unet.named_modules())
    hooks = [modules[name].register_forward_pre_hook(lambda m, a, n=name: seen.append(n))
             for name in cross_attention_layer_names(unet)]
    sample, t, ctx = _inputs(unet)
    unet(sample, t, encoder_hidden_states=ctx)
    for h in hooks:
        h.remove()
    assert len(seen) == 16
    assert [modules[name].processor.layer_index for name in seen] == list(range(16))
    # The mid block runs 7th although `attn_processors` lists it last.
    assert seen[6].startswith("mid_block")
    listed = [k.removesuffix(".processor") for k in unet.attn_processors if k.endswith("attn2.processor")]
    assert sorted(listed) == sorted(seen) and listed.index(seen[6]) != 6


@torch.no_grad()
def test_shared_context_equals_stock_unet_and_one_layer_changes_output(tiny_model_dir):
    stock = load_components(tiny_model_dir).unet
    ours = load_components(tiny_model_dir).unet
    install_xti_processors(ours)
    assert all(isinstance(p, XTICrossAttnProcessor) for n, p in ours.attn_processors.items() if "attn2" in n)
    sample, t, ctx = _inputs(stock)
    expected = stock(sample, t, encoder_hidden_states=ctx).sample

    keys = ctx.expand(16, *ctx.shape).clone()
    out = ours(sample, t, encoder_hidden_states=ctx, cross_attention_kwargs={"xti_keys": keys, "xti_values": keys}).sample
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    # Without XTI kwargs the processors fall back to the shared context.
    torch.testing.assert_close(ours(sample, t, encoder_hidden_states=ctx).sample, expected, atol=1e-5, rtol=1e-5)

    for layer in (0, 6, 15):
        changed = keys.clone()
        changed[layer] = torch.randn_like(ctx)
        out_k = ours(sample, t, encoder_hidden_states=ctx, cross_attention_kwargs={"xti_keys": changed, "xti_values": keys}).sample
        out_v = ours(sample, t, encoder_hidden_states=ctx, cross_attention_kwargs={"xti_keys": keys, "xti_values": changed}).sample
        assert (out_k - expected).abs().max() > 1e-4, f"keys of layer {layer} had no effect"
        assert (out_v - expected).abs().max() > 1e-4, f"values of layer {layer} had no effect"
    # The stock UNet is untouched by all this.
    torch.testing.assert_close(stock(sample, t, encoder_hidden_states=ctx).sample, expected)
