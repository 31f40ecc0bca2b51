"""Text conditioning with mappers (DESIGN 3.4): per-layer key and value contexts, in batched calls.

For a prompt like "<view>. A photo of a <object>" and one (timestep t, layer l, camera) triple:
1. take the token embeddings and substitute the mapper word embeddings at the placeholder positions;
2. run the frozen CLIP encoder with its causal mask; take the last hidden state before the final
   LayerNorm, h;
3. bypass: at each placeholder position p, h_p += alpha * b / |b| * |h_p|;
4. keys = LN(h), values = LN(h with bypass).
The original ran the encoder once per UNet layer. Here every (prompt, t, camera) x layer row goes
through the encoder together, in chunks of `max_rows` rows.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer

from viewneti_core.errors import PromptError
from viewneti_core.method.mappers import NeTIMapper

MAX_LENGTH = 77


def text_model_of(text_encoder: CLIPTextModel) -> nn.Module:
    """transformers < 5.6 nests the parts under `.text_model`; newer releases put them on the model."""
    return getattr(text_encoder, "text_model", text_encoder)


_PLACEHOLDER_RE = re.compile(r"<[A-Za-z][\w-]*>")


def check_prompt_placeholders(prompt: str, view_token: str, known: Sequence[str], hint: str = "") -> None:
    """Refuse a `<name>` that no loaded mapper stands for: the tokenizer would read it as the plain
    characters '<', 'name', '>' and the image would silently ignore what the user meant."""
    unknown = sorted({m for m in _PLACEHOLDER_RE.findall(prompt) if m != view_token and m not in known})
    if unknown:
        loaded = ", ".join([view_token, *known])
        raise PromptError(f"prompt {prompt[:200]!r} uses placeholder(s) {unknown} that have no mapper "
                          f"(loaded: {loaded}){hint}")


def add_placeholder_tokens(tokenizer: CLIPTokenizer, tokens: Sequence[str]) -> list[int]:
    """Register placeholder strings as single tokens (idempotent); returns their ids."""
    missing = [t for t in tokens if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing)
    return [tokenizer.convert_tokens_to_ids(t) for t in tokens]


def tokenize(tokenizer: CLIPTokenizer, prompts: Sequence[str]) -> torch.Tensor:
    """Pad/truncate every prompt to CLIP's 77 tokens."""
    return tokenizer(
        list(prompts), padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt"
    ).input_ids


def super_category_norm(tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, word: str) -> float:
    """Norm of a super-category word's input embedding (mean over its tokens if it splits)."""
    ids = tokenizer(word, add_special_tokens=False).input_ids
    if not ids:
        raise ValueError(f"super-category word {word!r} produced no tokens")
    table = text_model_of(text_encoder).embeddings.token_embedding.weight.detach()
    return float(table[torch.tensor(ids, device=table.device)].float().norm(dim=-1).mean())


def causal_mask(length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive (1, 1, S, S) mask; passed explicitly because eager attention ignores `is_causal`."""
    mask = torch.full((length, length), torch.finfo(dtype).min, dtype=dtype, device=device).triu(1)
    return mask[None, None]


VIEW_MAPPER_KEY = "view"


class TextConditioner:
    """Holds the mappers and turns prompts (+ timesteps, cameras) into per-layer UNet contexts.

    The frozen text encoder is wrapped, not modified: placeholder ids lie outside its vocabulary and
    are replaced by mapper outputs before position embeddings are added. The only trainable state is
    `self.mappers` (key "view" for the view mapper, the placeholder token for each object mapper).
    """

    def __init__(
        self,
        tokenizer: CLIPTokenizer,
        text_encoder: CLIPTextModel,
        *,
        num_layers: int = 16,
        view_mapper: NeTIMapper | None = None,
        object_mappers: Mapping[str, NeTIMapper] | None = None,
        view_token: str = "<view>",
        alpha_view: float = 5.0,
        alpha_object: float = 5.0,
        output_bypass: bool = True,
        max_rows: int = 1024,
    ):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.num_layers = num_layers
        self.view_token = view_token
        object_mappers = dict(object_mappers or {})
        if VIEW_MAPPER_KEY in object_mappers:
            raise ValueError(f"{VIEW_MAPPER_KEY!r} cannot be an object token")
        self.mappers = nn.ModuleDict(
            ({VIEW_MAPPER_KEY: view_mapper} if view_mapper is not None else {}) | object_mappers
        )
        self.alpha_view = alpha_view
        self.alpha_object = alpha_object
        self.output_bypass = output_bypass
        self.max_rows = max_rows
        ids = add_placeholder_tokens(tokenizer, [view_token, *object_mappers])
        self.view_token_id = ids[0]
        self.object_token_ids = dict(zip(object_mappers, ids[1:], strict=True))
        self.vocab_size = text_model_of(text_encoder).embeddings.token_embedding.num_embeddings
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    @property
    def view_mapper(self) -> NeTIMapper | None:
        return self.mappers[VIEW_MAPPER_KEY] if VIEW_MAPPER_KEY in self.mappers else None

    @property
    def object_mappers(self) -> dict[str, NeTIMapper]:
        return {k: m for k, m in self.mappers.items() if k != VIEW_MAPPER_KEY}

    @property
    def device(self) -> torch.device:
        return self.text_encoder.device

    @property
    def dtype(self) -> torch.dtype:
        return self.text_encoder.dtype

    # ---- prompts --------------------------------------------------------------------------------

    def tokenize(self, prompts: Sequence[str], has_camera: Sequence[bool] | bool) -> torch.Tensor:
        """Tokenize and check placeholders: one view token exactly when a camera is given."""
        ids = tokenize(self.tokenizer, prompts)
        flags = [has_camera] * len(prompts) if isinstance(has_camera, bool) else list(has_camera)
        known_ids = {self.view_token_id, *self.object_token_ids.values()}
        for prompt, row, camera in zip(prompts, ids, flags, strict=True):
            check_prompt_placeholders(prompt, self.view_token, list(self.object_token_ids))
            n_view = int((row == self.view_token_id).sum())
            if n_view > 1:
                raise PromptError(f"prompt {prompt!r} has {n_view} {self.view_token} tokens; use exactly one")
            if camera and n_view == 0:
                raise PromptError(
                    f"a camera was given but prompt {prompt!r} has no {self.view_token} token, so the camera "
                    f"would be ignored; write e.g. '{self.view_token}. A photo of a teddy bear'"
                )
            if not camera and n_view == 1:
                raise PromptError(f"prompt {prompt!r} has a {self.view_token} token but no camera was given")
            if n_view and self.view_mapper is None:
                raise PromptError(f"prompt {prompt!r} uses {self.view_token} but no view mapper is loaded")
            unknown = sorted({int(i) for i in row if i >= self.vocab_size and int(i) not in known_ids})
            if unknown:
                names = self.tokenizer.convert_ids_to_tokens(unknown)
                raise PromptError(f"prompt {prompt!r} uses placeholder(s) {names} that have no mapper")
        return ids

    # ---- encoding -------------------------------------------------------------------------------

    def encode_plain(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Stock encoding (no mappers, no bypass): LN(h), e.g. for the unconditional branch."""
        embeds = self._token_embeddings(input_ids.to(self.device))
        return self._final_norm(self._encoder_hidden(embeds))

    def encode(
        self,
        input_ids: torch.Tensor,
        timesteps: torch.Tensor,
        cameras: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Contexts for every layer: keys and values of shape (L, N, 77, D).

        Row n uses prompt `input_ids[n]`, timestep `timesteps[n]` and camera `cameras[n]` (cameras may
        hold any values in rows whose prompt has no view token).
        """
        n = input_ids.shape[0]
        if timesteps.shape != (n,):
            raise ValueError(f"expected {n} timesteps, got shape {tuple(timesteps.shape)}")
        if cameras is not None and cameras.shape[0] != n:
            raise ValueError(f"expected {n} cameras, got {cameras.shape[0]}")
        keys, values = [], []
        rows_per_prompt = self.num_layers
        chunk = max(1, self.max_rows // rows_per_prompt)
        for start in range(0, n, chunk):
            sl = slice(start, start + chunk)
            k, v = self._encode_rows(input_ids[sl], timesteps[sl], None if cameras is None else cameras[sl])
            keys.append(k)
            values.append(v)
        return torch.cat(keys, dim=1), torch.cat(values, dim=1)

    def _encode_rows(
        self, input_ids: torch.Tensor, timesteps: torch.Tensor, cameras: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n, length = input_ids.shape
        layers = self.num_layers
        device = self.device
        # One row per (prompt, layer): prompt-major, so a reshape to (N, L, ...) undoes it.
        host_ids = input_ids.cpu().repeat_interleave(layers, dim=0)  # token ids come from the CPU tokenizer
        ids = host_ids.to(device)
        row_t = timesteps.to(device).repeat_interleave(layers)
        row_l = torch.arange(layers, device=device).repeat(n)
        row_cam = cameras.to(device).repeat_interleave(layers, dim=0) if cameras is not None else None

        embeds = self._token_embeddings(ids)
        bypasses = []  # (mask (R, S), unit bypass (R, D), alpha)
        for token_id, mapper, alpha, is_view in self._placeholders():
            # Which rows hold the token is read on the host: no device sync per placeholder and chunk.
            rows = (host_ids == token_id).any(dim=1).nonzero().flatten()
            if rows.numel() == 0:
                continue
            rows = rows.to(device, non_blocking=True)
            mask = ids == token_id
            word, bypass = mapper(row_t[rows], row_l[rows], row_cam[rows] if is_view else None)
            full_word = embeds.new_zeros(embeds.shape[0], embeds.shape[2]).index_put((rows,), word.to(embeds.dtype))
            embeds = torch.where(mask[..., None], full_word[:, None, :], embeds)
            if self.output_bypass and alpha > 0:
                unit = bypass / bypass.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                full_unit = unit.new_zeros(embeds.shape[0], embeds.shape[2]).index_put((rows,), unit)  # float32
                bypasses.append((mask, full_unit, alpha))

        hidden = self._encoder_hidden(embeds)
        keys = self._final_norm(hidden)
        values = self._final_norm(self._add_bypasses(hidden, bypasses)) if bypasses else keys
        shape = (n, layers, length, keys.shape[-1])
        return keys.reshape(shape).transpose(0, 1), values.reshape(shape).transpose(0, 1)

    @staticmethod
    def _add_bypasses(hidden: torch.Tensor, bypasses: list) -> torch.Tensor:
        """h_p + alpha * b/|b| * |h_p| at each placeholder position, in float32 whatever the encoder's dtype."""
        device_type = hidden.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            h = hidden.float()
            scale = h.norm(dim=-1, keepdim=True)
            out = h
            for mask, unit, alpha in bypasses:
                out = out + alpha * mask[..., None].float() * unit[:, None, :].float() * scale
        return out.to(hidden.dtype)

    def _placeholders(self):
        if self.view_mapper is not None:
            yield self.view_token_id, self.view_mapper, self.alpha_view, True
        for token, mapper in self.object_mappers.items():
            yield self.object_token_ids[token], mapper, self.alpha_object, False

    def _token_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        safe = torch.where(ids < self.vocab_size, ids, torch.full_like(ids, self.pad_token_id))
        return text_model_of(self.text_encoder).embeddings.token_embedding(safe)

    def _encoder_hidden(self, token_embeds: torch.Tensor) -> torch.Tensor:
        """Position embeddings + encoder layers with an explicit causal mask; h before the final LN."""
        text_model = text_model_of(self.text_encoder)
        hidden = text_model.embeddings(inputs_embeds=token_embeds)
        mask = causal_mask(hidden.shape[1], hidden.dtype, hidden.device)
        return text_model.encoder(inputs_embeds=hidden, attention_mask=mask).last_hidden_state

    def _final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        return text_model_of(self.text_encoder).final_layer_norm(hidden)
