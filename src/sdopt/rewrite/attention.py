"""Attention exported so ONNX Runtime's CPU kernels do not hold every head's whole score matrix at once.

An exported UNet's attention is MatMul, Softmax, MatMul, and ONNX Runtime's CPU kernels hold the whole
(batch x heads x N x N) score matrix (sdopt.runtime.attention_memory): its memory grows with the fourth power of the
image's side. Two rewrites, each only where nothing but Diffusers' own scaled-dot-product processor ran (no attention
mask, no spatial norm, no query/key norms): anything else keeps its processor.

- ``attention_by_head``: each head's scores, softmax and values in turn (the head count is fixed, so the loop traces
  into the graph; batch and size stay dynamic), so ONNX Runtime reuses one head's buffers for the next. Each head's
  numbers are the ones the batched computation makes. Any runtime reads the graph. Self-attention only (cross-attention's
  scores are N x 77). Measured, tiny model at 512², ONNX Runtime fp32, 1 step guided: peak RSS 3.51 -> 1.03 GiB, +31% time.
- ``attention_fused``: the whole attention as one ``com.microsoft.MultiHeadAttention`` node, ONNX Runtime's own
  (flash-attention on a CPU: the scores a block at a time, never the N x N matrix) — less memory and less time, but a
  graph only ONNX Runtime runs, so the ONNX target's alone. Self- and cross-attention. Its default scale is the
  processor's (1/sqrt(head size)). Figures in docs/onnx.md.

The export's parity check against the untouched module holds either to fp32 tolerance.
"""

from __future__ import annotations

import torch


class _PlainAttentionProcessor:
    """Diffusers' AttnProcessor2_0 without a mask, its q·k·v step (q, k, v as [batch, tokens, heads·head size]) left to
    ``attend``; a call it does not cover (a mask given at call time, cross-attention where it takes none) runs the
    original processor."""

    cross = False  # whether it takes cross-attention calls too

    def __init__(self, original):
        self.original = original

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, heads: int) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        if attention_mask is not None or (encoder_hidden_states is not None and not self.cross):
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        four_d = hidden_states.ndim == 4
        if four_d:
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        hidden_states = self.attend(query, key, value, attn.heads).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if four_d:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def _split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """[batch, tokens, heads·d] -> [batch, heads, tokens, d]"""
    return t.view(t.shape[0], -1, heads, t.shape[-1] // heads).transpose(1, 2)


def _merge_heads(t: torch.Tensor) -> torch.Tensor:
    """[batch, heads, tokens, d] -> [batch, tokens, heads·d]"""
    return t.transpose(1, 2).reshape(t.shape[0], -1, t.shape[1] * t.shape[3])


class HeadByHeadAttnProcessor(_PlainAttentionProcessor):
    """Self-attention one head at a time."""

    def attend(self, query, key, value, heads):
        query, key, value = (_split_heads(t, heads) for t in (query, key, value))
        scale = query.shape[-1] ** -0.5  # SDPA's default, as the processor's
        per_head = []
        for head in range(heads):  # a constant count: traced as that many Gathers, batch and tokens stay dynamic
            scores = torch.matmul(query[:, head], key[:, head].transpose(-1, -2)) * scale
            per_head.append(torch.matmul(scores.softmax(dim=-1), value[:, head]))
        return _merge_heads(torch.stack(per_head, dim=1))


def _attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, heads: int) -> torch.Tensor:
    """torch's scaled-dot-product attention over [batch, tokens, heads·d] inputs, as the processor computes it."""
    return _merge_heads(torch.nn.functional.scaled_dot_product_attention(*(_split_heads(t, heads) for t in (query, key, value))))


class _MultiHeadAttention(torch.autograd.Function):
    """Scaled-dot-product attention over [batch, tokens, heads·d] inputs; exported as ONNX Runtime's contrib op."""

    @staticmethod
    def forward(ctx, query, key, value, heads: int):
        return _attention(query, key, value, heads)

    @staticmethod
    def symbolic(g, query, key, value, heads: int):
        out = g.op("com.microsoft::MultiHeadAttention", query, key, value, num_heads_i=heads)
        out.setType(query.type())  # [batch, tokens, heads·d]: SD's value width is the query's
        return out


class FusedAttnProcessor(_PlainAttentionProcessor):
    """Self- and cross-attention as one ONNX Runtime MultiHeadAttention node."""

    cross = True

    def attend(self, query, key, value, heads):
        if value.shape[-1] != query.shape[-1]:  # the op's output is the value's width; the traced type says the query's
            return _attention(query, key, value, heads)
        return _MultiHeadAttention.apply(query, key, value, heads)


# rewrite name -> its processor (whose ``cross`` says whether it takes cross-attention too)
PROCESSORS = {"attention_by_head": HeadByHeadAttnProcessor, "attention_fused": FusedAttnProcessor}

# the ONNX operator domains a rewrite's graphs use beyond the standard one, for the exporter's opset imports
CUSTOM_OPSETS = {"attention_fused": {"com.microsoft": 1}}


def rewritable(module: torch.nn.Module, cross: bool) -> bool:
    """A Diffusers attention run by its own scaled-dot-product processor, without spatial or query/key norms; a
    cross-attention only where ``cross``."""
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    return (isinstance(module, Attention) and (cross or not module.is_cross_attention) and type(module.processor) is AttnProcessor2_0
            and getattr(module, "spatial_norm", None) is None and module.norm_q is None and module.norm_k is None)


def rewrite_attention(root: torch.nn.Module, name: str = "attention_by_head") -> int:
    """Give every attention under ``root`` the rewrite ``name`` covers its processor; how many ``root`` holds afterwards."""
    processor = PROCESSORS[name]
    for module in [m for m in root.modules() if rewritable(m, processor.cross)]:
        module.set_processor(processor(module.processor))
    return sum(isinstance(getattr(m, "processor", None), processor) for m in root.modules())
