"""Every image carries its generation parameters as AUTOMATIC1111 writes them (sdopt.infotext): in the PNGs of
sdopt generate and of sdopt serve, read back by /sdapi/v1/png-info, and enough to make the image again through
AUTOMATIC1111's ``infotext`` request field."""

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from sdopt.cli import main
from sdopt.infotext import format_parameters, parse_parameters

# What AUTOMATIC1111 1.10 writes (its own keys, a prompt with commas and a weight in parentheses).
A1111_TEXT = ("masterpiece, a (red:1.2) lighthouse at dawn\nNegative prompt: blurry, lowres\n"
              "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234567, Size: 512x768, "
              'Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Lora hashes: "detail: 0a1b2c3d4e5f", Version: v1.10.1')


def test_parameters_read_as_automatic1111_reads_them():
    parsed = parse_parameters(A1111_TEXT)
    assert parsed["Prompt"] == "masterpiece, a (red:1.2) lighthouse at dawn" and parsed["Negative prompt"] == "blurry, lowres"
    assert (parsed["Steps"], parsed["Sampler"], parsed["Schedule type"], parsed["CFG scale"], parsed["Seed"]) == ("28", "DPM++ 2M", "Karras", "6.5", "1234567")
    assert (parsed["Size-1"], parsed["Size-2"], parsed["Lora hashes"]) == ("512", "768", "detail: 0a1b2c3d4e5f")
    # Values with commas, colons, quotes and line breaks are JSON-quoted on the way out and back in one piece.
    tricky = {"Steps": 4, "Model": 'my, "odd": model', "Loras": "a:0.5, b:1", "Unicode": "lumière"}
    text = format_parameters("line one\nline two, with: colons", "no\nblur", tricky)
    back = parse_parameters(text)
    assert back["Prompt"] == "line one\nline two, with: colons" and back["Negative prompt"] == "no\nblur"
    assert {k: back[k] for k in tricky} == {k: str(v) for k, v in tricky.items()}
    assert parse_parameters("just a prompt, no parameters") == {"Prompt": "just a prompt, no parameters", "Negative prompt": ""}


def test_generate_writes_the_parameters_into_the_png(tiny_model, tmp_path, capsys):
    from sdopt.manifest import read_manifest

    out = tmp_path / "cross.png"
    prompt = "a cross, red: big"
    assert main(["generate", str(tiny_model), "-p", prompt, "-n", "blurry", "--steps", "3", "--seed", "7", "--guidance", "6",
                 "--height", "64", "--width", "64", "-q", "-o", str(out)]) == 0
    parsed = parse_parameters(Image.open(out).info["parameters"])
    assert parsed["Prompt"] == prompt and parsed["Negative prompt"] == "blurry"
    assert (parsed["Steps"], parsed["CFG scale"], parsed["Seed"], parsed["Size-1"], parsed["Size-2"]) == ("3", "6", "7", "64", "64")
    # The tiny model's own scheduler is SD 1.5's PNDM, which --scheduler pndm ("PLMS") builds alike.
    assert parsed["Sampler"] == "PLMS" and "Scheduler" not in parsed
    assert parsed["Model"] == tiny_model.name and parsed["Model hash"] == read_manifest(tiny_model).artifact_id[:10]
    assert parsed["Backend"] == "torch fp32" and parsed["Version"].startswith("sdopt ")
    # Two images of one seed: each says it is made again only with its batch.
    assert main(["generate", str(tiny_model), "-p", "x", "--steps", "2", "--num-images", "2", "--scheduler", "dpmpp_2m_karras",
                 "--height", "64", "--width", "64", "-q", "-o", str(tmp_path / "pair.png")]) == 0
    second = parse_parameters(Image.open(tmp_path / "pair-1.png").info["parameters"])
    assert (second["Batch size"], second["Batch pos"], second["Sampler"], second["Schedule type"]) == ("2", "1", "DPM++ 2M", "Karras")
    # Made again from the second, the batch comes back whole: which file is the image given was said nowhere.
    capsys.readouterr()
    assert main(["generate", str(tiny_model), "--parameters-from", str(tmp_path / "pair-1.png"), "-o", str(tmp_path / "again.png")]) == 0
    assert f"pair-1.png was image 1 of its batch: {tmp_path / 'again-1.png'}" in capsys.readouterr().err
    assert np.array_equal(np.asarray(Image.open(tmp_path / "again-1.png")), np.asarray(Image.open(tmp_path / "pair-1.png")))


def test_generate_makes_an_image_again_from_its_png(tiny_model, tiny_onnx_artifact, tmp_path, capsys):
    """sdopt generate --parameters-from PNG: the same pixels from the same artifact with no other flag; a flag given
    wins; the ONNX artifact makes the same request (its own rounding); an image without parameters is refused."""
    first = tmp_path / "first.png"
    assert main(["generate", str(tiny_model), "-p", "a blue circle", "-n", "grey", "--steps", "3", "--seed", "11", "--guidance", "5",
                 "--scheduler", "dpmpp_2m_karras", "--height", "64", "--width", "72", "-q", "-o", str(first)]) == 0
    again = tmp_path / "again.png"
    assert main(["generate", str(tiny_model), "--parameters-from", str(first), "-q", "-o", str(again)]) == 0
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(first)))
    assert Image.open(again).info["parameters"] == Image.open(first).info["parameters"]

    other_seed = tmp_path / "seed12.png"
    assert main(["generate", str(tiny_model), "--parameters-from", str(first), "--seed", "12", "-q", "-o", str(other_seed)]) == 0
    changed = parse_parameters(Image.open(other_seed).info["parameters"])
    assert (changed["Seed"], changed["Prompt"], changed["Sampler"], changed["Schedule type"], changed["Size-1"]) == ("12", "a blue circle", "DPM++ 2M", "Karras", "72")
    assert not np.array_equal(np.asarray(Image.open(other_seed)), np.asarray(Image.open(first)))

    onnx = tmp_path / "onnx.png"
    assert main(["generate", str(tiny_onnx_artifact), "--parameters-from", str(first), "-q", "-o", str(onnx)]) == 0
    theirs = parse_parameters(Image.open(onnx).info["parameters"])
    assert theirs["Backend"].startswith("onnxruntime") and theirs["Model hash"] != parse_parameters(Image.open(first).info["parameters"])["Model hash"]
    assert {k: theirs[k] for k in ("Prompt", "Negative prompt", "Steps", "Seed", "CFG scale", "Size-1", "Size-2", "Sampler")} == \
        {k: changed[k] for k in ("Prompt", "Negative prompt", "Steps", "CFG scale", "Size-1", "Size-2", "Sampler")} | {"Seed": "11"}
    diff = np.abs(np.asarray(Image.open(onnx), dtype=np.int16) - np.asarray(Image.open(first), dtype=np.int16)).max()
    assert diff <= 2, f"ONNX Runtime's image differs from torch's by {diff} levels"

    # An AUTOMATIC1111 PNG: its request (its Clip skip too), and a warning for what the request does not take (its LoRAs).
    a1111 = tmp_path / "a1111.png"
    info = PngInfo()
    info.add_text("parameters", A1111_TEXT.replace("Version:", "Clip skip: 2, Version:"))
    Image.new("RGB", (8, 8)).save(a1111, pnginfo=info)
    capsys.readouterr()
    assert main(["generate", str(tiny_model), "--parameters-from", str(a1111), "--steps", "2", "--height", "64", "--width", "64",
                 "-o", str(tmp_path / "from-a1111.png")]) == 0
    assert "says Lora hashes, which this request does not take: the image will differ" in capsys.readouterr().err
    made = parse_parameters(Image.open(tmp_path / "from-a1111.png").info["parameters"])
    assert (made["Seed"], made["Sampler"], made["Schedule type"], made["CFG scale"], made["Steps"], made["Clip skip"]) == \
        ("1234567", "DPM++ 2M", "Karras", "6.5", "2", "2")

    (tmp_path / "plain.png").write_bytes(_plain_png())
    capsys.readouterr()
    assert main(["generate", str(tiny_model), "--parameters-from", str(tmp_path / "plain.png"), "-o", str(tmp_path / "never.png")]) == 2
    assert "carries no generation parameters" in capsys.readouterr().err and not (tmp_path / "never.png").exists()
    assert main(["generate", str(tiny_model), "-o", str(tmp_path / "never.png")]) == 2
    assert "give the prompt, --prompt TEXT" in capsys.readouterr().err


def test_an_inpainted_image_is_made_again_without_its_mask(tiny_model, tmp_path, capsys):
    """--parameters-from an inpainted PNG (its Masked content: latent noise) with --init-image and no --mask: img2img, with
    a warning, as an img2img PNG without --init-image makes a text-to-image picture (without either, the same line drops
    it). Its Masked content was refused as if typed: "masked_content='noise' is what inpainting starts from under the
    mask: give mask_image with it", after that warning said a picture would be made."""
    inpainted = tmp_path / "inpainted.png"
    info = PngInfo()
    info.add_text("parameters", "a red boat\nSteps: 2, Sampler: Euler, CFG scale: 7.5, Seed: 3, Size: 64x64, Denoising strength: 0.8, "
                                "Masked content: latent noise, Model: tiny, Backend: torch fp32, Version: sdopt 0.1.0")
    Image.new("RGB", (64, 64), "grey").save(inpainted, pnginfo=info)
    capsys.readouterr()
    assert main(["generate", str(tiny_model), "--parameters-from", str(inpainted), "--init-image", str(inpainted), "-q",
                 "-o", str(tmp_path / "i2i.png")]) == 0
    assert "was inpainted (its Masked content); without --mask this makes an img2img picture" in capsys.readouterr().err
    assert "Denoising strength: 0.8" in Image.open(tmp_path / "i2i.png").info["parameters"]


def test_an_image_made_again_from_its_parameters(tiny_model, tiny_pipeline, tmp_path):
    """sdopt generate's PNG -> /sdapi/v1/png-info -> a txt2img request with that infotext alone: the same pixels; a field
    the request sets wins over the infotext's; the API's own PNGs carry their parameters."""
    pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'sdopt[serve]'")
    httpx = pytest.importorskip("httpx", reason="pip install 'sdopt[serve-test]'")
    from serving import png, running_server, wait_for

    out = tmp_path / "made.png"
    assert main(["generate", str(tiny_model), "-p", "a green square", "-n", "noise", "--steps", "3", "--seed", "5",
                 "--scheduler", "euler_a", "--height", "64", "--width", "64", "-q", "-o", str(out)]) == 0
    with running_server(tiny_pipeline) as (url, app):
        info = httpx.post(url + "/sdapi/v1/png-info", json={"image": base64.b64encode(out.read_bytes()).decode()}).json()
        assert info["parameters"]["Sampler"] == "Euler a" and info["parameters"]["Seed"] == "5" and info["info"].startswith("a green square\n")
        again = httpx.post(url + "/sdapi/v1/txt2img", json={"infotext": info["info"]}, timeout=60).json()
        image = png(again["images"][0])
        assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(Image.open(out).convert("RGB")))
        assert json.loads(again["info"])["sdopt_ignored"] == [] and json.loads(again["info"])["infotexts"] == [image.info["parameters"]]
        assert parse_parameters(image.info["parameters"])["Seed"] == "5"  # the API's PNG says how it was made

        job = httpx.post(url + "/v1/jobs", json={"prompt": "x", "width": 64, "height": 64, "steps": 2, "seed": 3}).json()
        done = wait_for(lambda: (j := httpx.get(f"{url}/v1/jobs/{job['id']}").json())["status"] not in ("queued", "running") and j)
        assert done["infotexts"][0] == png(done["images"][0]).info["parameters"] and "Seed: 3," in done["infotexts"][0]
        spec = lambda: list(app.state.worker.jobs.values())[-1].spec  # noqa: E731
        httpx.post(url + "/sdapi/v1/txt2img", json={"infotext": info["info"], "steps": 2, "seed": 9}, timeout=60).raise_for_status()
        assert (spec().steps, spec().seed, spec().scheduler, spec().prompt) == (2, 9, "euler_a", "a green square")
        # An AUTOMATIC1111 image's parameters: what sdopt takes applies, what it does not is named.
        answer = httpx.post(url + "/sdapi/v1/txt2img", json={"infotext": A1111_TEXT, "width": 64, "height": 64, "steps": 2}, timeout=60).json()
        assert (spec().scheduler, spec().seed, spec().guidance_scale, spec().negative_prompt) == ("dpmpp_2m_karras", 1234567, 6.5, "blurry, lowres")
        assert json.loads(answer["info"])["sdopt_ignored"] == ["infotext: Lora hashes"]
        bad = httpx.post(url + "/sdapi/v1/txt2img", json={"infotext": "x\nSteps: many, Sampler: Euler, Seed: 1"}, timeout=60)
        assert bad.status_code == 422 and "infotext: Steps: 'many' is not an integer" in bad.text
        plain = httpx.post(url + "/sdapi/v1/png-info", json={"image": base64.b64encode(_plain_png()).decode()}).json()
        assert plain == {"info": "", "items": {}, "parameters": {}}
        jpeg = tmp_path / "made.jpg"  # a JPEG's EXIF, as AUTOMATIC1111's PNG Info reads it
        assert main(["generate", str(tiny_model), "-p", "a green square", "--steps", "2", "--height", "64", "--width", "64",
                     "-q", "-o", str(jpeg)]) == 0
        read = httpx.post(url + "/sdapi/v1/png-info", json={"image": base64.b64encode(jpeg.read_bytes()).decode()}).json()
        assert read["info"].startswith("a green square\n") and read["parameters"]["Steps"] == "2" and read["items"] == {}


def _user_comment_type(path) -> int:
    """The TIFF type of the EXIF UserComment entry in an image file: read from its bytes, not through PIL, which
    writes and reads BYTE and UNDEFINED alike."""
    import struct

    data = Image.open(path).info["exif"]
    data = data[6:] if data.startswith(b"Exif\0\0") else data
    order = "<" if data[:2] == b"II" else ">"

    def entries(at):
        (count,) = struct.unpack_from(order + "H", data, at)
        return {tag: (kind, value) for tag, kind, _, value in
                (struct.unpack_from(order + "HHII", data, at + 2 + 12 * i) for i in range(count))}

    (first,) = struct.unpack_from(order + "I", data, 4)
    return entries(entries(first)[0x8769][1])[0x9286][0]


def test_a_jpeg_or_webp_carries_its_parameters_as_automatic1111_writes_them(tiny_model, tmp_path, capsys):
    """-o x.jpg / x.webp wrote no parameters (PIL takes pnginfo for PNGs only). Now the EXIF UserComment, typed
    UNDEFINED with the UNICODE prefix (piexif, AUTOMATIC1111's reader, reads a BYTE entry as numbers), which
    --parameters-from and /sdapi/v1/png-info read back; an AUTOMATIC1111 JPEG gives its request too."""
    common = ["-p", "a red square", "--steps", "2", "--seed", "4", "--height", "64", "--width", "64", "-q"]
    assert main(["generate", str(tiny_model), *common, "-o", str(tmp_path / "a.png")]) == 0
    text = Image.open(tmp_path / "a.png").info["parameters"]
    for name in ("a.jpg", "a.webp"):
        assert main(["generate", str(tiny_model), *common, "-o", str(tmp_path / name)]) == 0
        assert _user_comment_type(tmp_path / name) == 7  # UNDEFINED
        comment = Image.open(tmp_path / name).getexif().get_ifd(0x8769)[0x9286]
        assert comment == b"UNICODE\0" + text.encode("utf-16-be")
        again = tmp_path / f"again-{name}.png"
        assert main(["generate", str(tiny_model), "--parameters-from", str(tmp_path / name), "-q", "-o", str(again)]) == 0
        assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(tmp_path / "a.png")))
    # One AUTOMATIC1111 wrote (piexif: a big-endian EXIF of its own); read as its PNG's would be.
    exif = (b"Exif\0\0MM\0*\0\0\0\x08\0\x01\x87\x69\0\x04\0\0\0\x01\0\0\0\x1a\0\0\0\0"
            b"\0\x01\x92\x86\0\x07" + (8 + 2 * len(A1111_TEXT)).to_bytes(4, "big") + b"\0\0\0\x2c\0\0\0\0"
            + b"UNICODE\0" + A1111_TEXT.encode("utf-16-be"))
    Image.new("RGB", (8, 8)).save(tmp_path / "theirs.jpg", exif=exif)
    from sdopt.infotext import read_png_parameters

    parsed, fields = read_png_parameters(str(tmp_path / "theirs.jpg"))
    assert parsed["Prompt"] == "masterpiece, a (red:1.2) lighthouse at dawn" and fields["seed"] == 1234567


def _plain_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_values_that_differ_from_the_artifacts_defaults_are_written_and_unused_eta_is_not():
    """An artifact that caches every 2nd step by default: an image made with caching off says Cache interval: 1, or its
    parameters would make the cached image; an eta the scheduler did not read is not written."""
    from sdopt.infotext import image_parameters, parse_parameters
    from sdopt.request import GenerateRequest

    request = GenerateRequest(prompt="x", steps=4, cache_interval=1, eta=0.5)

    def written(**kw):
        return parse_parameters(image_parameters(request, 0, sampler=("Euler", None), model=None, model_hash=None, backend="torch fp32", **kw))

    plain = written(cache_interval=1, guidance_end=1.0, eta_used=True)
    assert "Cache interval" not in plain and "Guidance end" not in plain and plain["Eta"] == "0.5"
    cached_artifact = written(cache_interval=1, guidance_end=1.0, defaults={"cache_interval": 2, "guidance_end": 0.5}, eta_used=False)
    assert (cached_artifact["Cache interval"], cached_artifact["Guidance end"]) == ("1", "1") and "Eta" not in cached_artifact


@pytest.mark.parametrize("sampler,schedule,unapplied_key", [
    ("Euler", "Karras", "Schedule type"), ("LMS Karras", None, "Sampler"),  # sdopt has no Karras Euler or LMS
    ("DPM++ 2M", "Karras", None), ("DPM++ 2M Karras", None, None), ("Euler", "Automatic", None),
])
def test_a_schedule_type_sdopt_does_not_apply_is_said(sampler, schedule, unapplied_key):
    """An AUTOMATIC1111 image's schedule type that sdopt's sampler of that name lacks was dropped without a word
    (--parameters-from, the infotext field, and the older combined sampler names through the API)."""
    from sdopt.infotext import unapplied
    from sdopt.serve.a1111_fields import ignored_fields, scheduler_for
    from sdopt.serve.a1111_models import Txt2ImgRequest

    text = f"a fox\nSteps: 3, Sampler: {sampler}, " + (f"Schedule type: {schedule}, " if schedule else "") + "CFG scale: 7, Seed: 5, Size: 64x64"
    assert [k for k in unapplied(parse_parameters(text)) if k in ("Schedule type", "Sampler")] == ([unapplied_key] if unapplied_key else [])
    body = Txt2ImgRequest(prompt="a fox", sampler_name=sampler, **({"scheduler": schedule} if schedule else {}))
    ignored = ignored_fields(body, scheduler_for(body))
    assert bool({"scheduler", "sampler_name"} & set(ignored)) == (unapplied_key is not None), ignored


def test_a_batch_is_asked_again_as_its_maker_drew_it():
    """sdopt generate --num-images draws its batch from one seed ("Batch size" with the batch's Seed): made again only
    with its batch, which the CLI asks for and the A1111 API, drawing each image from its own seed, cannot (it made
    another image without a word: now sdopt_ignored names it). AUTOMATIC1111 writes the same keys, but its Seed is the
    image's own: that seed alone is its request (the CLI made the whole batch from it, which no image there came from)."""
    from sdopt.infotext import request_fields

    ours = "a fox\nSteps: 2, Sampler: PLMS, CFG scale: 7.5, Seed: 5, Size: 64x64, Batch size: 2, Batch pos: 1, Version: sdopt 0.1.0"
    theirs = "a fox\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1236, Size: 512x512, Batch size: 4, Batch pos: 2, Version: v1.5.1"
    assert request_fields(parse_parameters(ours))["num_images"] == 2
    assert "num_images" not in request_fields(parse_parameters(theirs)) and request_fields(parse_parameters(theirs))["seed"] == 1236
    pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'sdopt[serve]'")
    from sdopt.serve.a1111_fields import ignored_fields
    from sdopt.serve.a1111_models import Txt2ImgRequest

    assert ignored_fields(Txt2ImgRequest(infotext=ours), None) == ["infotext: Batch size"]
    assert ignored_fields(Txt2ImgRequest(infotext=ours.replace("Batch size: 2, Batch pos: 1, ", "")), None) == []
    assert ignored_fields(Txt2ImgRequest(infotext=theirs), None) == []


def test_a_folder_name_the_locale_cannot_decode_is_written_in_the_png(tiny_pipeline, monkeypatch):
    """Under LC_ALL=C (PYTHONUTF8=0) a non-ASCII artifact folder's name is undecoded bytes, which PNG text (UTF-8)
    refused when the image was saved, after the generation: its name is read from its bytes, in UTF-8."""
    import os
    from pathlib import Path

    from sdopt import GenerateRequest
    from sdopt.infotext import png_info

    monkeypatch.setattr(tiny_pipeline, "folder", Path(os.fsdecode(b"/models/caf\xe9")))
    text = tiny_pipeline.parameters(GenerateRequest(prompt="a fox", steps=2), 0)
    assert "Model: caf\ufffd" in text
    image = Image.new("RGB", (8, 8))
    image.info["parameters"] = text
    image.save(io.BytesIO(), format="PNG", pnginfo=png_info(image))


def test_a_lora_name_the_locale_cannot_decode_is_written_in_the_png(tiny_pipeline, tmp_path, monkeypatch):
    """As the folder's name above: a LoRA file with a non-ASCII name (sdopt generate --lora under LC_ALL=C) was written
    in "Loras:" as undecoded bytes, and PIL's save failed after the generation; read in UTF-8, its real name."""
    from sdopt import GenerateRequest
    from sdopt.infotext import png_info

    monkeypatch.setattr("sdopt.lora.parse_loras", lambda loras: None)  # no such file: the name is what is tested
    lora = f"{tmp_path}/caf\udcc3\udca9.safetensors"  # café's UTF-8 bytes as an ASCII locale leaves them in argv
    text = tiny_pipeline.parameters(GenerateRequest(prompt="a fox", steps=2, loras={lora: 0.5}), 0)
    assert 'Loras: "café:0.5"' in text
    image = Image.new("RGB", (8, 8))
    image.info["parameters"] = text
    image.save(io.BytesIO(), format="PNG", pnginfo=png_info(image))


def test_a_subseed_at_strength_0_is_not_said_to_be_ignored():
    """subseed was listed in sdopt_ignored whenever a client sent one, even at subseed_strength 0, where it changes
    nothing in AUTOMATIC1111 either (webui clients send both always; walk qa37). At a strength above 0 it is."""
    pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'sdopt[serve]'")
    from sdopt.serve.a1111_fields import ignored_fields
    from sdopt.serve.a1111_models import Txt2ImgRequest

    assert ignored_fields(Txt2ImgRequest(prompt="x", subseed=12345, subseed_strength=0), None) == []
    assert ignored_fields(Txt2ImgRequest(prompt="x", subseed=12345, subseed_strength=0.3), None) == ["subseed", "subseed_strength"]


def test_an_unknown_combined_karras_sampler_is_refused_by_the_name_sent():
    """"DPM++ 2M SDE Karras" (a sampler sdopt lacks, in AUTOMATIC1111's older combined form) was refused as
    'DPM++ 2M SDE', a name the client never sent."""
    from sdopt.errors import SdoptError
    from sdopt.runtime.schedulers import from_a1111

    with pytest.raises(SdoptError, match=r"sampler 'DPM\+\+ 2M SDE Karras' is not available here; available: Euler, "):
        from_a1111("DPM++ 2M SDE Karras")
    assert from_a1111("DPM++ 2M Karras") == "dpmpp_2m_karras"


def test_an_image_made_without_emphasis_says_so_and_reads_back_without_it():
    """sdopt wrote no Emphasis key without emphasis, and AUTOMATIC1111 reads a missing key as its default, "Original":
    an sdopt image made again there came out with emphasis. It writes AUTOMATIC1111's "None" (no emphasis), which both
    read back as off, and neither calls an emphasis mode it did not apply."""
    from sdopt.infotext import request_fields, unapplied

    ours = parse_parameters("a (red:1.5) circle\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 4, Size: 64x64, Emphasis: None, "
                            "Version: sdopt 0.1.0")
    theirs = parse_parameters("a (red:1.5) circle\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 4, Size: 64x64, Emphasis: None, "
                              "Version: v1.10.1")
    for parsed in (ours, theirs):
        assert not request_fields(parsed).get("prompt_emphasis") and "Emphasis" not in " ".join(unapplied(parsed))
    assert request_fields(parse_parameters("a (red:1.5) circle\nSteps: 2, Seed: 4, Size: 64x64, Version: v1.10.1"))["prompt_emphasis"]
