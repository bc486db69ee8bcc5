"""img2img, inpainting and per-image seeds: options of the one loop, held to Diffusers.

Same checkpoint, same seed (a CPU generator), same scheduler and strength: our
final latents must match StableDiffusionImg2ImgPipeline's and
StableDiffusionInpaintPipeline's (4-channel UNet) within the txt2img parity
tolerance, which also proves the generator is drawn in Diffusers' order (an
ancestral scheduler would drift otherwise). Per-image seeds: each row of a
batch equals that image generated alone.

Diffusers turns a PIL image into a tensor with channels-last strides (a
transposed view), and PyTorch's CPU convolution then takes another kernel:
the VAE encoder's output differs from ours (contiguous) by ~2e-6, the final
latents by up to ~2.5e-5. So the strict parity tests give Diffusers the same
pixels as a contiguous tensor (measured difference: 0.0), a separate test
checks that our preprocessing of the PIL image is Diffusers' bit for bit, and
one test runs Diffusers on the PIL image itself at a looser tolerance.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import sdopt
from sdopt import GenerateRequest, SdoptError
from sdopt.cli import main
from sdopt.runtime.pipeline import Pipeline
from sdopt.runtime.schedulers import make_scheduler

from conftest import SMALL
from imaging import psnr
from init_images import contiguous, diffusers_latents, mask_image, picture

TOLERANCE = 1e-5  # as tests/test_parity_diffusers.py: fp32, same operations in the same order
PIL_TOLERANCE = 5e-5  # Diffusers on the PIL image: another conv kernel in its encoder (see above); measured 2.3e-5
BASE = {**SMALL, "steps": 5, "negative_prompt": "blurry"}


@pytest.fixture(scope="module")
def diffusers_pipes(tiny_model):
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline

    img2img = StableDiffusionImg2ImgPipeline.from_pretrained(tiny_model, safety_checker=None, requires_safety_checker=False)
    img2img.set_progress_bar_config(disable=True)
    inpaint = StableDiffusionInpaintPipeline(**img2img.components)  # the same modules
    inpaint.set_progress_bar_config(disable=True)
    return {"img2img": img2img, "inpaint": inpaint}


def _compare(ours, ref_latents, ref_images, label, tolerance=TOLERANCE):
    latent_err = float(np.abs(ours.latents - ref_latents).max())
    ours_u8 = np.stack([np.asarray(im) for im in ours.images]).astype(int)
    pixel_err = int(np.abs(ours_u8 - (ref_images * 255).round().astype(int)).max())
    print(f"{label}: max abs latent diff {latent_err:.2e}, max pixel diff {pixel_err}/255")
    assert ours.latents.shape == ref_latents.shape
    assert latent_err <= tolerance
    assert pixel_err <= 1  # the same floats, rounded the same way (1: rounding of a value at .5)


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "euler_a"])
def test_img2img_matches_diffusers(tiny_pipeline, diffusers_pipes, scheduler):
    request = GenerateRequest(**BASE, scheduler=scheduler, init_image=picture(), strength=0.6, num_images=2)
    ours = tiny_pipeline.generate(request)
    assert len(ours.timings.unet_steps) == 3  # int(5 x 0.6): strength drops the first steps
    assert ours.timings.vae_encoder > 0 and "vae_encoder_s" in ours.timings.to_dict()
    ref_latents, ref_images = diffusers_latents(diffusers_pipes["img2img"], request)
    _compare(ours, ref_latents, ref_images, f"img2img {scheduler}")


@pytest.mark.parametrize("scheduler", ["euler", "euler_a"])
def test_img2img_from_latents_matches_diffusers_given_latents(tiny_pipeline, diffusers_pipes, scheduler):
    """init_latents: Diffusers' img2img given 4-channel latents as its image (no encoder, no posterior draw), one row
    per prompt; and no VAE encoder is needed for it."""
    start = np.random.default_rng(0).standard_normal((2, 4, 8, 8)).astype(np.float32)
    request = GenerateRequest(**{**BASE, "prompt": ["a fox", "a cube"]}, scheduler=scheduler, init_latents=start, strength=0.6)
    ours = tiny_pipeline.generate(request)
    pipe = diffusers_pipes["img2img"]
    pipe.scheduler = make_scheduler(scheduler, tiny_pipeline.scheduler_config)
    theirs = pipe(prompt=request.prompts, negative_prompt=request.negative_prompts, image=torch.from_numpy(start), strength=0.6,
                  num_inference_steps=5, guidance_scale=request.guidance_scale, generator=torch.Generator().manual_seed(request.seed),
                  output_type="latent", height=64, width=64).images
    assert ours.timings.vae_encoder == 0 and len(ours.timings.unet_steps) == 3
    assert float(np.abs(ours.latents - theirs.numpy()).max()) <= TOLERANCE
    p = tiny_pipeline
    no_encoder = Pipeline(p.manifest, {k: v for k, v in p.components.items() if k != "vae_encoder"}, p.tokenizers, p.scheduler_config, folder=p.folder)
    assert np.array_equal(no_encoder.generate(request).latents, ours.latents)
    # A result's own latents, one row per image (prompts x num_images), start the same images again.
    again = tiny_pipeline.generate(GenerateRequest(**{**BASE, "prompt": ["a fox", "a cube"]}, num_images=2, scheduler=scheduler,
                                                   init_latents=np.concatenate([start, start + 1]), strength=0.6))
    assert again.latents.shape == (4, 4, 8, 8)
    with pytest.raises(SdoptError, match=r"init_latents are \(4, 8, 8\) .* a 128x64 request on this model starts from \(4, 8, 16\)"):
        tiny_pipeline.generate(GenerateRequest(**{**BASE, "width": 128}, init_latents=start[:1]))


def test_img2img_on_the_pil_image_itself_matches_diffusers(tiny_pipeline, diffusers_pipes):
    request = GenerateRequest(**BASE, scheduler="euler_a", init_image=picture(), strength=0.6)
    ref_latents, ref_images = diffusers_latents(diffusers_pipes["img2img"], request, image=request.init_image)
    _compare(tiny_pipeline.generate(request), ref_latents, ref_images, "img2img euler_a, Diffusers on the PIL image", PIL_TOLERANCE)


def test_preprocessing_and_encoder_are_diffusers_bit_for_bit(tiny_pipeline, diffusers_pipes):
    from sdopt.runtime.conditioning import mask_pixels, pixels

    inpaint = diffusers_pipes["inpaint"]
    for size in ((64, 64), (96, 80)):  # the second is resized (Lanczos) to 64 x 64
        ref = inpaint.image_processor.preprocess(picture(size=size), height=64, width=64)
        assert np.array_equal(pixels(picture(size=size), 64, 64), ref.numpy())
        ref_mask = inpaint.mask_processor.preprocess(mask_image(size), height=64, width=64)
        assert np.array_equal(mask_pixels(mask_image(size), 64, 64).numpy(), ref_mask.numpy())
    ours = tiny_pipeline.components["vae_encoder"](sample=pixels(picture(), 64, 64))["latent_parameters"]
    with torch.no_grad():
        theirs = inpaint.vae.encode(contiguous(picture()) * 2 - 1).latent_dist.parameters.numpy()
    assert np.array_equal(ours, theirs)


@pytest.mark.parametrize("scheduler,strength", [("euler", 1.0), ("euler_a", 1.0), ("euler_a", 0.6), ("ddim", 0.8)])
def test_inpaint_matches_diffusers(tiny_pipeline, diffusers_pipes, scheduler, strength):
    request = GenerateRequest(**BASE, scheduler=scheduler, init_image=picture(), mask_image=mask_image(), strength=strength, num_images=2)
    ours = tiny_pipeline.generate(request)
    ref_latents, ref_images = diffusers_latents(diffusers_pipes["inpaint"], request, mask_image=request.mask_image, height=64, width=64)
    _compare(ours, ref_latents, ref_images, f"inpaint {scheduler} strength {strength}")


def test_inpaint_keeps_the_unmasked_part(tiny_pipeline):
    """Outside the mask the final latents are the image's own latents (the last blend adds no noise)."""
    from sdopt.request import StageTimings
    from sdopt.runtime.conditioning import latent_mask, pixels, sample_posterior
    from sdopt.runtime.noise import Noise

    request = GenerateRequest(**BASE, scheduler="euler_a", init_image=picture(), mask_image=mask_image(), strength=1.0)
    ours = tiny_pipeline.generate(request).latents[0]
    parameters = tiny_pipeline.encode_images(pixels(picture(), 64, 64), StageTimings())
    image = 0.18215 * sample_posterior(parameters, Noise(request.seed), [0]).numpy()[0]  # the first draw, as in the loop
    repaint = latent_mask([mask_image()], request, (8, 8)).numpy()[0, 0] == 1
    assert 0 < repaint.sum() < repaint.size
    assert np.array_equal(ours[:, ~repaint], image[:, ~repaint])
    assert np.abs(ours[:, repaint] - image[:, repaint]).mean() > 0.1


@pytest.mark.parametrize("content", ["noise", "zeros"])
def test_masked_content_is_what_the_start_has_under_the_mask(tiny_pipeline, content):
    """AUTOMATIC1111's "latent noise" and "latent nothing" (masked_content): below strength 1 the start is the image's
    latents noised as img2img's outside the mask, and the start's own noise (or zeros) noised the same way under it."""
    from sdopt.request import StageTimings
    from sdopt.runtime import conditioning
    from sdopt.runtime.noise import Noise

    model = tiny_pipeline.manifest.model
    starts = {}
    for masked in ("original", content):
        request = GenerateRequest(**BASE, scheduler="euler", init_image=picture(), mask_image=mask_image(), strength=0.6, masked_content=masked)
        scheduler = make_scheduler("euler", tiny_pipeline.scheduler_config)
        scheduler.set_timesteps(request.steps)
        start = conditioning.start(request, scheduler, Noise(request.seed), model, lambda px: tiny_pipeline.encode_images(px, StageTimings()))
        starts[masked] = start.latents.numpy()[0]
        first = start.timesteps[:1]
    repaint = conditioning.latent_mask([mask_image()], request, (8, 8)).numpy()[0, 0] == 1
    assert np.array_equal(starts[content][:, ~repaint], starts["original"][:, ~repaint])
    # The same noise drawn again (the loop's first draw is the posterior sample, then the start's noise).
    noise = Noise(request.seed)
    noise.randn((1, 4, 8, 8))
    fresh = noise.randn((1, 4, 8, 8))
    under = fresh if content == "noise" else torch.zeros_like(fresh)
    expected = scheduler.add_noise(under, fresh, first).numpy()[0]
    np.testing.assert_allclose(starts[content][:, repaint], expected[:, repaint], rtol=1e-5, atol=1e-5)
    assert np.abs(starts[content][:, repaint] - starts["original"][:, repaint]).mean() > 0.05


def test_per_image_seeds_give_each_row_its_image_alone(tiny_pipeline):
    """A server batches several requests into one call: each row must be the image its request gets alone."""
    prompts, seeds = ["a red fox", "a lighthouse", "a red fox"], [11, 2**40 + 3, 5]
    for extra in ({}, {"init_image": picture(), "mask_image": mask_image(), "strength": 0.8}):
        batch = tiny_pipeline.generate(GenerateRequest(**{**BASE, "prompt": prompts}, scheduler="euler_a", seeds=seeds, **extra))
        worst = 0.0
        for row, (prompt, seed) in enumerate(zip(prompts, seeds)):
            alone = tiny_pipeline.generate(GenerateRequest(**{**BASE, "prompt": prompt}, scheduler="euler_a", seeds=[seed], **extra))
            worst = max(worst, float(np.abs(batch.latents[row] - alone.latents[0]).max()))
            assert psnr(batch.images[row], alone.images[0]) >= 50
        print(f"per-image seeds ({'inpaint' if extra else 'txt2img'}, euler_a): max abs latent diff batch row vs alone {worst:.2e}")
        # Only the UNet's float sums differ with the batch size (~1e-6 a call on this model), amplified by
        # the guidance scale and the sigmas; a draw out of order would differ by O(1).
        assert worst <= 1e-3
    assert not np.allclose(batch.latents[0], batch.latents[2])  # same prompt, other seed: another image


def test_one_seed_in_the_list_is_that_seed(tiny_pipeline):
    a = tiny_pipeline.generate(GenerateRequest(**{**BASE, "seed": 9}, scheduler="euler_a"))
    b = tiny_pipeline.generate(GenerateRequest(**{**BASE, "seed": 0}, scheduler="euler_a", seeds=[9]))
    assert np.array_equal(a.latents, b.latents)


def test_per_image_seeds_match_diffusers_with_a_list_of_generators(tiny_model, tiny_pipeline):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler("euler_a", dict(pipe.scheduler.config))
    # One prompt: with several, our text encoder's one batch (positives and negatives) and Diffusers' two
    # batches differ by ~5e-7 in the embeddings, ~1e-4 in the latents, seeds or no seeds (not this test's subject).
    request = GenerateRequest(**BASE, scheduler="euler_a", num_images=4, seeds=[3, 1, 4, 1])
    ours = tiny_pipeline.generate(request)
    ref = pipe(prompt=request.prompt, negative_prompt=request.negative_prompt, num_inference_steps=request.steps, height=64, width=64,
               num_images_per_prompt=4, generator=[torch.Generator("cpu").manual_seed(s) for s in request.seeds], output_type="latent").images
    err = float(np.abs(ours.latents - ref.numpy()).max())
    print(f"txt2img per-image seeds vs Diffusers' list of generators (euler_a): max abs latent diff {err:.2e}")
    assert err <= TOLERANCE
    assert np.allclose(ours.latents[1], ours.latents[3], atol=1e-4)  # same prompt, same seed


def test_an_init_image_of_another_size_is_resized_with_a_warning(tiny_pipeline):
    request = GenerateRequest(**BASE, init_image=picture(size=(96, 80)), strength=0.5)
    with pytest.warns(UserWarning, match="init_image is 96x80; it was resized to the request's 64x64"):
        result = tiny_pipeline.generate(request)
    assert result.images[0].size == (64, 64) and any("resized" in w for w in result.warnings)
    # Trimmed to the multiples of 8 below its size (all a size can be; what sdopt generate asks unasked): no warning.
    from sdopt.runtime.conditioning import resize_notices

    assert resize_notices(GenerateRequest(**{**BASE, "height": 64, "width": 64}, init_image=picture(size=(70, 66)), strength=0.5)) == []
    # An artifact built for one size refuses the image's own: the advice is to crop it (it said to ask for 96x80)
    static = resize_notices(GenerateRequest(**{**BASE, "height": 64, "width": 64}, init_image=picture(size=(96, 80)), strength=0.5),
                            {"batch": 1, "height": 64, "width": 64})
    assert static == ["init_image is 96x80; it was resized to the request's 64x64 (this artifact runs 64x64 only: crop the image to "
                      "that shape to keep its proportions)"]


# --- other backends ---------------------------------------------------------------------------
EXPORTS = {"onnxruntime": ("tiny_onnx_artifact", "onnxruntime"), "openvino": ("tiny_ov", "openvino")}


@pytest.mark.parametrize("backend", ["onnxruntime", pytest.param("openvino", marks=pytest.mark.slow)])
def test_exported_backends_agree_with_torch(request, tiny_pipeline, backend):
    fixture, library = EXPORTS[backend]
    pytest.importorskip(library)
    pipe = sdopt.load(request.getfixturevalue(fixture))
    assert "vae_encoder" in pipe.components  # the export includes the encoder
    for extra in ({"strength": 0.6}, {"mask_image": mask_image(), "strength": 1.0}):
        req = GenerateRequest(**BASE, scheduler="euler", init_image=picture(), **extra)
        value = psnr(tiny_pipeline.generate(req).images[0], pipe.generate(req).images[0])
        print(f"{backend} fp32 vs torch fp32, {'inpaint' if 'mask_image' in extra else 'img2img'}: PSNR {value:.1f} dB")
        assert value >= 40  # the floor tests/test_backends_agree.py uses


def test_a_static_batch_encoder_is_given_its_batch(tiny_pipeline):
    """A static-shape artifact's encoder takes exactly its batch, though one init image serves every row."""
    import copy

    p, seen = tiny_pipeline, []

    def encoder(**inputs):
        seen.append(inputs["sample"].shape[0])
        return p.components["vae_encoder"](**inputs)

    manifest = copy.deepcopy(p.manifest)
    manifest.static_shapes = {"batch": 2, "height": 64, "width": 64}
    static = Pipeline(manifest, {**p.components, "vae_encoder": encoder}, p.tokenizers, p.scheduler_config, folder=p.folder)
    request = GenerateRequest(**{**BASE, "steps": 2}, num_images=2, init_image=picture(), strength=1.0, scheduler="euler")
    ours, ref = static.generate(request), p.generate(request)
    assert seen == [2]
    # Only the encoder's float sums differ with its batch (~1e-6); these latents reach ~50, the difference ~2e-4.
    assert np.abs(ours.latents - ref.latents).max() <= 5e-5 * np.abs(ref.latents).max()


# --- refusals ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fields,message",
    [
        ({"init_image": "pic", "strength": 0.0}, r"strength=0\.0: must be a finite number in \(0, 1\]"),
        ({"init_image": "pic", "strength": 1.5}, r"strength=1\.5: must be"),
        ({"init_image": "pic", "strength": float("nan")}, r"strength=nan: must be"),
        ({"strength": True}, r"strength=True: must be"),
        ({"init_image": "pic", "strength": 0.1, "scheduler": "euler"}, r"strength=0\.1 with steps=5 runs no step"),
        ({"init_image": "a/path.png"}, r"init_image: must be a PIL image"),
        ({"mask_image": "mask"}, r"mask_image needs init_image"),
        ({"init_image": "pic", "mask_image": "small mask"}, r"mask_image is 32x32 but init_image is 64x64"),
        ({"init_image": ["pic", "pic", "pic"]}, r"init_image: 3 images for 1 prompts"),
        ({"init_latents": "latents 3"}, r"init_latents has 3 rows for 1 prompt\(s\) x 1 image\(s\)"),
        ({"init_latents": "latents 1", "init_image": "pic"}, r"give it or init_image, not both"),
        ({"init_latents": "latents nan"}, r"NaN or infinite"),
        ({"init_latents": "latents int"}, r"must be a float numpy array"),
        ({"init_latents": "latents 1", "strength": 0.1, "scheduler": "ddim"}, r"strength=0\.1 with steps=5 runs no step"),
        ({"seeds": [1, 2]}, r"seeds has 2 entries for 1 images"),
        ({"seeds": [-1]}, r"seeds=\[-1\]: must be a list of integers"),
        ({"seeds": 7}, r"seeds=7: must be a list of integers"),
    ],
)
def test_bad_image_fields_are_refused_naming_the_field(fields, message):
    latents = np.zeros((1, 4, 8, 8), np.float32)
    named = {"pic": picture(), "mask": mask_image(), "small mask": mask_image((32, 32)), "latents 1": latents, "latents 3": np.repeat(latents, 3, 0),
             "latents nan": latents + np.nan, "latents int": latents.astype(np.int64)}
    fields = {k: ([named.get(x, x) for x in v] if isinstance(v, list) and k != "seeds" else named.get(v, v) if isinstance(v, str) else v) for k, v in fields.items()}
    with pytest.raises(SdoptError, match=message):
        GenerateRequest(**BASE, **fields).validate()


@pytest.mark.parametrize("image", [np.zeros((64, 64, 3), np.uint8), "tensor"])
def test_an_init_image_that_is_not_a_pil_image_is_refused_by_generate(tiny_pipeline, image):
    """generate sizes the request from the init image before validating it: a numpy array's .size (an int) or a
    tensor's (a method) was unpacked as (width, height), a TypeError instead of the validator's message."""
    image = torch.zeros(3, 64, 64) if isinstance(image, str) else image
    with pytest.raises(SdoptError, match="init_image: must be a PIL image"):
        tiny_pipeline.generate(GenerateRequest(prompt="a", steps=2, init_image=image))


def test_an_artifact_without_the_encoder_says_how_to_get_it(tiny_pipeline):
    p = tiny_pipeline
    no_encoder = Pipeline(p.manifest, {k: v for k, v in p.components.items() if k != "vae_encoder"}, p.tokenizers, p.scheduler_config, folder=p.folder)
    with pytest.raises(SdoptError, match=r"no vae_encoder component .*Export it again"):
        no_encoder.generate(GenerateRequest(**BASE, init_image=picture()))
    no_encoder.generate(GenerateRequest(**{**BASE, "steps": 1}))  # text to image needs no encoder


def test_a_unet_of_another_input_width_is_refused(tiny_pipeline, tmp_path):
    import json
    import shutil

    p = tiny_pipeline
    shutil.copytree(p.folder / "unet", tmp_path / "unet", ignore=shutil.ignore_patterns("*.safetensors"))
    config = json.loads((tmp_path / "unet" / "config.json").read_text())
    (tmp_path / "unet" / "config.json").write_text(json.dumps({**config, "in_channels": 8}))
    eight = Pipeline(p.manifest, p.components, p.tokenizers, p.scheduler_config, folder=tmp_path)
    with pytest.raises(SdoptError, match="UNet takes 8 input channels; sdopt runs UNets of 4 .* or 9 .inpainting"):
        eight.generate(GenerateRequest(**BASE, init_image=picture(), mask_image=mask_image()))


# --- an inpainting checkpoint (9-channel UNet: latents, mask, masked image's latents) -------------------------
@pytest.fixture(scope="module")
def tiny_inpaint(tmp_path_factory):
    from sdopt.zoo import write_model

    return write_model("tiny-inpaint", tmp_path_factory.mktemp("zoo") / "tiny-inpaint", seed=0, progress=False)


@pytest.fixture(scope="module")
def inpaint_pipeline(tiny_inpaint):
    with sdopt.load(tiny_inpaint) as pipe:
        yield pipe


@pytest.mark.parametrize("scheduler,strength,images", [("euler", 1.0, 2), ("euler_a", 1.0, 1), ("euler_a", 0.6, 2), ("ddim", 0.8, 1)])
def test_an_inpainting_checkpoint_matches_diffusers(tiny_inpaint, inpaint_pipeline, scheduler, strength, images):
    """The UNet reads the mask and the masked image's latents every step (no blend after it), and at strength 1
    the init image is not encoded (no posterior draw before the noise): Diffusers' order, so euler_a matches too."""
    from diffusers import StableDiffusionInpaintPipeline

    pipe = StableDiffusionInpaintPipeline.from_pretrained(tiny_inpaint, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    request = GenerateRequest(**BASE, scheduler=scheduler, init_image=picture(), mask_image=mask_image(), strength=strength, num_images=images)
    ours = inpaint_pipeline.generate(request)
    assert inpaint_pipeline.manifest.model["unet_in_channels"] == 9 and len(ours.timings.unet_steps) == int(5 * strength)
    ref_latents, ref_images = diffusers_latents(pipe, request, mask_image=request.mask_image, height=64, width=64)
    _compare(ours, ref_latents, ref_images, f"inpainting checkpoint, {scheduler} strength {strength}")


def test_served_an_inpainting_checkpoint_inpaints_and_says_so(inpaint_pipeline):
    """AUTOMATIC1111's img2img with a mask on a 9-channel UNet: its info says is_using_inpainting_conditioning, as A1111's does."""
    pytest.importorskip("fastapi")
    import base64
    import io

    import httpx

    from serving import running_server

    def b64(image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode()

    with running_server(inpaint_pipeline) as (url, _):
        body = {"prompt": "a red apple", "init_images": [b64(picture())], "mask": b64(mask_image()), "steps": 3, "width": 64, "height": 64,
                "seed": 1, "denoising_strength": 1.0, "sampler_name": "Euler"}
        answer = httpx.post(url + "/sdapi/v1/img2img", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    assert json.loads(answer.json()["info"])["is_using_inpainting_conditioning"] is True


def test_optimize_measures_an_inpainting_checkpoint_inpainting_only(tiny_inpaint, tmp_path, capsys):
    """Refused before any candidate is built (its bench rows would all be refused), saying what to add; nothing written."""
    assert main(["optimize", str(tiny_inpaint), "-o", str(tmp_path / "best"), "--quick", "-q"]) == 2
    assert "give --init-image and --mask" in capsys.readouterr().err
    assert not (tmp_path / "best").exists() and not (tmp_path / "best.work").exists()
    # Calibrating on the image the candidates are judged on would flatter their PSNR: refused, by content, not name.
    picture(3).save(tmp_path / "measured.png")
    (tmp_path / "photos").mkdir()
    picture(3).save(tmp_path / "photos" / "copy.png")
    mask_image().save(tmp_path / "mask.png")
    assert main(["optimize", str(tiny_inpaint), "-o", str(tmp_path / "best"), "--quick", "-q", "--init-image", str(tmp_path / "measured.png"),
                 "--mask", str(tmp_path / "mask.png"), "--calibration-images", str(tmp_path / "photos")]) == 2
    assert "--calibration-images holds the image the candidates are judged on (--init-image: copy.png)" in capsys.readouterr().err
    assert not (tmp_path / "best").exists()


def test_an_inpainting_checkpoint_needs_an_image_and_a_mask(inpaint_pipeline, tiny_inpaint, tmp_path, capsys):
    for extra in ({}, {"init_image": picture(), "strength": 0.6}):  # text-to-image, img2img
        with pytest.raises(SdoptError, match="inpainting checkpoint .* needs init_image and mask_image"):
            inpaint_pipeline.generate(GenerateRequest(**BASE, **extra))
    assert main(["generate", str(tiny_inpaint), "-p", "x", "--steps", "2", "-o", str(tmp_path / "x.png"), "-q"]) == 2
    assert "--init-image and --mask" in capsys.readouterr().err and not (tmp_path / "x.png").exists()


@pytest.fixture(scope="module")
def inpaint_onnx(tiny_inpaint, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from sdopt.export.run import export

    out = tmp_path_factory.mktemp("onnx") / "tiny-inpaint-onnx"
    return out, export(tiny_inpaint, "onnx", out)


def test_an_inpainting_checkpoint_exports_and_agrees(inpaint_onnx, inpaint_pipeline):
    out, manifest = inpaint_onnx
    assert all(p["passed"] for p in manifest.parity.values())  # traced and checked with 9-channel samples
    request = GenerateRequest(**BASE, scheduler="euler", init_image=picture(), mask_image=mask_image(), strength=0.8)
    with sdopt.load(out) as pipe:
        quality = psnr(inpaint_pipeline.generate(request).images[0], pipe.generate(request).images[0])
    print(f"inpainting checkpoint, ONNX vs torch: {quality:.1f} dB")
    assert quality >= 40


def test_the_bench_runs_inpainting_requests(tiny_inpaint, inpaint_onnx, tmp_path, capsys):
    """sdopt bench --init-image/--mask: every artifact inpaints the same image under the same mask (an inpainting
    checkpoint takes nothing else), quality against the reference's inpainting; bad image options refused up front."""
    picture().save(tmp_path / "photo.png")
    mask_image().save(tmp_path / "mask.png")
    common = ["--reference", str(tiny_inpaint), "--steps", "3", "--height", "64", "--width", "64", "--seeds", "0", "--warmup", "0",
              "--runs", "1", "--scheduler", "euler", "-q"]
    assert main(["bench", str(inpaint_onnx[0]), *common, "--init-image", str(tmp_path / "photo.png"), "--mask", str(tmp_path / "mask.png"),
                 "--strength", "0.7", "-o", str(tmp_path / "r")]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["request"]["init_image"] == "photo.png" and report["request"]["mask_image"] == "mask.png" and report["request"]["strength"] == 0.7
    rows = {a["name"]: a for a in report["artifacts"]}
    assert all(a["status"] == "ok" for a in rows.values()), [a.get("error") for a in rows.values()]
    assert rows["tiny-inpaint-onnx"]["quality"]["psnr_db"] >= 40
    assert "inpainting photo.png under the mask mask.png at strength 0.7" in (tmp_path / "r" / "report.md").read_text()
    capsys.readouterr()
    assert main(["bench", str(inpaint_onnx[0]), *common, "--mask", str(tmp_path / "mask.png"), "-o", str(tmp_path / "x")]) == 2
    assert "--mask needs --init-image" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["bench", str(inpaint_onnx[0]), *common, "--init-image", str(tmp_path / "nothing.png"), "-o", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--init-image" in err and "no such file" in err


def test_to_dict_records_images_by_size_not_pixels():
    data = GenerateRequest(**BASE, init_image=picture(size=(96, 80)), mask_image=mask_image((96, 80)), seeds=[4]).to_dict()
    assert data["init_image"] == {"size": [96, 80], "mode": "RGB"} and data["mask_image"] == {"size": [96, 80], "mode": "L"}
    assert data["seeds"] == [4] and data["strength"] == 0.8 and data["prompt"] == BASE["prompt"]


# --- the command line -------------------------------------------------------------------------
def test_cli_inpaint_writes_the_python_api_image(tiny_model, tiny_pipeline, tmp_path):
    picture(size=(64, 72)).save(tmp_path / "in.png")
    mask_image((64, 72)).save(tmp_path / "mask.png")
    args = ["generate", str(tiny_model), "-p", BASE["prompt"], "--seed", "7", "--steps", "4", "--scheduler", "euler_a", "-q",
            "--init-image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"), "--strength", "0.75", "-o", str(tmp_path / "out.png")]
    assert main(args) == 0
    out = Image.open(tmp_path / "out.png")
    assert out.size == (64, 72)  # without --height/--width, the init image's size
    request = GenerateRequest(prompt=BASE["prompt"], seed=7, steps=4, scheduler="euler_a", height=72, width=64,
                              init_image=Image.open(tmp_path / "in.png"), mask_image=Image.open(tmp_path / "mask.png"), strength=0.75)
    assert np.array_equal(np.asarray(out), np.asarray(tiny_pipeline.generate(request).images[0]))


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--init-image", "/nonexistent/in.png"], "--init-image /nonexistent/in.png: no such file"),
        (["--init-image", "NOT_AN_IMAGE"], "not an image sdopt can read"),
        # named by their flags (they named the Python fields mask_image, init_image, strength=2.0)
        (["--mask", "IMAGE"], "--mask needs --init-image"),
        (["--init-image", "IMAGE", "--strength", "2"], "--strength 2.0: must be a finite number in (0, 1]"),
        (["--init-image", "IMAGE", "--mask", "SMALL"], "--mask is 32x32 but --init-image is 64x64"),
        (["--init-image", "IMAGE", "--strength", "0.1"], "--strength 0.1 with --steps 2 runs no step (int(steps x strength) = 0): raise --strength or --steps"),
    ],
)
def test_cli_bad_image_arguments(tiny_model, tmp_path, capsys, extra, message):
    picture().save(tmp_path / "in.png")
    picture().resize((32, 32)).convert("L").save(tmp_path / "small.png")
    (tmp_path / "notes.png").write_text("not a picture")
    extra = [{"IMAGE": str(tmp_path / "in.png"), "NOT_AN_IMAGE": str(tmp_path / "notes.png"), "SMALL": str(tmp_path / "small.png")}.get(e, e) for e in extra]
    args = ["generate", str(tiny_model), "-p", "x", "--steps", "2", "--height", "64", "--width", "64", "-o", str(tmp_path / "o.png")]
    assert main(args + extra) == 2
    assert message in capsys.readouterr().err


def test_calibration_masks_are_drawn_from_the_seed():
    from sdopt.quant.inpainting_calibration import calibration_mask

    masks = [np.array(calibration_mask(seed, 64, 48)) for seed in range(8)]
    assert all(m.shape == (64, 48) and set(np.unique(m)) <= {0, 255} for m in masks)
    assert np.array_equal(masks[5], np.array(calibration_mask(5, 64, 48)))  # the same seed, the same mask
    for seed, m in enumerate(masks):
        covered = (m == 255).mean()
        assert covered == 1.0 if seed % 4 == 3 else 0.03 < covered < 0.8, (seed, covered)  # whole image a quarter of the time
    assert len({m.tobytes() for m in masks}) == 7  # seeds 3 and 7 both the whole image


def test_calibration_repaints_images_of_another_size_than_the_artifacts(tiny_inpaint, tmp_path):
    """A 100x77 photo in --calibration-images was refused after the export ('mask_image is 64x64 but init_image is
    100x77: give a mask of the image's size'), a mask sdopt draws itself: the photo is resized to the run's size."""
    from sdopt.quant.calibration import record_inputs

    picture(3, size=(100, 77)).save(tmp_path / "wide.png")
    samples = record_inputs(tiny_inpaint, ("a red apple",), ["unet"], images=(str(tmp_path / "wide.png"),), progress=False)
    assert samples["unet"] and samples["unet"][0]["sample"].shape[-2:] == (8, 8)  # 64x64 latents: the model's size


@pytest.mark.slow
def test_an_inpainting_checkpoint_calibrates_int8_static_on_images_it_repaints(tiny_inpaint, tiny_model, tmp_path, capsys):
    """sdopt quantize --scheme int8-static cannot calibrate an inpainting checkpoint from text (it takes nothing but
    inpainting requests): it needs --calibration-images, repaints them under masks drawn per run, and inpaints like its
    float source; a text-to-image checkpoint refuses the option. Refusals come before any work and leave no output."""
    pytest.importorskip("nncf")
    from sdopt.export.run import export
    from sdopt.manifest import read_manifest
    from sdopt.quant.inpainting_calibration import check_calibration_images

    source = tmp_path / "inpaint-ov"
    export(tiny_inpaint, "openvino", source, height=64, width=64, batch=1)
    photos = tmp_path / "photos"
    photos.mkdir()
    for seed in (1, 2):
        picture(seed).save(photos / f"p{seed}.png")
    quantize = ["quantize", "--backend", "nncf", "--scheme", "int8-static"]
    capsys.readouterr()
    assert main([*quantize, str(source), "-o", str(tmp_path / "q0")]) == 2
    assert "inpainting checkpoint" in capsys.readouterr().err and not (tmp_path / "q0").exists()
    with pytest.raises(SdoptError, match="--calibration-images is for inpainting checkpoints"):  # what quantize checks first
        check_calibration_images(tiny_model, read_manifest(tiny_model), (str(photos / "p1.png"),))
    assert main([*quantize, str(source), "--calibration-images", str(tmp_path / "none"), "-o", str(tmp_path / "q2")]) == 2
    assert "no such file or folder" in capsys.readouterr().err

    out = tmp_path / "inpaint-int8"
    (tmp_path / "prompts.txt").write_text("a red apple\na blue car on a road\na cat on a sofa\n")  # 3 runs: seconds, not the built-in 8
    assert main([*quantize, str(source), "--calibration-images", str(photos), "--calibration-prompts", str(tmp_path / "prompts.txt"),
                 "--components", "unet", "-o", str(out)]) == 0
    unet = json.loads((out / "sdopt.json").read_text())["components"]["unet"]["quantization"]
    assert unet["scheme"] == "int8-static" and unet["calibration"]["inpainting"]["images"] == ["p1.png", "p2.png"]
    assert unet["calibration"]["samples"] == 3 * 5  # every UNet call of 3 runs (PNDM: 4 steps, 5 calls)
    # A bench that repaints one of those images says its quality is flattered (the images are known by content).
    from types import SimpleNamespace

    from sdopt.bench.assemble import _calibrated_on_the_measured_image
    from sdopt.file_reading import sha256_file

    assert unet["calibration"]["inpainting"]["sha256"] == [sha256_file(photos / "p1.png"), sha256_file(photos / "p2.png")]
    rows = [SimpleNamespace(name="int8", manifest=read_manifest(out)), SimpleNamespace(name="fp32", manifest=read_manifest(source))]
    picture(2).save(tmp_path / "same-as-p2.png")
    picture(9).save(tmp_path / "other.png")
    assert _calibrated_on_the_measured_image(rows, SimpleNamespace(init_image=str(tmp_path / "same-as-p2.png"))) == [
        "int8: its unet calibrated on the image this bench repaints (same-as-p2.png), so its quality here is measured on what it was "
        "fitted to; bench on another image, or quantize with other --calibration-images"]
    assert _calibrated_on_the_measured_image(rows, SimpleNamespace(init_image=str(tmp_path / "other.png"))) == []
    request = GenerateRequest(**{**SMALL, "scheduler": "euler"}, init_image=picture(7), mask_image=mask_image(), strength=1.0)
    with sdopt.load(source) as fp32, sdopt.load(out) as int8:
        quality = psnr(fp32.generate(request).images[0], int8.generate(request).images[0])
    print(f"inpainting checkpoint, NNCF int8-static (calibrated repainting 2 images) vs its fp32 OpenVINO source: {quality:.1f} dB")
    assert quality >= 30
