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


def test_exports_record_the_rewrite_and_no_rewrites_traces_the_checkpoint_as_it_is(tiny_onnx_artifact, tiny_onnx_plain):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    plain = tiny_onnx_plain

    rewritten_manifest, plain_manifest = read_manifest(tiny_onnx_artifact), read_manifest(plain)
    rewrites = recorded(rewritten_manifest.export)
    assert rewrites["vae_decoder"] == {"upsample_transposed_conv": 3, "attention_fused": 1}  # the ONNX target's own default too
    assert set(rewrites) == {"vae_decoder", "vae_encoder", "unet"} and rewrites["unet"]["geglu_split"] > 0
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
    assert "vae_decoder: attention_fused ×1, upsample_transposed_conv ×3" in out and "unet: attention_fused ×12, geglu_split ×" in out


def _transformer(**overrides):
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    torch.manual_seed(2)
    config = dict(num_attention_heads=2, attention_head_dim=4, in_channels=8, cross_attention_dim=6, norm_num_groups=4)
    return Transformer2DModel(**{**config, **overrides}).eval()


@pytest.mark.parametrize("linear_projection,layers", [(False, 1), (True, 2)])
def test_a_channels_first_transformer_gives_what_diffusers_gives(linear_projection, layers):
    """SD 1.x's form (1x1 conv projections) and SD 2/XL's (linear projections, several blocks)."""
    from sdopt.rewrite.channels_first import ChannelsFirstTransformer2D, rewrite_transformers

    holder = torch.nn.ModuleList([_transformer(use_linear_projection=linear_projection, num_layers=layers)])
    x, context = torch.randn(2, 8, 5, 7), torch.randn(2, 11, 6)
    with torch.no_grad():
        before = holder[0](x, encoder_hidden_states=context, return_dict=False)[0]
        assert rewrite_transformers(holder) == 1 and isinstance(holder[0], ChannelsFirstTransformer2D)
        after = holder[0](x, encoder_hidden_states=context, return_dict=False)[0]
        assert torch.equal(holder[0](x, encoder_hidden_states=context).sample, after)
        assert rewrite_transformers(holder) == 1  # counted where it is, not rewritten twice
        with pytest.raises(ValueError, match="attention masks"):
            holder[0](x, encoder_hidden_states=context, attention_mask=torch.ones(2, 35))
    assert after.shape == before.shape == (2, 8, 5, 7)
    assert (after - before).abs().max().item() <= 1e-5 * before.abs().max().item()


def test_only_plain_transformers_go_channels_first():
    from diffusers.models.attention_processor import AttnProcessor2_0

    from sdopt.rewrite.channels_first import rewrite_transformers

    class Custom(AttnProcessor2_0):  # a user's processor may compute anything
        pass

    custom = _transformer()
    custom.transformer_blocks[0].attn2.set_processor(Custom())
    others = torch.nn.ModuleList([
        custom,
        _transformer(only_cross_attention=True),  # no self-attention
        _transformer(norm_type="ada_norm", num_embeds_ada_norm=10),  # timestep-conditioned norms
        _transformer(activation_fn="gelu"),  # not a GEGLU feed-forward
    ])
    assert rewrite_transformers(others) == 0


def test_the_sd_unets_go_channels_first_whole(tiny_model, sdxl_tiny):
    """Every transformer of the SD 1 and SDXL toys is rewritten and the UNets' outputs stay the same."""
    import copy

    from diffusers import UNet2DConditionModel
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    from sdopt.rewrite import apply_rewrites

    for folder in (tiny_model, sdxl_tiny):
        unet = UNet2DConditionModel.from_pretrained(folder / "unet").eval()
        config, transformers = unet.config, sum(type(m) is Transformer2DModel for m in unet.modules())
        rewritten = copy.deepcopy(unet)
        applied = apply_rewrites("unet", rewritten, ("transformer_channels_first",))
        # It goes first and takes the GEGLUs in with it: nothing is left for the default split.
        assert applied == {"transformer_channels_first": transformers}, applied
        torch.manual_seed(4)
        x, t = torch.randn(2, config.in_channels, 8, 8), torch.tensor([500.0, 20.0])
        context = torch.randn(2, 77, config.cross_attention_dim)
        extra = {}
        if config.addition_embed_type == "text_time":
            extra = {"added_cond_kwargs": {"text_embeds": torch.randn(2, config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim),
                                           "time_ids": torch.rand(2, 6) * 256}}
        with torch.no_grad():
            before, after = (m(x, t, context, **extra).sample for m in (unet, rewritten))
        assert (after - before).abs().max().item() <= 1e-5 * before.abs().max().item(), folder


def test_an_export_takes_an_optional_rewrite_by_name_and_records_it(tiny_model, tmp_path, capsys):
    pytest.importorskip("openvino")
    out = tmp_path / "cf"
    assert main(["export", str(tiny_model), "--to", "openvino", "--rewrite", "transformer_channels_first", "-o", str(out)]) == 0
    rewrites = recorded(read_manifest(out).export)
    assert set(rewrites["unet"]) == {"transformer_channels_first"} and rewrites["unet"]["transformer_channels_first"] > 0
    assert rewrites["vae_decoder"] == {"upsample_transposed_conv": 3}  # the defaults still apply
    capsys.readouterr()
    assert main(["export", str(tiny_model), "--to", "openvino", "--rewrite", "transformer_channels_first", "--no-rewrites", "-o", str(tmp_path / "x")]) == 2
    assert "give one of them" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_the_python_api_refuses_an_unknown_optional_rewrite_before_any_work(tiny_model, tmp_path):
    from sdopt.errors import SdoptError
    from sdopt.export.run import export

    with pytest.raises(SdoptError, match="not an optional rewrite; known: attention_by_head, attention_fused, transformer_channels_first"):
        export(tiny_model, "onnx", tmp_path / "x", rewrite=["channels_last"])
    with pytest.raises(SdoptError, match="give one of them"):
        export(tiny_model, "onnx", tmp_path / "x", rewrite=["transformer_channels_first"], no_rewrites=True)
    assert not list(tmp_path.iterdir())


def test_the_bench_counts_the_plain_decoder_where_int8_quantizing_undid_the_rewrite(tiny_model, tiny_onnx_artifact):
    """ONNX Runtime's int8-static quantizer turns the decoder's transposed convolutions back into upsample + 3x3
    convolution (quantization.undone_rewrites) while export.rewrites still records them: the bench counted the
    rewritten form's FLOPs (the tiny decoder at 64²: 251,152,384 of the 306,202,624 its graph computes), so the int8
    decoder's GFLOP/s and "of peak" read 18% low."""
    import copy

    from sdopt.bench.artifacts import Entry
    from sdopt.bench.assemble import _stage_flops
    from sdopt.bench.flops import vae_decoder_flops
    from sdopt.bench.settings import BenchSettings

    settings = BenchSettings.resolve(None, prompts=["a fox"], seeds=[0], steps=1, height=64, width=64)
    reference = Entry("tiny", tiny_model, read_manifest(tiny_model))
    exported = read_manifest(tiny_onnx_artifact)
    quantized = copy.deepcopy(exported)
    quantized.components["vae_decoder"].quantization = {"scheme": "int8-static", "backend": "onnxruntime",
                                                        "undone_rewrites": {"upsample_transposed_conv": 3}}
    config, latent = tiny_model / "vae" / "config.json", (1, 4, 8, 8)
    count = lambda manifest: _stage_flops(Entry("x", tiny_onnx_artifact, manifest), reference, settings, 1)["vae_decoder"]  # noqa: E731
    assert count(exported) == vae_decoder_flops(config, latent, rewritten=True) < vae_decoder_flops(config, latent)
    assert count(quantized) == vae_decoder_flops(config, latent)
