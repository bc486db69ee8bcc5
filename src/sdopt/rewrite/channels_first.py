"""A UNet's transformers computed channels-first: every token-wise linear layer as a 1×1 convolution.

Diffusers' ``Transformer2DModel`` turns the [B, C, H, W] feature map into [B, H·W, C] tokens,
runs its blocks (LayerNorm, self-attention, cross-attention, GEGLU feed-forward: all
token-wise linear layers and two attention matmuls) and turns it back. The same numbers come
out if the map stays [B, C, H, W] throughout: a linear layer over C is a 1×1 convolution
with the same weight, LayerNorm over C is a mean and variance over dim 1, and the attention
matmuls take the heads' [d, H·W] slices transposed. What it buys is the kernel the CPU runs:
on a CPU without VNNI, OpenVINO runs NNCF's int8 linear layers as oneDNN's generic int8 gemm
(``jit_gemm_I8``: ~125 GOP/s on a 2-core AVX2 EPYC, no faster than the fp32 ones) but int8
convolutions as ``jit_avx2_1x1_I8`` at ~320 GOP/s — sd15's int8-static UNet spends 36% of its
call in those linear layers (measure/openvino_profile.py; docs/optimize.md).

Optional (``sdopt export --rewrite transformer_channels_first``), not a default: it was
measured on that AVX2 CPU only; on VNNI and AMX CPUs OpenVINO's int8 linear layers already
run near the int8 peak. Applies to continuous-input transformers with plain LayerNorm blocks
(SD 1.x, 2.x, XL); anything else is left as it is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sdopt.rewrite.modules import replace_module


def _conv(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Conv2d:
    """A frozen 1×1 convolution with a linear layer's [out, in] ``weight`` (viewed, not copied) and ``bias``."""
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], 1, bias=bias is not None, device="meta")
    conv.weight = nn.Parameter(weight.detach()[:, :, None, None], requires_grad=False)
    if bias is not None:
        conv.bias = nn.Parameter(bias.detach(), requires_grad=False)
    return conv


def _as_conv(layer: nn.Module, rows: slice = slice(None)) -> nn.Module:
    """A 1×1 convolution computing ``rows`` of ``layer``'s outputs (a Linear over channels, or already a 1×1 Conv2d) on [B, C, H, W]."""
    if isinstance(layer, nn.Conv2d):
        return layer
    return _conv(layer.weight[rows], None if layer.bias is None else layer.bias[rows])


class _ChannelLayerNorm(nn.Module):
    """``nn.LayerNorm(C)`` applied at every pixel of [B, C, H, W]: normalised over dim 1."""

    def __init__(self, norm: nn.LayerNorm):
        super().__init__()
        self.eps = norm.eps
        self.weight = nn.Parameter(norm.weight.detach().view(1, -1, 1, 1), requires_grad=False)
        self.bias = nn.Parameter(norm.bias.detach().view(1, -1, 1, 1), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(1, keepdim=True)
        return centred * torch.rsqrt(centred.square().mean(1, keepdim=True) + self.eps) * self.weight + self.bias


class _ChannelsFirstAttention(nn.Module):
    """Diffusers' ``Attention`` (plain processor, no norms or masks) on [B, C, H, W] queries."""

    def __init__(self, attn: nn.Module):
        super().__init__()
        self.heads, self.scale, self.cross = attn.heads, attn.scale, attn.is_cross_attention
        self.to_q = _as_conv(attn.to_q)
        # Cross-attention's keys and values come from the text tokens [B, 77, D]: they stay linear layers.
        self.to_k = attn.to_k if self.cross else _as_conv(attn.to_k)
        self.to_v = attn.to_v if self.cross else _as_conv(attn.to_v)
        self.to_out = _as_conv(attn.to_out[0])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        b, _, h, w = x.shape
        q = self.to_q(x).reshape(b, self.heads, -1, h * w)  # [B, heads, d, T]: channel = head·d + j, as Diffusers splits
        if self.cross:
            k = self.to_k(context).unflatten(-1, (self.heads, -1)).permute(0, 2, 3, 1)  # [B, heads, d, S]
            v = self.to_v(context).unflatten(-1, (self.heads, -1)).permute(0, 2, 3, 1)
        else:
            k = self.to_k(x).reshape(b, self.heads, -1, h * w)
            v = self.to_v(x).reshape(b, self.heads, -1, h * w)
        probs = (torch.matmul(q.transpose(-1, -2), k) * self.scale).softmax(-1)  # [B, heads, T, S]
        out = torch.matmul(v, probs.transpose(-1, -2))  # [B, heads, d, T]
        return self.to_out(out.reshape(b, -1, h, w))


class _ChannelsFirstBlock(nn.Module):
    """A ``BasicTransformerBlock`` (layer_norm, self- then cross-attention, GEGLU feed-forward) on [B, C, H, W]."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = (_ChannelLayerNorm(n) for n in (block.norm1, block.norm2, block.norm3))
        self.attn1, self.attn2 = _ChannelsFirstAttention(block.attn1), _ChannelsFirstAttention(block.attn2)
        geglu, _, out = block.ff.net
        inner = geglu.proj.out_features // 2
        self.value, self.gate = _as_conv(geglu.proj, slice(0, inner)), _as_conv(geglu.proj, slice(inner, None))
        self.ff_out = _as_conv(out)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.attn1(self.norm1(x), None) + x
        x = self.attn2(self.norm2(x), context) + x
        h = self.norm3(x)
        return self.ff_out(self.value(h) * F.gelu(self.gate(h))) + x


class ChannelsFirstTransformer2D(nn.Module):
    """Stands in for a Diffusers ``Transformer2DModel`` of continuous input: the same outputs, never leaving [B, C, H, W]."""

    def __init__(self, original: nn.Module):
        super().__init__()
        self.norm = original.norm
        self.proj_in, self.proj_out = _as_conv(original.proj_in), _as_conv(original.proj_out)
        self.blocks = nn.ModuleList(_ChannelsFirstBlock(b) for b in original.transformer_blocks)

    def forward(self, hidden_states, encoder_hidden_states=None, timestep=None, added_cond_kwargs=None, class_labels=None,
                cross_attention_kwargs=None, attention_mask=None, encoder_attention_mask=None, return_dict=True):
        if attention_mask is not None or encoder_attention_mask is not None or cross_attention_kwargs:
            raise ValueError("the channels-first transformer rewrite computes no attention masks or cross_attention_kwargs; export without it")
        x = self.proj_in(self.norm(hidden_states))
        for block in self.blocks:
            x = block(x, encoder_hidden_states)
        out = self.proj_out(x) + hidden_states
        if not return_dict:
            return (out,)
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=out)


def _plain_attention(attn: nn.Module, cross: bool) -> bool:
    from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

    return (
        type(attn) is Attention
        and type(attn.processor) in (AttnProcessor, AttnProcessor2_0)
        and attn.is_cross_attention == cross
        and attn.scale_qk
        and not attn.residual_connection
        and attn.rescale_output_factor == 1.0
        and attn.added_kv_proj_dim is None
        and all(getattr(attn, n, None) is None for n in ("norm_q", "norm_k", "group_norm", "spatial_norm", "norm_cross"))
        and all(type(getattr(attn, n)) is nn.Linear for n in ("to_q", "to_k", "to_v"))
        and type(attn.to_out[0]) is nn.Linear
    )


def _plain_block(block: nn.Module) -> bool:
    from diffusers.models.activations import GEGLU
    from diffusers.models.attention import BasicTransformerBlock

    if type(block) is not BasicTransformerBlock or block.norm_type != "layer_norm" or block.pos_embed is not None:
        return False
    if block.only_cross_attention or block.attn2 is None or block._chunk_size is not None or hasattr(block, "fuser"):
        return False
    norms = (block.norm1, block.norm2, block.norm3)
    if not all(type(n) is nn.LayerNorm and n.elementwise_affine and n.bias is not None for n in norms):
        return False
    net = list(block.ff.net)
    return (
        len(net) == 3 and type(net[0]) is GEGLU and type(net[0].proj) is nn.Linear and type(net[1]) is nn.Dropout and type(net[2]) is nn.Linear
        and _plain_attention(block.attn1, cross=False) and _plain_attention(block.attn2, cross=True)
    )


def rewritable(module: nn.Module) -> bool:
    """Exactly Diffusers' continuous-input ``Transformer2DModel`` whose blocks are all plain SD blocks."""
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    return (
        type(module) is Transformer2DModel
        and module.is_input_continuous
        and type(module.norm) is nn.GroupNorm
        and len(module.transformer_blocks) > 0
        and all(type(p) is nn.Linear or (type(p) is nn.Conv2d and p.kernel_size == (1, 1) and p.groups == 1) for p in (module.proj_in, module.proj_out))
        and all(_plain_block(b) for b in module.transformer_blocks)
    )


def rewrite_transformers(root: nn.Module) -> int:
    """Replace every such transformer under ``root`` in place; how many ``root`` holds rewritten afterwards."""
    for name, module in [(n, m) for n, m in root.named_modules() if rewritable(m)]:
        replace_module(root, name, ChannelsFirstTransformer2D(module))
    return sum(isinstance(m, ChannelsFirstTransformer2D) for m in root.modules())
