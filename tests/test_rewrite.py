"""Exact rewrites (sdopt.rewrite): the same outputs from fewer FLOPs, traced into every exported VAE decoder."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from diffusers.models.upsampling import Upsample2D  # noqa: E402

from sdopt.cli import main  # noqa: E402
from sdopt.manifest import read_manifest  # noqa: E402
from sdopt.rewrite import recorded  # noqa: E402
from sdopt.rewrite.geglu import SplitGEGLU, rewrite_geglus  # noqa: E402
from sdopt.rewrite.upsample import UpsampleAsTransposedConv, rewrite_upsamplers  # noqa: E402


@pytest.mark.parametrize("channels,out_channels,height,width,bias", [(8, 8, 7, 5, True), (6, 10, 1, 1, False), (16, 4, 12, 9, True)])
def test_a_transposed_convolution_gives_what_upsample_then_conv_gives(channels, out_channels, height, width, bias):
    torch.manual_seed(channels + height)
    holder = torch.nn.ModuleList([Upsample2D(channels, use_conv=True, out_channels=out_channels, bias=bias)])
    x = torch.randn(3, channels, height, width)
    with torch.no_grad():
        before = holder[0](x)
        assert rewrite_upsamplers(holder) == 1
        assert isinstance(holder[0], UpsampleAsTransposedConv)
        after = holder[0](x)
        # An explicit output size (the UNet's odd latents) runs the original computation, unchanged.
        odd = (2 * height - 1, 2 * width - 1)
        sized = holder[0](x, odd)
        assert torch.equal(sized, holder[0].original(x, odd))
    assert after.shape == before.shape == (3, out_channels, 2 * height, 2 * width)
    assert (after - before).abs().max().item() <= 1e-5 * before.abs().max().item()


def test_only_plain_nearest_upsample_conv_pairs_are_rewritten():
    others = torch.nn.ModuleList([
        Upsample2D(8, use_conv=False),  # no convolution to fold
        Upsample2D(8, use_conv_transpose=True),  # already a transposed convolution
        Upsample2D(8, use_conv=True, kernel_size=5, padding=2),  # not 3x3
        Upsample2D(8, use_conv=True, norm_type="rms_norm", eps=1e-6, elementwise_affine=True),  # a norm first
        Upsample2D(8, use_conv=True, interpolate=False),  # the conv without upsampling
    ])
    assert rewrite_upsamplers(others) == 0
    assert not any(isinstance(m, UpsampleAsTransposedConv) for m in others)


@pytest.mark.parametrize("bias", [True, False])
def test_a_geglu_as_two_projections_gives_what_one_projection_and_a_split_give(bias):
    from diffusers.models.activations import GEGLU

    torch.manual_seed(1)
    holder = torch.nn.Sequential(torch.nn.Identity(), GEGLU(24, 40, bias=bias))
    x = torch.randn(2, 13, 24)
    with torch.no_grad():
        before = holder(x)
        assert rewrite_geglus(holder) == 1
        assert isinstance(holder[1], SplitGEGLU) and holder[1].value.out_features == holder[1].gate.out_features == 40
        after = holder(x)
        assert rewrite_geglus(holder) == 1  # counted where it is, not rewritten twice
    assert after.shape == before.shape == (2, 13, 40)
    assert (after - before).abs().max().item() <= 1e-6 * before.abs().max().item()


def test_only_diffusers_own_geglu_is_split():
    from diffusers.models.activations import GEGLU, GELU

    class Scaled(GEGLU):  # a subclass may compute something else: left alone
        def forward(self, hidden_states, *args, **kwargs):
            return 2 * super().forward(hidden_states)

    others = torch.nn.ModuleList([GELU(8, 8), Scaled(8, 8)])
    assert rewrite_geglus(others) == 0
    assert not any(isinstance(m, SplitGEGLU) for m in others)


def test_the_counted_flops_drop_by_what_the_transposed_convolutions_save(tiny_model):
    from sdopt.bench.flops import vae_decoder_flops

    config = tiny_model / "vae" / "config.json"
    latent = (1, 4, 8, 6)
    full, rewritten = vae_decoder_flops(config, latent), vae_decoder_flops(config, latent, rewritten=True)
    # Each upsampler at source size h×w: 2·9·Ci·Co·(2h·2w) multiply-adds' FLOPs before, 2·16·Ci·Co·h·w after.
    blocks = json.loads(config.read_text())["block_out_channels"][::-1]
    h, w, saved = latent[2], latent[3], 0
    for channels in blocks[:-1]:  # every up block but the last ends in an upsampler, at its own width
        saved += 2 * channels * channels * h * w * (36 - 16)
        h, w = 2 * h, 2 * w
    assert full - rewritten == saved > 0


def test_exports_record_the_rewrite_and_no_rewrites_traces_the_checkpoint_as_it_is(tiny_model, tiny_onnx_artifact, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    plain = tmp_path / "plain"
    assert main(["export", str(tiny_model), "--to", "onnx", "--no-rewrites", "-o", str(plain)]) == 0

    rewritten_manifest, plain_manifest = read_manifest(tiny_onnx_artifact), read_manifest(plain)
    rewrites = recorded(rewritten_manifest.export)
    assert rewrites["vae_decoder"] == {"upsample_transposed_conv": 3}
    assert set(rewrites) == {"vae_decoder", "unet"} and rewrites["unet"]["geglu_split"] > 0
    assert recorded(plain_manifest.export) == {}

    def ops(folder, component="vae_decoder"):
        return [node.op_type for node in onnx.load(str(folder / component / "model.onnx"), load_external_data=False).graph.node]

    assert "ConvTranspose" in ops(tiny_onnx_artifact) and "Resize" not in ops(tiny_onnx_artifact)
    assert "Resize" in ops(plain) and "ConvTranspose" not in ops(plain)
    # Each GEGLU's split is gone from the UNet graph: one Split (or a Slice pair) fewer per GEGLU.
    splits = [sum(ops(folder, "unet").count(kind) for kind in ("Split", "Slice")) for folder in (plain, tiny_onnx_artifact)]
    assert splits[0] - splits[1] >= rewrites["unet"]["geglu_split"], splits
    latents = np.random.default_rng(3).standard_normal((2, 4, 9, 7)).astype(np.float32)
    outputs = [ort.InferenceSession(str(folder / "vae_decoder" / "model.onnx")).run(None, {"latent_sample": latents})[0] for folder in (tiny_onnx_artifact, plain)]
    assert outputs[0].shape == outputs[1].shape == (2, 3, 72, 56)
    assert np.abs(outputs[0] - outputs[1]).max() <= 1e-5 * np.abs(outputs[1]).max()


def test_inspect_names_the_rewrite(tiny_onnx_artifact, capsys):
    assert main(["inspect", str(tiny_onnx_artifact), "--no-verify"]) == 0
    out = capsys.readouterr().out
    assert "vae_decoder: upsample_transposed_conv ×3" in out and "unet: geglu_split ×" in out
