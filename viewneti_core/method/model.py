"""Assemble a ViewNeTI model: frozen SD components + XTI processors + mappers, from the config."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from viewneti_core.base_model.sd_models import SDComponents, load_components, resolve_device, resolve_dtype
from viewneti_core.config import ModelConfig, ViewNetiConfig
from viewneti_core.data.cameras import CameraNormalization
from viewneti_core.method.conditioning import TextConditioner, add_placeholder_tokens, super_category_norm
from viewneti_core.method.mappers import NeTIMapper, build_mapper
from viewneti_core.method.xti_attention import install_xti_processors


@dataclass
class ViewNetiModel:
    components: SDComponents
    conditioner: TextConditioner
    num_layers: int

    @property
    def weights_label(self) -> str:
        """'random' when the frozen model or any untrained mapper is random; shown in every output."""
        return self.components.weights


def new_mapper(
    components: SDComponents,
    model_config: ModelConfig,
    *,
    kind: str,
    token: str,
    super_category_token: str,
    num_layers: int,
    camera_normalization: CameraNormalization | None = None,
) -> NeTIMapper:
    """A freshly initialised mapper whose output norm matches the super-category word."""
    sigmas = model_config.pe_sigmas
    return build_mapper(
        kind,
        components.text_width,
        super_category_norm(components.tokenizer, components.text_encoder, super_category_token),
        token=token,
        super_category_token=super_category_token,
        sigma_t=sigmas.sigma_t,
        sigma_l=sigmas.sigma_l,
        sigma_camera=sigmas.sigma_camera,
        hidden_dim=model_config.mapper_hidden_dim,
        num_fourier_features=model_config.num_fourier_features,
        num_unet_layers=num_layers,
        camera_normalization=camera_normalization,
    ).to(components.device)


def check_mapper_compatible(mapper: NeTIMapper, components: SDComponents, num_layers: int) -> None:
    """A mapper trained for another text encoder width or UNet depth cannot be used."""
    if mapper.config.output_dim != components.text_width:
        raise ValueError(
            f"mapper for {mapper.config.token!r} outputs {mapper.config.output_dim}-dim embeddings but the text "
            f"encoder of {components.source} is {components.text_width}-dim (was it trained on another base model?)"
        )
    if mapper.config.num_unet_layers != num_layers:
        raise ValueError(
            f"mapper for {mapper.config.token!r} was built for {mapper.config.num_unet_layers} cross-attention "
            f"layers, this UNet has {num_layers}"
        )


def build_model(
    config: ViewNetiConfig,
    components: SDComponents | None = None,
    *,
    view_mapper: NeTIMapper | None = None,
    object_mappers: dict[str, NeTIMapper] | None = None,
    new_object_tokens: Sequence[str] = (),
    view_camera_normalization: CameraNormalization | None = None,
) -> ViewNetiModel:
    """Load (or take) the frozen components and attach the given or new mappers.

    `view_camera_normalization` creates a new view mapper (modes 2 and 3, demos) when no trained
    `view_mapper` is given; `new_object_tokens` creates one new object mapper per token.
    """
    if components is None:
        components = load_components(
            config.model.pretrained_model_name_or_path,
            revision=config.model.revision,
            device=resolve_device(config.run.device),
            dtype=resolve_dtype(config.run.dtype, resolve_device(config.run.device)),
        )
    num_layers = install_xti_processors(components.unet)
    data = config.data
    add_placeholder_tokens(components.tokenizer, [data.placeholder_view_token, *new_object_tokens])
    if view_mapper is None and view_camera_normalization is not None:
        if not view_camera_normalization.has_range:
            raise ValueError("the cameras a new view mapper is normalised over are all the same camera: every "
                             "camera would map to the zero vector; give cameras that differ")
        view_mapper = new_mapper(
            components,
            config.model,
            kind="view",
            token=data.placeholder_view_token,
            super_category_token=data.super_category_view_token,
            num_layers=num_layers,
            camera_normalization=view_camera_normalization,
        )
    mappers = dict(object_mappers or {})
    for token in new_object_tokens:
        mappers[token] = new_mapper(
            components,
            config.model,
            kind="object",
            token=token,
            super_category_token=data.super_category_object_token,
            num_layers=num_layers,
        )
    for mapper in [view_mapper, *mappers.values()]:
        if mapper is not None:
            check_mapper_compatible(mapper, components, num_layers)
            mapper.to(components.device)
    conditioner = TextConditioner(
        components.tokenizer,
        components.text_encoder,
        num_layers=num_layers,
        view_mapper=view_mapper,
        object_mappers=mappers,
        view_token=data.placeholder_view_token,
        alpha_view=config.model.output_bypass_alpha_view,
        alpha_object=config.model.output_bypass_alpha_object,
        output_bypass=config.model.output_bypass,
    )
    return ViewNetiModel(components, conditioner, num_layers)
