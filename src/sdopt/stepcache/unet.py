"""The UNet split for step-feature caching: the whole UNet with its deep feature, and the shallow branch.

``DeepUNet`` repeats Diffusers' ``UNet2DConditionModel.forward`` for the SD-1/2
UNet and SDXL's (whose time embedding adds the pooled text embedding and the
size ids), an LCM-distilled UNet's (the guidance embedding, timestep_cond, projected
into the time embedding; no class embeddings, adapters or ControlNet residuals) and also
returns the feature entering the last up block; its first output is
Diffusers' own, bit for bit (tests/test_stepcache.py). ``ShallowUNet`` holds
only the modules the shallow branch uses, so its exported graph carries only
their weights (a few percent of the UNet's).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sdopt.errors import SdoptError

# The added embeddings the split computes: none (SD-1/2), SDXL's pooled text embedding and size ids.
ADDITIONS = (None, "text_time")


def check_supported(unet) -> None:
    """The split covers the SD-1/2 and SDXL UNets; say so for anything else rather than compute something wrong."""
    config = unet.config
    unsupported = {
        "class_embed_type": config.get("class_embed_type"),
        "addition_embed_type": None if config.get("addition_embed_type") in ADDITIONS else config.get("addition_embed_type"),
        "encoder_hid_dim_type": config.get("encoder_hid_dim_type"),
        "num_class_embeds": config.get("num_class_embeds"),
    }
    present = {k: v for k, v in unsupported.items() if v is not None}
    if present:
        raise SdoptError(
            f"step-feature caching supports the SD-1/2 and SDXL UNets; this one has {', '.join(f'{k}={v}' for k, v in present.items())}. "
            "Export it without --deep-cache"
        )
    if len(unet.down_blocks) < 2 or len(unet.up_blocks) < 2:
        raise SdoptError("step-feature caching needs a UNet with at least two down and two up blocks: this one has no deep part to cache")


@dataclass
class CachedOutput:
    sample: torch.Tensor
    deep_feature: torch.Tensor


def _embed(parts, sample, timestep, added, timestep_cond=None):
    """The time embedding as Diffusers' forward makes it: SD-1/2's alone; SDXL's plus its pooled text
    embedding and size ids (``added``: Diffusers' added_cond_kwargs; get_aug_embed's "text_time" branch);
    an LCM-distilled UNet's with the guidance scale's embedding (``timestep_cond``) projected into it."""
    t_emb = parts.get_time_embed(sample=sample, timestep=timestep)
    emb = parts.time_embedding(t_emb, timestep_cond)
    if added is not None:
        time_embeds = parts.add_time_proj(added["time_ids"].flatten()).reshape((added["text_embeds"].shape[0], -1))
        emb = emb + parts.add_embedding(torch.concat([added["text_embeds"], time_embeds], dim=-1).to(emb.dtype))
    if parts.time_embed_act is not None:
        emb = parts.time_embed_act(emb)
    return emb


def _down(block, sample, emb, hidden):
    if getattr(block, "has_cross_attention", False):
        return block(hidden_states=sample, temb=emb, encoder_hidden_states=hidden)
    return block(hidden_states=sample, temb=emb)


def _up(block, sample, emb, hidden, res, upsample_size):
    if getattr(block, "has_cross_attention", False):
        return block(hidden_states=sample, temb=emb, res_hidden_states_tuple=res, encoder_hidden_states=hidden, upsample_size=upsample_size)
    return block(hidden_states=sample, temb=emb, res_hidden_states_tuple=res, upsample_size=upsample_size)


def _head(parts, sample):
    if parts.conv_norm_out is not None:
        sample = parts.conv_act(parts.conv_norm_out(sample))
    return parts.conv_out(sample)


def _shallow_start(parts, sample, emb, hidden):
    """conv_in and the first down block: the skip connections the last up block reads (its first entries)."""
    if parts.center_input_sample:
        sample = 2 * sample - 1.0
    x = parts.conv_in(sample)
    _, res = _down(parts.down_blocks[0], x, emb, hidden)
    return (x, *res)


class DeepUNet(torch.nn.Module):
    """The whole UNet; ``forward`` returns its output and the feature that enters its last up block."""

    def __init__(self, unet):
        super().__init__()
        check_supported(unet)
        self.unet = unet
        self.config = unet.config

    def forward(self, sample, timestep, encoder_hidden_states, added_cond_kwargs=None, timestep_cond=None) -> CachedOutput:
        u = self.unet
        emb = _embed(u, sample, timestep, added_cond_kwargs, timestep_cond)
        # Diffusers passes explicit upsample sizes only when the latent is not a multiple of the
        # overall down factor (decided in Python: see export/spec.py on tracing at an odd latent).
        forward_upsample_size = any(dim % 2**u.num_upsamplers != 0 for dim in sample.shape[-2:])
        if u.config.center_input_sample:
            sample = 2 * sample - 1.0
        x = u.conv_in(sample)
        skips: tuple = (x,)
        for block in u.down_blocks:
            x, res = _down(block, x, emb, encoder_hidden_states)
            skips += res
        if u.mid_block is not None:
            x = u.mid_block(x, emb, encoder_hidden_states=encoder_hidden_states) if getattr(u.mid_block, "has_cross_attention", False) else u.mid_block(x, emb)
        feature = x
        upsample_size = None
        for i, block in enumerate(u.up_blocks):
            final = i == len(u.up_blocks) - 1
            res, skips = skips[-len(block.resnets):], skips[: -len(block.resnets)]
            if not final and forward_upsample_size:
                upsample_size = skips[-1].shape[2:]
            if final:
                feature = x
            x = _up(block, x, emb, encoder_hidden_states, res, upsample_size)
        return CachedOutput(sample=_head(u, x), deep_feature=feature)


class ShallowUNet(torch.nn.Module):
    """The shallow branch: conv_in, the first down block, the last up block on the cached feature, conv_out.

    Holds only those modules (shared with the UNet, not copied), so a graph
    traced from it carries only their weights.
    """

    def __init__(self, unet):
        super().__init__()
        check_supported(unet)
        self.config = unet.config
        self.center_input_sample = bool(unet.config.center_input_sample)
        self.time_proj, self.time_embedding, self.time_embed_act = unet.time_proj, unet.time_embedding, unet.time_embed_act
        # SDXL's added embeddings (None on SD-1/2): the time embedding every step needs, shallow or whole.
        self.add_time_proj, self.add_embedding = getattr(unet, "add_time_proj", None), getattr(unet, "add_embedding", None)
        self.conv_in = unet.conv_in
        self.down_blocks = torch.nn.ModuleList([unet.down_blocks[0]])
        self.last_up = unet.up_blocks[-1]
        self.conv_norm_out, self.conv_act, self.conv_out = unet.conv_norm_out, unet.conv_act, unet.conv_out
        self._get_time_embed = type(unet).get_time_embed  # reads only time_proj: shared, not copied

    def get_time_embed(self, sample, timestep):
        return self._get_time_embed(self, sample=sample, timestep=timestep)

    def forward(self, sample, timestep, encoder_hidden_states, deep_feature, added_cond_kwargs=None, timestep_cond=None):
        emb = _embed(self, sample, timestep, added_cond_kwargs, timestep_cond)
        skips = _shallow_start(self, sample, emb, encoder_hidden_states)
        res = skips[: len(self.last_up.resnets)]
        return _head(self, _up(self.last_up, deep_feature, emb, encoder_hidden_states, res, None))


def split(unet) -> tuple[DeepUNet, ShallowUNet]:
    """The two modules a step-cached pipeline runs, sharing ``unet``'s weights."""
    return DeepUNet(unet), ShallowUNet(unet)
