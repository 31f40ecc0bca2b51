"""Text conditioning with mappers: batching equivalence, stock equivalence, gradients, prompt errors."""

import pytest
import torch
import torch.nn.functional as F

from viewneti_core.errors import PromptError
from viewneti_core.method.conditioning import causal_mask, text_model_of, tokenize

PROMPT = "<view>. A photo of a <object>"


def reference_single(model, ids, t, layer, camera):
    """DESIGN 3.4 for ONE (t, l, camera), written out step by step with one encoder call."""
    cond = model.conditioner
    text = text_model_of(cond.text_encoder)
    ids = ids[None]
    embeds = text.embeddings.token_embedding(torch.where(ids < cond.vocab_size, ids, 0)).clone()
    bypass = {}
    for token_id, mapper, alpha, is_view in cond._placeholders():
        word, b = mapper(torch.tensor([t]), torch.tensor([layer]), camera[None] if is_view else None)
        for pos in (ids[0] == token_id).nonzero().flatten().tolist():
            embeds[0, pos] = word[0]
            bypass[pos] = (b[0], alpha)
    hidden = text.embeddings(inputs_embeds=embeds)
    h = text.encoder(inputs_embeds=hidden, attention_mask=causal_mask(77, hidden.dtype, hidden.device)).last_hidden_state
    hb = h.clone()
    for pos, (b, alpha) in bypass.items():
        hb[0, pos] = h[0, pos] + alpha * b / b.norm() * h[0, pos].norm()
    return text.final_layer_norm(h)[0], text.final_layer_norm(hb)[0]


@torch.no_grad()
def test_batched_encoding_equals_one_call_per_layer_and_timestep(model, dtu_like_cameras):
    cond = model.conditioner
    prompts = [PROMPT, "a <object> seen from <view>", PROMPT]
    ids = cond.tokenize(prompts, True)
    timesteps = torch.tensor([999.0, 17.0, 480.0])
    cameras = torch.tensor(dtu_like_cameras[[0, 10, 33]].reshape(3, 12), dtype=torch.float32)
    keys, values = cond.encode(ids, timesteps, cameras)
    assert keys.shape == values.shape == (16, 3, 77, cond.text_encoder.config.hidden_size)
    for n in range(3):
        for layer in (0, 6, 15):
            k, v = reference_single(model, ids[n], timesteps[n], layer, cameras[n])
            torch.testing.assert_close(keys[layer, n], k, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(values[layer, n], v, atol=1e-5, rtol=1e-5)
    # The mapper makes layers (and bypass makes values) differ.
    assert not torch.allclose(keys[0, 0], keys[15, 0])
    assert not torch.allclose(keys[3, 0], values[3, 0])


@torch.no_grad()
def test_chunked_encoding_matches_unchunked(model, dtu_like_cameras):
    cond = model.conditioner
    ids = cond.tokenize([PROMPT] * 5, True)
    timesteps = torch.linspace(0, 999, 5)
    cameras = torch.tensor(dtu_like_cameras[:5].reshape(5, 12), dtype=torch.float32)
    full = cond.encode(ids, timesteps, cameras)
    cond.max_rows = 16  # one prompt (16 layer rows) per encoder call
    chunked = cond.encode(ids, timesteps, cameras)
    for a, b in zip(full, chunked, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_plain_prompt_matches_the_stock_text_encoder(model):
    cond = model.conditioner
    ids = tokenize(cond.tokenizer, ["a photo of a cat", ""])
    stock = cond.text_encoder(ids).last_hidden_state
    torch.testing.assert_close(cond.encode_plain(ids), stock, atol=1e-5, rtol=1e-5)
    keys, values = cond.encode(ids, torch.tensor([10.0, 900.0]))
    for layer in range(16):
        torch.testing.assert_close(keys[layer], stock, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(values[layer], stock, atol=1e-5, rtol=1e-5)


def test_gradients_reach_only_the_mappers(model, dtu_like_cameras):
    comps, cond = model.components, model.conditioner
    torch.manual_seed(1)
    images = torch.rand(3, 3, 64, 48) * 2 - 1
    latents = comps.vae.encode(images).latent_dist.sample() * comps.vae.config.scaling_factor
    noise = torch.randn_like(latents)
    t = torch.randint(0, 1000, (3,))
    noisy = comps.scheduler.add_noise(latents, noise, t)
    ids = cond.tokenize([PROMPT] * 3, True)
    keys, values = cond.encode(ids, t.float(), torch.tensor(dtu_like_cameras[:3].reshape(3, 12), dtype=torch.float32))
    pred = comps.unet(noisy, t, encoder_hidden_states=keys[0],
                      cross_attention_kwargs={"xti_keys": keys, "xti_values": values}).sample
    target = comps.scheduler.get_velocity(latents, noise, t)
    F.mse_loss(pred.float(), target.float()).backward()
    for name, param in cond.mappers.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    for module in (comps.unet, comps.vae, comps.text_encoder):
        assert all(p.grad is None and not p.requires_grad for p in module.parameters())


def test_prompt_errors(model):
    cond = model.conditioner
    with pytest.raises(PromptError, match="no <view> token"):
        cond.tokenize(["A photo of a <object>"], True)
    with pytest.raises(PromptError, match="has 2 <view> tokens"):
        cond.tokenize(["<view> <view>. A photo of a <object>"], True)
    with pytest.raises(PromptError, match="no camera was given"):
        cond.tokenize([PROMPT], False)
    cond.tokenizer.add_tokens(["<scan9>"])
    with pytest.raises(PromptError, match="<scan9>.*no mapper"):
        cond.tokenize(["<view>. A photo of a <scan9>"], True)


def test_object_mapper_norm_matches_super_category(model):
    cond = model.conditioner
    table = text_model_of(cond.text_encoder).embeddings.token_embedding.weight
    ids = cond.tokenizer("object", add_special_tokens=False).input_ids
    expected = table[ids].norm(dim=-1).mean()
    word, _ = cond.object_mappers["<object>"](torch.tensor([3]), torch.tensor([2]))
    torch.testing.assert_close(word.norm(), expected.detach(), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_bypass_and_mappers_are_float32_under_bf16_autocast(model, dtu_like_cameras):
    """Under bf16 autocast the encoder runs in bf16, but the mapper outputs and the bypass arithmetic
    h_p + alpha * b/|b| * |h_p| stay float32 (checked on the values' difference from the keys)."""
    cond = model.conditioner
    ids = cond.tokenize([PROMPT], True)
    timesteps = torch.tensor([500.0])
    cameras = torch.tensor(dtu_like_cameras[[3]].reshape(1, 12), dtype=torch.float32)
    seen = []
    hook = cond.view_mapper.register_forward_hook(lambda m, i, out: seen.append([o.dtype for o in out]))
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            keys, values = cond.encode(ids, timesteps, cameras)
    finally:
        hook.remove()
    assert seen and all(d == torch.float32 for dtypes in seen for d in dtypes)
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 77, 8, generator=gen).to(torch.bfloat16)
    mask = torch.zeros(2, 77, dtype=torch.bool)
    mask[:, 5] = True
    unit = torch.nn.functional.normalize(torch.randn(2, 8, generator=gen), dim=-1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = cond._add_bypasses(hidden, [(mask, unit, 5.0)])
    h = hidden.double()
    expected = h.clone()
    expected[:, 5] = h[:, 5] + 5.0 * unit.double() * h[:, 5].norm(dim=-1, keepdim=True)
    assert out.dtype == torch.bfloat16  # handed back in the encoder's dtype for its final LayerNorm
    # one bf16 rounding of the float32 result, not the several a bf16 computation would add
    torch.testing.assert_close(out.double(), expected.to(torch.bfloat16).double(), atol=0, rtol=0)
    assert torch.equal(out[:, :5], hidden[:, :5])
