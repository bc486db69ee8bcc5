"""Self-attention one head at a time: the same numbers, a score matrix per head instead of one for all heads at once.

An exported UNet's attention is MatMul, Softmax, MatMul, and ONNX Runtime's CPU kernels hold the whole
(batch x heads x N x N) score matrix (sdopt.runtime.attention_memory): its memory grows with the fourth power of the
image's side. Computing each head's scores, softmax and values in turn (the head count is fixed, so the loop traces
into the graph; batch and size stay dynamic) lets ONNX Runtime reuse one head's buffers for the next. Each head's
numbers are the ones the batched computation makes (the same dot products and softmax per row), so the export's
parity check holds it to fp32 tolerance. Measured, tiny model (8 heads at the full latent size, as SD 1.5), ONNX
Runtime fp32, 1 step guided, peak RSS at 512²: 3.51 GiB -> 1.03 GiB (torch 0.73); the time cost is in docs/onnx.md.
Only self-attention (cross-attention's scores are N x 77) and only where nothing but Diffusers' own scaled-dot-product
processor ran (no attention mask, no spatial norm): anything else keeps its processor.
"""

from __future__ import annotations

import torch


class HeadByHeadAttnProcessor:
    """Diffusers' AttnProcessor2_0 for a self-attention without a mask, each head's attention computed in turn."""

    def __init__(self, original):
        self.original = original  # what runs a call this one does not cover (a mask given at call time)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        if attention_mask is not None or encoder_hidden_states is not None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        four_d = hidden_states.ndim == 4
        if four_d:
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        batch = hidden_states.shape[0]
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        heads = attn.heads
        head_dim = key.shape[-1] // heads
        query, key, value = (t.view(batch, -1, heads, head_dim).transpose(1, 2) for t in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        per_head = []
        for head in range(heads):  # a constant count: traced as that many Gathers, batch and tokens stay dynamic
            scores = torch.matmul(query[:, head], key[:, head].transpose(-1, -2)) * head_dim**-0.5  # SDPA's scale, as the processor's
            per_head.append(torch.matmul(scores.softmax(dim=-1), value[:, head]))
        hidden_states = torch.stack(per_head, dim=1).transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if four_d:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def rewritable(module: torch.nn.Module) -> bool:
    """A Diffusers self-attention run by its own scaled-dot-product processor, without a spatial norm."""
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    return (isinstance(module, Attention) and not module.is_cross_attention and type(module.processor) is AttnProcessor2_0
            and getattr(module, "spatial_norm", None) is None)


def rewrite_attention(root: torch.nn.Module) -> int:
    """Give every such self-attention under ``root`` the head-by-head processor; how many ``root`` holds afterwards."""
    for module in [m for m in root.modules() if rewritable(m)]:
        module.set_processor(HeadByHeadAttnProcessor(module.processor))
    return sum(isinstance(getattr(m, "processor", None), HeadByHeadAttnProcessor) for m in root.modules())
