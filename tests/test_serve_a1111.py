"""AUTOMATIC1111 compatibility details of sdopt serve that clients notice: img2img's resize modes, inpainting's
"Only masked", fill and overlay, mask rounding, what is said to be ignored, the hires fix's limits and its sampler in the infotext, the listings clients call at
start-up, error shapes and field names, the page's credentials, and a client that hangs up."""

from __future__ import annotations

import asyncio
import json
import types

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'sdopt[serve]'")
httpx = pytest.importorskip("httpx", reason="httpx is not installed: pip install 'sdopt[serve-test]'")

from serving import SMALL, SlowSteps, b64png, png, running_server, wait_for  # noqa: E402


def _pixels(b64: str) -> np.ndarray:
    return np.asarray(png(b64).convert("RGB"), dtype=np.int16)


# --- img2img: resize modes, mask rounding, what is not done ------------------------------------
def _bands(width: int, height: int, top, middle, bottom):
    """A picture whose first row is ``top``, last row ``bottom``, everything between ``middle``."""
    from PIL import Image

    image = Image.new("RGB", (width, height), middle)
    image.paste(top, (0, 0, width, 1))
    image.paste(bottom, (0, height - 1, width, height))
    return image


def test_resize_modes_are_automatic1111s_arithmetic():
    from PIL import Image

    from sdopt.serve.resize_modes import CROP_AND_RESIZE, JUST_RESIZE, LATENT_UPSCALE, RESIZE_AND_FILL, resize

    red, green, blue = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    wide = _bands(64, 32, red, green, blue)
    # Resize and fill: fits inside (64x32 at rows 16..47), the bands above and below are its first and last rows stretched.
    filled = np.asarray(resize(wide, RESIZE_AND_FILL, 64, 64))
    assert filled.shape == (64, 64, 3)
    assert (filled[:16] == red).all() and (filled[48:] == blue).all() and (filled[17:47] == green).all()
    # Crop and resize: covers the size and keeps the middle (a left half red and right half blue -> the middle columns).
    halves = Image.new("RGB", (128, 64), red)
    halves.paste(blue, (64, 0, 128, 64))
    cropped = np.asarray(resize(halves, CROP_AND_RESIZE, 64, 64))
    assert cropped.shape == (64, 64, 3)
    assert (cropped[:, :28] == red).all() and (cropped[:, 36:] == blue).all()
    # Just resize (and latent upscale, done as it): stretched with Lanczos, as the loop would; an image the size: itself.
    for mode in (JUST_RESIZE, LATENT_UPSCALE):
        assert np.array_equal(np.asarray(resize(halves, mode, 64, 64)), np.asarray(halves.resize((64, 64), Image.Resampling.LANCZOS)))
    assert resize(wide, CROP_AND_RESIZE, 64, 32) is wide
    # A mask keeps its mode (grayscale).
    assert resize(Image.new("L", (128, 64), 255), CROP_AND_RESIZE, 64, 64).mode == "L"


def test_resize_modes_of_an_init_image_of_extreme_aspect_are_bounded(monkeypatch):
    """Crop and resize scaled the whole init image to cover the size before cropping: a 65536x1 picture (a few hundred
    bytes of PNG) at 64x64 became 4194304x64 pixels (1.3 GB, 7 s), and the 16-megapixel init images the server takes
    could ask hundreds of GB. Resize and fill scaled a 1x1000 picture to 0 pixels wide, which PIL refuses (a 500)."""
    from PIL import Image

    from sdopt.serve.resize_modes import CROP_AND_RESIZE, RESIZE_AND_FILL, resize

    asked = []
    real = Image.Image.resize

    def spy(self, size, *args, **kwargs):
        asked.append(size[0] * size[1])
        assert size[0] * size[1] <= 16 * 64 * 64, f"resized to {size}"  # never the whole of a far wider picture
        return real(self, size, *args, **kwargs)

    gradient = Image.fromarray(np.linspace(0, 255, 1024)[None, :, None].repeat(4, 0).repeat(3, 2).astype(np.uint8))
    whole = gradient.resize((16384, 64), Image.Resampling.LANCZOS).crop((8160, 0, 8224, 64))  # AUTOMATIC1111's arithmetic
    monkeypatch.setattr(Image.Image, "resize", spy)
    cropped = resize(gradient, CROP_AND_RESIZE, 64, 64)
    assert np.abs(np.asarray(cropped, dtype=np.int16) - np.asarray(whole, dtype=np.int16)).max() <= 1  # the same picture
    assert resize(Image.new("RGB", (1, 1000), (9, 9, 9)), RESIZE_AND_FILL, 64, 64).size == (64, 64)
    assert resize(Image.new("L", (1000, 1), 255), RESIZE_AND_FILL, 64, 64).size == (64, 64)


def test_img2img_crops_and_fills_as_asked_and_says_what_it_does_not_do(tiny_pipeline):
    from PIL import Image

    from sdopt.request import GenerateRequest
    from sdopt.serve.resize_modes import CROP_AND_RESIZE, resize

    init = Image.new("RGB", (128, 64), (255, 0, 0))
    init.paste((0, 0, 255), (64, 0, 128, 64))
    body = {"prompt": "a cross", **SMALL, "seed": 3, "sampler_name": "Euler", "init_images": [b64png(init)], "denoising_strength": 0.5}
    with running_server(tiny_pipeline) as (url, _):
        crop = httpx.post(url + "/sdapi/v1/img2img", json={**body, "resize_mode": 1}, timeout=120).json()
        stretch = httpx.post(url + "/sdapi/v1/img2img", json={**body, "resize_mode": 0, "include_init_images": True}, timeout=120).json()
        latent = httpx.post(url + "/sdapi/v1/img2img", json={**body, "resize_mode": 3, "styles": ["Cinematic"]}, timeout=120).json()
        bad = httpx.post(url + "/sdapi/v1/img2img", json={**body, "resize_mode": 7}, timeout=120)
    def by_hand(picture):
        request = GenerateRequest(prompt="a cross", seed=3, seeds=[3], steps=4, height=64, width=64, guidance_scale=7.0, scheduler="euler",
                                  strength=0.5, prompt_emphasis=True, init_image=picture)
        return np.asarray(tiny_pipeline.generate(request).images[0], dtype=np.int16)

    # Each the image the loop makes from the init image resized that way (the loop itself stretches it).
    assert np.abs(_pixels(crop["images"][0]) - by_hand(resize(init, CROP_AND_RESIZE, 64, 64))).max() <= 1
    assert np.abs(_pixels(stretch["images"][0]) - by_hand(init)).max() <= 1
    assert np.abs(_pixels(crop["images"][0]) - _pixels(stretch["images"][0])).max() >= 3  # and the two differ
    assert json.loads(crop["info"])["sdopt_ignored"] == [] == json.loads(stretch["info"])["sdopt_ignored"]
    # The input images echoed in parameters only with include_init_images, as AUTOMATIC1111 (always null before)
    assert stretch["parameters"]["init_images"] == body["init_images"] and crop["parameters"]["init_images"] is None
    assert json.loads(latent["info"])["sdopt_ignored"] == ["resize_mode", "styles"]
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "resize_mode"]


def test_img2img_says_an_enable_hr_sent_to_it_is_ignored():
    """img2img has no hires fix: a client that sent its txt2img body's enable_hr along had its image made, then a 500
    (the ignored-fields list read txt2img's hr_upscaler, which an img2img request has not)."""
    from sdopt.serve.a1111_fields import ignored_fields
    from sdopt.serve.a1111_models import Img2ImgRequest

    assert ignored_fields(Img2ImgRequest(init_images=["x"], enable_hr=True, hr_scale=2.0, hr_scheduler="Karras"), "euler") == ["enable_hr"]
    assert ignored_fields(Img2ImgRequest(init_images=["x"], enable_hr=False), "euler") == []


def test_a_clip_skip_not_restored_afterwards_is_said_ignored():
    """override_settings_restore_afterwards: false keeps the request's Clip skip as AUTOMATIC1111's option for later
    requests; here it applies to the request alone, and nothing said so (walk qa95). The default, true, is what runs."""
    from sdopt.serve.a1111_fields import ignored_fields
    from sdopt.serve.a1111_models import Txt2ImgRequest

    kept = {"override_settings": {"CLIP_stop_at_last_layers": 2}, "override_settings_restore_afterwards": False}
    assert ignored_fields(Txt2ImgRequest(prompt="x", **kept), "euler") == ["override_settings_restore_afterwards"]
    assert ignored_fields(Txt2ImgRequest(prompt="x", **{**kept, "override_settings_restore_afterwards": True}), "euler") == []
    assert ignored_fields(Txt2ImgRequest(prompt="x", override_settings_restore_afterwards=False), "euler") == []


def test_save_images_true_is_said_ignored():
    """AUTOMATIC1111 writes a request's images into its outputs folder on save_images: true; sdopt never does, and the
    field was counted as used, so a client that relied on the files on the server was not told. false (its default,
    what webuiapi sends) is what sdopt does."""
    from sdopt.serve.a1111_fields import ignored_fields
    from sdopt.serve.a1111_models import Txt2ImgRequest

    assert ignored_fields(Txt2ImgRequest(prompt="x", save_images=True), "euler") == ["save_images"]
    assert ignored_fields(Txt2ImgRequest(prompt="x", save_images=False, do_not_save_samples=True), "euler") == []


def test_an_infotexts_sampler_is_answered_by_automatic1111s_name_not_sdopts():
    """An infotext's "Sampler: Euler a" (or "DPM++ 2M" with "Schedule type: Karras") filled sampler_name with sdopt's own
    name, which the answer echoes: info.sampler_name and parameters.sampler_name said "euler_a", "dpmpp_2m_karras", names
    no /sdapi/v1/samplers listing has. Now the sampler and schedule type as AUTOMATIC1111 names them; the same scheduler runs."""
    from sdopt.serve.a1111_fields import apply_infotext, ignored_fields, scheduler_for
    from sdopt.serve.a1111_models import Txt2ImgRequest

    for text, sampler, schedule, ours in (("Sampler: Euler a", "Euler a", None, "euler_a"), ("Sampler: PLMS", "PLMS", None, "pndm"),
                                          ("Sampler: DPM++ 2M, Schedule type: Karras", "DPM++ 2M", "Karras", "dpmpp_2m_karras"),
                                          ("Sampler: DPM++ 2M Karras", "DPM++ 2M", "Karras", "dpmpp_2m_karras")):
        body = Txt2ImgRequest(infotext=f"x\nSteps: 4, {text}, CFG scale: 7, Seed: 1, Size: 64x64")
        apply_infotext(body)
        assert (body.sampler_name, body.scheduler, scheduler_for(body)) == (sampler, schedule, ours), text
        assert ignored_fields(body, ours) == []
    body = Txt2ImgRequest(sampler_name="DDIM", infotext="x\nSteps: 4, Sampler: Euler a, Seed: 1, Size: 64x64")  # the request's own wins
    apply_infotext(body)
    assert (body.sampler_name, scheduler_for(body)) == ("DDIM", "ddim")


def _picture(width: int, height: int):
    """A picture with something everywhere (so a pasted or kept pixel can be told from a repainted one)."""
    from PIL import Image

    x, y = np.meshgrid(np.arange(width), np.arange(height))
    return Image.fromarray(np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], axis=-1).astype(np.uint8))


def test_only_masked_geometry_is_automatic1111s():
    from PIL import Image

    from sdopt.serve.inpaint_area import crop_region, expand_to_aspect

    mask = Image.new("L", (128, 96), 0)
    mask.paste(255, (80, 16, 96, 32))
    assert crop_region(mask, 0) == (80, 16, 96, 32) and crop_region(mask, 4) == (76, 12, 100, 36)
    assert crop_region(Image.new("L", (8, 8), 0), 4) is None
    # Grown on the short side to the request's aspect, kept inside the picture (values worked by hand from masking.py).
    assert expand_to_aspect((76, 12, 100, 36), 64, 32, 128, 96) == (64, 12, 112, 36)
    assert expand_to_aspect((110, 10, 128, 20), 64, 64, 128, 96) == (110, 6, 128, 24)
    assert expand_to_aspect((120, 40, 128, 60), 64, 64, 128, 96) == (108, 40, 128, 60)


def test_fill_paints_the_masked_part_with_its_surroundings():
    from PIL import Image

    from sdopt.serve.inpaint_area import fill

    image = Image.new("RGB", (64, 64), (200, 40, 40))
    image.paste((0, 0, 255), (24, 24, 40, 40))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (24, 24, 40, 40))
    filled = np.asarray(fill(image, mask), dtype=np.int16)
    assert np.abs(filled[24:40, 24:40] - (200, 40, 40)).max() <= 8  # the blue square is gone, red in its place (premultiplied rounding)
    assert np.array_equal(filled[:20], np.asarray(image)[:20])  # far from the mask: untouched


def test_the_repainted_crop_goes_back_where_it_was_cut_under_the_kept_pixels():
    """Only masked: the loop's 64x64 answer (here solid green) resized to the cut and pasted; the init image's own pixels
    everywhere the mask keeps; the answer the init image's size."""
    from PIL import Image

    from sdopt.serve import inpaint_area

    init = _picture(128, 96)
    mask = Image.new("L", (128, 96), 0)
    mask.paste(255, (80, 16, 96, 32))
    area = inpaint_area.prepare(init, mask, 64, 64, only_masked=True, padding=8, resize_mode=0, fill_mode=inpaint_area.ORIGINAL)
    assert area.paste == (72, 8, 32, 32) and area.init.size == area.mask.size == (64, 64)
    assert np.array_equal(np.asarray(area.init), np.asarray(init.crop((72, 8, 104, 40)).resize((64, 64), Image.Resampling.LANCZOS)))
    done = np.asarray(inpaint_area.finish(Image.new("RGB", (64, 64), (0, 255, 0)), area))
    assert done.shape == (96, 128, 3)
    kept = np.asarray(mask) == 0
    assert np.array_equal(done[kept], np.asarray(init)[kept]) and (done[16:32, 80:96] == (0, 255, 0)).all()
    # The whole picture: the answer at the request's size, the doubled mask's edge leaning to the repainted side.
    whole = inpaint_area.prepare(init, mask, 64, 48, only_masked=False, padding=0, resize_mode=0, fill_mode=inpaint_area.ORIGINAL)
    assert whole.paste is None and whole.init.size == (64, 48)
    assert np.asarray(inpaint_area.finish(Image.new("RGB", (64, 48), (0, 255, 0)), whole)).shape == (48, 64, 3)


def test_a1111_inpainting_answers_the_whole_canvas_and_rounds_the_mask(tiny_pipeline):
    """AUTOMATIC1111's defaults: only the masked area is repainted and the answer is the init image, changed only under
    the mask; a mask at level 128 is rounded to keep everything (the answer is the init image itself), unrounded the
    loop repaints it; a blank mask is img2img."""
    from PIL import Image

    init = _picture(128, 96)
    mask = Image.new("L", (128, 96), 0)
    mask.paste(255, (80, 16, 96, 32))
    body = {"prompt": "a cross", **SMALL, "seed": 2, "init_images": [b64png(init)], "mask_blur": 0}
    with running_server(tiny_pipeline) as (url, _):
        def ask(**fields):
            answer = httpx.post(url + "/sdapi/v1/img2img", json={**body, **fields}, timeout=120)
            assert answer.status_code == 200, answer.text
            return answer.json()

        masked = ask(mask=b64png(mask))
        text = png(masked["images"][0]).info["parameters"]
        # The image's parameters say AUTOMATIC1111's inpainting keys, and make the same image again from the same
        # init image and mask (its Mask blur 0, not the API's default 4, comes from them).
        again = httpx.post(url + "/sdapi/v1/img2img", json={"init_images": [b64png(init)], "mask": b64png(mask), "infotext": text}, timeout=120).json()
        gray = Image.new("L", (128, 96), 128)
        rounded = ask(mask=b64png(gray), inpaint_full_res=False)
        soft = ask(mask=b64png(gray), inpaint_full_res=False, mask_round=False)
        blank = ask(mask=b64png(Image.new("L", (128, 96), 0)))
        plain = ask()
        original = ask(mask=b64png(mask), inpainting_fill=1)
        latent_noise = ask(mask=b64png(mask), inpainting_fill=2)
        latent_nothing = ask(mask=b64png(mask), inpainting_fill=3)
        assert httpx.post(url + "/sdapi/v1/img2img", json={**body, "mask": b64png(mask), "inpainting_fill": 7}, timeout=60).status_code == 422
    out = _pixels(masked["images"][0])
    kept = np.asarray(mask) == 0
    assert out.shape == (96, 128, 3) and np.array_equal(out[kept], np.asarray(init, dtype=np.int16)[kept])
    assert np.abs(out[16:32, 80:96] - np.asarray(init, dtype=np.int16)[16:32, 80:96]).max() > 16
    assert json.loads(masked["info"])["sdopt_ignored"] == []
    assert "Mask blur: 0, Inpaint area: Only masked, Masked area padding: 0, Masked content: fill" in text, text
    assert np.array_equal(_pixels(again["images"][0]), out) and json.loads(again["info"])["sdopt_ignored"] == []
    init_at_size = np.asarray(init.resize((64, 64), Image.Resampling.LANCZOS), dtype=np.int16)
    assert np.array_equal(_pixels(rounded["images"][0]), init_at_size)  # rounded to black: every pixel kept
    assert np.abs(_pixels(soft["images"][0]) - init_at_size).max() > 16
    assert json.loads(soft["info"])["sdopt_ignored"] == ["mask_round"]
    assert np.array_equal(_pixels(blank["images"][0]), _pixels(plain["images"][0]))
    # Latent noise and latent nothing start the masked part from the start's noise or zeros (masked_content): other
    # pixels under the mask, the same outside it (the overlay), and said in the parameters.
    inside = (slice(16, 32), slice(80, 96))
    for answer, words in ((latent_noise, "latent noise"), (latent_nothing, "latent nothing")):
        assert json.loads(answer["info"])["sdopt_ignored"] == []
        assert np.abs(_pixels(answer["images"][0])[inside] - _pixels(original["images"][0])[inside]).max() > 4  # (9 and more on the toy)
        assert np.array_equal(_pixels(answer["images"][0])[kept], _pixels(original["images"][0])[kept])
        assert f"Masked content: {words}" in png(answer["images"][0]).info["parameters"]


def test_an_init_images_transparent_part_is_laid_on_white_as_automatic1111s(tiny_pipeline):
    """AUTOMATIC1111's img2img fills an init image's transparent parts with img2img_background_color (white): the
    server dropped the alpha, and what lay under it (black here, as most editors leave it) was repainted. A mask that
    keeps every pixel returns the init image as the loop saw it."""
    from PIL import Image

    init = Image.new("RGBA", (64, 64), (255, 0, 0, 255))
    init.paste((0, 0, 0, 0), (0, 32, 64, 64))  # the lower half transparent black
    body = {"prompt": "x", **SMALL, "steps": 1, "denoising_strength": 1, "init_images": [b64png(init)], "mask": b64png(Image.new("L", (64, 64), 0)), "inpaint_full_res": False}
    with running_server(tiny_pipeline) as (url, _):
        answer = httpx.post(url + "/sdapi/v1/img2img", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    out = _pixels(answer.json()["images"][0])
    assert (out[40:, :] == 255).all() and (out[:24, :] == (255, 0, 0)).all()


def test_several_init_images_are_refused_not_all_but_the_first_dropped(tiny_pipeline):
    """AUTOMATIC1111 makes each image of a batch from its own init image; the server made every image from the first
    and dropped the others unsaid (200, nothing in sdopt_ignored). Refused now, naming init_images, before a queue slot."""
    from PIL import Image

    red, blue = (b64png(Image.new("RGB", (64, 64), colour)) for colour in ((255, 0, 0), (0, 0, 255)))
    with running_server(tiny_pipeline, start_worker=False) as (url, app):
        answer = httpx.post(url + "/sdapi/v1/img2img", json={"prompt": "x", **SMALL, "batch_size": 2, "init_images": [red, blue]}, timeout=10)
        assert answer.status_code == 422, answer.text
        assert answer.json()["detail"][0]["loc"] == ["body", "init_images"] and "2 images" in answer.text
        assert app.state.worker.queue_depth == 0


def test_a_negative_mask_blur_or_padding_is_refused_naming_the_field(tiny_pipeline):
    """mask_blur -4 was applied as no blur and written "Mask blur: -4" into the image's parameters; a negative
    inpaint_full_res_padding was taken as 0. Both are refused before any work, an infotext's as well."""
    from PIL import Image

    image = b64png(Image.new("RGB", (64, 64), (200, 20, 20)))
    inpaint = {"prompt": "x", **SMALL, "init_images": [image], "mask": b64png(Image.new("L", (64, 64), 255))}
    with running_server(tiny_pipeline, start_worker=False) as (url, app):
        for fields, field in (({"mask_blur": -4}, "mask_blur"), ({"mask_blur_x": -3, "mask_blur_y": 2}, "mask_blur_x"),
                              ({"inpaint_full_res": True, "inpaint_full_res_padding": -8}, "inpaint_full_res_padding"),
                              ({"infotext": "x\nSteps: 4, Sampler: Euler, Mask blur: -2"}, "mask_blur")):
            response = httpx.post(url + "/sdapi/v1/img2img", json={**inpaint, **fields}, timeout=10)  # accepted: it would wait
            assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", field], (fields, response.text)
            assert "give 0 or more pixels" in response.text
        assert app.state.worker.queue_depth == 0


def test_an_eta_out_of_range_is_refused_whatever_the_sampler(tiny_pipeline):
    """eta=5 (or -1) with Euler, which reads no eta, answered 200 without a word, not even in sdopt_ignored; with DDIM
    it was refused. AUTOMATIC1111's eta settings are sliders from 0 to 1 (walk qa95)."""
    with running_server(tiny_pipeline, start_worker=False) as (url, app):
        for sampler, eta in (("Euler", 5), ("Euler", -1), ("Euler a", 1.5)):
            response = httpx.post(url + "/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, "sampler_name": sampler, "eta": eta}, timeout=10)
            assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "eta"], (sampler, response.text)
            assert f"eta={eta}: give a number from 0 to 1" in response.text
        assert app.state.worker.queue_depth == 0


def test_a_mask_blur_past_what_pil_takes_is_422_not_500(tiny_pipeline):
    """PIL's GaussianBlur raises ValueError for a radius past ~2**31 ("radius too large"; past 2**63 "must be >= 0"):
    mask_blur, mask_blur_x or an infotext's Mask blur that large was answered 500. Refused before any work now."""
    from PIL import Image

    image = b64png(Image.new("RGB", (64, 64), (200, 20, 20)))
    inpaint = {"prompt": "x", **SMALL, "init_images": [image], "mask": b64png(Image.new("L", (64, 64), 255))}
    with running_server(tiny_pipeline, start_worker=False) as (url, app):
        for fields, field in (({"mask_blur": 2**31}, "mask_blur"), ({"mask_blur_x": 10**30}, "mask_blur_x"),
                              ({"infotext": f"x\nSteps: 4, Sampler: Euler, Mask blur: {2**40}"}, "mask_blur")):
            response = httpx.post(url + "/sdapi/v1/img2img", json={**inpaint, **fields}, timeout=10)
            assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", field], (fields, response.text)
            assert "give at most" in response.text
        assert app.state.worker.queue_depth == 0


def test_a_negative_seed_other_than_minus_one_is_refused(tiny_pipeline):
    """seed -5 was made from a random seed (AUTOMATIC1111 draws from -5 itself, the same picture every time): refused,
    naming the field; -1 and null stay random and are reported."""
    with running_server(tiny_pipeline, start_worker=False) as (url, app):
        response = httpx.post(url + "/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, "seed": -5}, timeout=10)
        assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "seed"], response.text
        assert "give -1 for a random seed" in response.text and app.state.worker.queue_depth == 0
        # The batch's last seed past the top: said of the seed the client sent (it named seeds=[...], never sent)
        top = 2**63 - 1
        response = httpx.post(url + "/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, "seed": top, "batch_size": 2}, timeout=10)
        assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "seed"], response.text
        assert f"its 2 images take seeds {top} to {top + 1}, past {top}: give a seed of at most {top - 1}" in response.text


# --- the hires fix: limits before any work, its sampler in the parameters ------------------------
@pytest.mark.parametrize("fields, field", [
    ({"hr_scale": 1e308}, "hr_scale"),
    ({"hr_scale": float("inf")}, "hr_scale"),
    ({"hr_scale": -1}, "hr_scale"),
    ({"hr_resize_x": 10**30}, "hr_resize_x"),
    ({"hr_resize_y": -8}, "hr_resize_y"),
    ({"hr_resize_x": 46000, "hr_resize_y": 46000}, "hr_resize_x"),  # refused before a picture of that size is made
    ({"hr_sampler_name": "Bogus"}, "hr_sampler_name"),
])
def test_hires_sizes_and_samplers_are_refused_naming_the_field(tiny_pipeline, fields, field):
    with running_server(tiny_pipeline, start_worker=False) as (url, app):
        body = json.dumps({"prompt": "x", **SMALL, "enable_hr": True, **fields})  # Infinity as Python's json writes it
        response = httpx.post(url + "/sdapi/v1/txt2img", content=body, headers={"Content-Type": "application/json"}, timeout=60)
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"] == ["body", field]
        assert app.state.worker.queue_depth == 0


def test_a_hires_request_whose_second_pass_would_time_out_is_refused_before_its_first_pass(tiny_pipeline):
    """The estimate at submission (--job-timeout) looked at the first pass alone: a hires request whose second pass
    timed out was taken again, ran its first pass, then timed out in its second, each time it was sent."""
    body = {"prompt": "x", **SMALL, "steps": 2, "enable_hr": True, "hr_scale": 2, "hr_second_pass_steps": 40, "denoising_strength": 1.0}
    # The timeout is what the test waits for (6 s and 0.5 s a step made it 3 s longer): the second pass's 40 steps still
    # take 10 s, the first pass's 2 well under the timeout
    with running_server(SlowSteps(tiny_pipeline, 0.25), job_timeout=3.0) as (url, app):
        assert httpx.post(url + "/sdapi/v1/txt2img", json=body, timeout=60).status_code == 504
        ran = dict(app.state.worker.metrics.jobs)
        refused = httpx.post(url + "/sdapi/v1/txt2img", json=body, timeout=60)
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"][-1] == "hr_second_pass_steps", refused.text
        assert "1 image(s) of 128x128 at hr_second_pass_steps=40 would take about" in refused.text
        assert dict(app.state.worker.metrics.jobs) == ran  # no first pass run for nothing


def test_hires_sampler_and_schedule_type_are_written_and_read_back(tiny_pipeline):
    body = {"prompt": "a cube", **SMALL, "seed": 5, "sampler_name": "Euler", "enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Lanczos",
            "denoising_strength": 0.6, "hr_second_pass_steps": 3, "hr_sampler_name": "DPM++ 2M", "hr_scheduler": "Karras"}
    with running_server(tiny_pipeline) as (url, _):
        first = httpx.post(url + "/sdapi/v1/txt2img", json=body, timeout=120).json()
        text = png(first["images"][0]).info["parameters"]
        again = httpx.post(url + "/sdapi/v1/txt2img", json={"infotext": text}, timeout=120).json()
        euler_a = httpx.post(url + "/sdapi/v1/txt2img", json={**body, "hr_sampler_name": "Euler a"}, timeout=120).json()
    assert "Hires sampler: DPM++ 2M, Hires schedule type: Karras" in text
    assert json.loads(first["info"])["sdopt_ignored"] == []
    assert np.abs(_pixels(again["images"][0]) - _pixels(first["images"][0])).max() <= 1
    assert json.loads(euler_a["info"])["sdopt_ignored"] == ["hr_scheduler"]  # sdopt has no Karras Euler a


# --- listings, options, errors, credentials ------------------------------------------------------
def test_the_listings_clients_call_at_start_up_answer_lists(tiny_pipeline):
    with running_server(tiny_pipeline, start_worker=False) as (url, _):
        def get(path):
            response = httpx.get(url + "/sdapi/v1/" + path)
            assert response.status_code == 200, path
            return response.json()

        assert [u["name"] for u in get("upscalers")] == ["Lanczos", "Nearest", "None"]
        assert [m["name"] for m in get("latent-upscale-modes")] == ["Latent", "Latent (antialiased)", "Latent (bicubic)",
                                                                   "Latent (bicubic antialiased)", "Latent (nearest)", "Latent (nearest-exact)"]
        for path in ("sd-vae", "hypernetworks", "face-restorers", "realesrgan-models", "prompt-styles", "script-info"):
            assert get(path) == [], path
        assert get("embeddings") == {"loaded": {}, "skipped": {}}
        ram = get("memory")["ram"]
        assert 0 < ram["free"] <= ram["total"]
        assert get("cmd-flags")["api"] is True
        answer = httpx.post(url + "/sdapi/v1/options", json={"eta_noise_seed_delta": 31337, "samples_format": "PNG"})  # any case, as A1111
        assert answer.status_code == 200 and answer.json() == {"sdopt_ignored": ["eta_noise_seed_delta"]}
        jpeg = httpx.post(url + "/sdapi/v1/options", json={"samples_format": "jpg"})
        assert jpeg.status_code == 422 and jpeg.json()["detail"][0]["loc"] == ["body", "samples_format"]
        assert httpx.post(url + "/sdapi/v1/refresh-checkpoints").status_code == 200


def test_memory_says_the_memory_available_not_merely_free(tiny_pipeline, monkeypatch):
    """/sdapi/v1/memory's "free" was MemFree (SC_AVPHYS_PAGES), which leaves out the page cache: 3 GB free of 24 GB on a
    machine with 22 GB available (walk qa95). It is what sdopt.hardware.available_bytes reads, MemAvailable."""
    import os

    from sdopt import hardware

    if not hasattr(os, "sysconf") or "SC_AVPHYS_PAGES" not in os.sysconf_names:
        pytest.skip("no SC_AVPHYS_PAGES here: /sdapi/v1/memory reports an error")
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    monkeypatch.setattr(hardware, "available_bytes", lambda: total - 12345)
    with running_server(tiny_pipeline, start_worker=False) as (url, _):
        ram = httpx.get(url + "/sdapi/v1/memory").json()["ram"]
    assert ram == {"free": total - 12345, "used": 12345, "total": total}


def test_override_settings_naming_the_model_or_format_answer_as_options_do(tiny_pipeline):
    """The served model in override_settings was listed as ignored (a false alarm), another model ignored with 200 while
    POST /sdapi/v1/options refused it: both paths now take the served one silently and refuse another alike."""
    body = {"prompt": "x", **SMALL, "steps": 1}
    with running_server(tiny_pipeline) as (url, app):
        served = httpx.post(url + "/sdapi/v1/txt2img", json={**body, "override_settings": {"sd_model_checkpoint": "tiny", "samples_format": "png"}}, timeout=60)
        assert served.status_code == 200 and json.loads(served.json()["info"])["sdopt_ignored"] == [], served.text[-400:]
        for option in ({"sd_model_checkpoint": "other"}, {"samples_format": "jpg"}):
            [key] = option
            overridden = httpx.post(url + "/sdapi/v1/txt2img", json={**body, "override_settings": option})
            assert overridden.status_code == 422 and overridden.json()["detail"][0]["loc"] == ["body", "override_settings"], overridden.text
            options = httpx.post(url + "/sdapi/v1/options", json=option)
            assert options.status_code == 422 and options.json()["detail"][0]["loc"] == ["body", key]
            assert overridden.json()["detail"][0]["msg"] == "override_settings." + options.json()["detail"][0]["msg"]
        assert app.state.worker.queue_depth == 0


def test_an_options_refusal_shows_the_value_as_the_clients_json_wrote_it(tiny_pipeline):
    """POST /sdapi/v1/options and override_settings quoted a value as Python writes it: "CLIP_stop_at_last_layers=False",
    "sd_model_checkpoint={'a': 1}: ... start another `sdopt serve` for {'a': 1}", which the client sent as false, {"a": 1}."""
    with running_server(tiny_pipeline, start_worker=False) as (url, _):
        for option, said in [({"CLIP_stop_at_last_layers": False}, "CLIP_stop_at_last_layers=false: give an integer"),
                             ({"sd_model_checkpoint": {"a": 1}}, 'sd_model_checkpoint={"a": 1}: this server serves only \'tiny\': give its name'),
                             ({"samples_format": None, "sd_model_checkpoint": True}, "sd_model_checkpoint=true: this server serves only"),
                             ({"samples_format": ["jpg"]}, 'samples_format=["jpg"]: this server answers with PNG images only')]:
            answer = httpx.post(url + "/sdapi/v1/options", json=option)
            message = answer.json()["detail"][0]["msg"]
            assert answer.status_code == 422 and message.startswith(said), answer.text
            assert not any(word in message for word in ("True", "False", "None", "{'", "['")), answer.text


@pytest.mark.parametrize("what, field", [("scheduler", "scheduler"), ("mask", "init_image")])
def test_native_errors_name_the_field_that_caused_them(tiny_pipeline, what, field):
    from PIL import Image

    body = {"scheduler": "bogus"} if what == "scheduler" else {"mask": b64png(Image.new("L", (64, 64), 255))}  # a mask needs an init image
    with running_server(tiny_pipeline, start_worker=False) as (url, _):
        response = httpx.post(url + "/v1/jobs", json={"prompt": "x", **SMALL, **body})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", field]


def test_a_401_on_openais_routes_is_in_openais_error_shape(tiny_pipeline):
    openai = pytest.importorskip("openai")
    with running_server(tiny_pipeline, start_worker=False, api_key="right-key") as (url, _):
        client = openai.OpenAI(base_url=url + "/v1", api_key="wrong-key", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as caught:
            client.models.list()
        assert "missing or wrong credentials" in str(caught.value)
        a1111 = httpx.get(url + "/sdapi/v1/samplers")
        assert a1111.status_code == 401 and "missing or wrong credentials" in a1111.json()["detail"]  # AUTOMATIC1111's shape


@pytest.mark.parametrize("settings, scheme, label", [
    ({"api_auth": "bob:pw"}, "basic", "user:password"),
    ({"api_key": "k"}, "bearer", "API key"),
    ({"api_key": "k", "api_auth": "bob:pw"}, "both", "API key or user:password"),
    ({}, "", ""),
])
def test_the_page_sends_the_credentials_the_server_takes(tiny_pipeline, settings, scheme, label):
    with running_server(tiny_pipeline, start_worker=False, **settings) as (url, _):
        page = httpx.get(url + "/").text
    assert f'const authScheme = "{scheme}";' in page and f'class="auth">{label}</label>' in page


# --- a client that hangs up -------------------------------------------------------------------
def test_a_job_whose_client_hangs_up_is_cancelled(tiny_pipeline):
    """The HTTP client gives up (its timeout) while its image is being made: the job is cancelled, not left to
    run to the end holding the worker; the next request is served."""
    with running_server(SlowSteps(tiny_pipeline, 0.5), job_timeout=120) as (url, app):
        with pytest.raises(httpx.TimeoutException):
            httpx.post(url + "/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, "steps": 40, "force_task_id": "gone"}, timeout=1.5)
        job = wait_for(lambda: (j := app.state.worker.jobs.get("gone")) and j.status != "running" and j, timeout=30)
        assert job.status == "cancelled" and job.error == "the client disconnected" and job.step < 40
        # One step is a request served as well as 4 (at 0.5 s a step those were 1.5 s of the test)
        assert httpx.post(url + "/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, "steps": 1}, timeout=120).status_code == 200


def test_wait_returns_the_job_when_the_client_stays():
    """The disconnect check does not cancel a job whose client is still there."""
    import concurrent.futures

    from sdopt.serve import submission

    future: concurrent.futures.Future = concurrent.futures.Future()
    job = types.SimpleNamespace(future=future, status="succeeded")
    cancelled = []

    class Present:
        app = types.SimpleNamespace(state=types.SimpleNamespace(worker=types.SimpleNamespace(cancel=lambda *a: cancelled.append(a))))

        async def is_disconnected(self):
            return False

    async def scenario():
        waiting = asyncio.ensure_future(submission.wait(job, Present()))
        await asyncio.sleep(submission.DISCONNECT_POLL_S * 2.5)
        future.set_result(job)
        return await waiting

    assert asyncio.run(scenario()) is job and cancelled == []


def test_a_hires_side_given_alone_keeps_the_aspect_rounded_down_as_automatic1111():
    from types import SimpleNamespace

    from sdopt.serve.hires import target_size

    body = SimpleNamespace(hr_resize_x=71, hr_resize_y=0, hr_scale=2.0, width=64, height=72)
    assert target_size(body, 2**20) == (64, 72)  # 71 x 72 // 64 = 79 (it rounded to 80), then multiples of 8
    assert target_size(SimpleNamespace(**{**vars(body), "hr_resize_x": 0, "hr_resize_y": 100}), 2**20) == (88, 96)  # 100 x 64 // 72 = 88


# --- skip and interrupt ----------------------------------------------------------------------
def _in_thread(call):
    import threading

    answer: dict = {}
    thread = threading.Thread(target=lambda: answer.update(r=call()))
    thread.start()
    return thread, answer


def _running(app, task_id: str, iteration: int = 0):
    """The job of iteration ``iteration`` (0: the first) of the request whose first is ``task_id``, once 2 steps in."""
    def found():
        job = app.state.worker.jobs.get(task_id)
        for _ in range(iteration):
            job = job and app.state.worker.jobs.get(job.continued_by)
        return job if job is not None and job.status == "running" and job.step >= 2 else None

    return wait_for(found, timeout=60)


def test_skip_ends_the_running_iteration_and_the_request_goes_on_with_the_next(tiny_pipeline):
    """AUTOMATIC1111's skip: the batch being made now is dropped, the request goes on with its next iteration (n_iter)
    and answers with the images it made, not interrupted; progress says skipped. Interrupt still ends the request,
    answering with the iterations finished before it."""
    body = {"prompt": "x", **SMALL, "steps": 8, "seed": 100, "batch_size": 1}
    with running_server(SlowSteps(tiny_pipeline, 0.1)) as (url, app):
        post = lambda **over: httpx.post(url + "/sdapi/v1/txt2img", json={**body, **over}, timeout=120)  # noqa: E731
        thread, answer = _in_thread(lambda: post(n_iter=3, force_task_id="skip-first"))
        first = _running(app, "skip-first")
        assert httpx.post(url + "/sdapi/v1/skip").status_code == 200
        thread.join(90)
        response = answer["r"]
        assert response.status_code == 200, response.text
        info = json.loads(response.json()["info"])
        assert len(response.json()["images"]) == 2 and info["interrupted"] is False and info["all_seeds"] == [100, 101, 102]
        assert info["sdopt_skipped_seeds"] == [100] and len(info["sdopt_task_ids"]) == 3
        assert first.status == "cancelled" and first.skipped
        assert ["Seed: 101," in info["infotexts"][0], "Seed: 102," in info["infotexts"][1]] == [True, True]

        # Skipped in its last iteration: the request answers its first; progress follows the request there and says so.
        thread, answer = _in_thread(lambda: post(n_iter=2, seed=200, force_task_id="skip-last"))
        _running(app, "skip-last", iteration=1)
        assert httpx.post(url + "/sdapi/v1/skip").status_code == 200
        thread.join(90)
        info = json.loads(answer["r"].json()["info"])
        assert (len(answer["r"].json()["images"]), info["interrupted"], info["sdopt_skipped_seeds"]) == (1, False, [201])
        state = httpx.get(url + "/sdapi/v1/progress", params={"id_task": "skip-last"}).json()["state"]
        assert (state["skipped"], state["interrupted"], state["job_no"]) == (True, False, 1)

        # Interrupt in the second of three iterations: the first's image, interrupted, and the third never queued.
        thread, answer = _in_thread(lambda: post(n_iter=3, seed=300, force_task_id="interrupted"))
        _running(app, "interrupted", iteration=1)
        # progress over the whole request, as AUTOMATIC1111's: 3 jobs (its batch count), the second running
        followed = httpx.get(url + "/sdapi/v1/progress", params={"id_task": "interrupted"}).json()
        assert (followed["state"]["job_count"], followed["state"]["job_no"]) == (3, 1) and 1 / 3 < followed["progress"] < 2 / 3
        assert httpx.post(url + "/sdapi/v1/interrupt").status_code == 200
        thread.join(90)
        info = json.loads(answer["r"].json()["info"])
        assert (len(answer["r"].json()["images"]), info["interrupted"], info["sdopt_skipped_seeds"]) == (1, True, [])
        assert len(info["sdopt_task_ids"]) == 2 and "Seed: 300," in info["infotexts"][0]
        state = httpx.get(url + "/sdapi/v1/progress", params={"id_task": "interrupted"}).json()["state"]
        assert (state["skipped"], state["interrupted"]) == (False, True)


def test_interrupt_and_skip_leave_native_and_openai_jobs_alone(tiny_pipeline):
    """AUTOMATIC1111's interrupt and skip ended every job running now: a native client's job (or an OpenAI one) lost its
    images to another client's Stop button, a single-user API's call it never made. They end AUTOMATIC1111's jobs only."""
    with running_server(SlowSteps(tiny_pipeline, 0.1)) as (url, app):
        job_id = httpx.post(url + "/v1/jobs", json={"prompt": "x", "width": 64, "height": 64, "steps": 20}).json()["id"]
        wait_for(lambda: app.state.worker.jobs[job_id].step >= 2)
        assert httpx.post(url + "/sdapi/v1/interrupt").status_code == 200
        assert httpx.post(url + "/sdapi/v1/skip").status_code == 200
        job = wait_for(lambda: (j := httpx.get(f"{url}/v1/jobs/{job_id}").json())["status"] != "running" and j)
        assert job["status"] == "succeeded" and len(job["images"]) == 1, job["error"]


def test_the_listings_name_the_servers_folders_without_their_absolute_paths(tiny_pipeline, tmp_path, monkeypatch):
    """sd-models, loras and cmd-flags answered the artifact folder, --lora-dir and each LoRA file by absolute path:
    anyone who can reach the port learnt the operator's user name and home folder (/home/alice/...). They name the
    folders from their own names on."""
    from pathlib import Path

    home = tmp_path / "home" / "alice"
    loras = home / "loras"
    loras.mkdir(parents=True)
    (loras / "style.safetensors").write_bytes(b"")
    monkeypatch.setattr(tiny_pipeline, "folder", Path(home / "models" / "tiny"))
    with running_server(tiny_pipeline, start_worker=False, lora_dir=str(loras)) as (url, _):
        answers = {path: httpx.get(url + path).text for path in ("/sdapi/v1/sd-models", "/sdapi/v1/loras", "/sdapi/v1/cmd-flags")}
        assert httpx.get(url + "/sdapi/v1/sd-models").json()[0]["filename"] == "tiny"
        assert httpx.get(url + "/sdapi/v1/loras").json()[0]["path"] == "loras/style.safetensors"  # as docs/serve.md shows it
        assert httpx.get(url + "/sdapi/v1/cmd-flags").json()["lora_dir"] == "loras"
    for path, text in answers.items():
        assert "alice" not in text and str(tmp_path) not in text, (path, text)


def test_a_jobs_error_names_a_broken_lora_file_without_its_absolute_path(tiny_pipeline, tmp_path):
    """A file in --lora-dir that is not safetensors failed its jobs with "LoRA /home/alice/loras/bad.safetensors cannot
    be read ...": every client that named it, and a native job's reader, learnt the operator's home folder. The error
    names the file from the folder's own name on, as /sdapi/v1/loras does."""
    pytest.importorskip("peft")
    loras = tmp_path / "home" / "alice" / "loras"
    loras.mkdir(parents=True)
    (loras / "bad.safetensors").write_bytes(b"not a safetensors file")
    with running_server(tiny_pipeline, lora_dir=str(loras)) as (url, _):
        answer = httpx.post(url + "/sdapi/v1/txt2img", json={"prompt": "x <lora:bad:1>", **SMALL, "steps": 1}, timeout=60)
        assert answer.status_code == 500 and "loras/bad.safetensors" in answer.text, answer.text
        job = httpx.post(url + "/v1/jobs", json={"prompt": "x <lora:bad:1>", "steps": 1}).json()
        error = wait_for(lambda: httpx.get(f"{url}/v1/jobs/{job['id']}", params={"images": False}).json()["error"])
    assert "loras/bad.safetensors" in error
    for text in (answer.text, error):
        assert "alice" not in text and str(tmp_path) not in text, text


def test_refresh_embeddings_names_a_vanished_folder_without_its_absolute_path(tiny_pipeline, tmp_path, caplog):
    """--embeddings-dir removed while the server ran: POST /sdapi/v1/refresh-embeddings answered "embedding
    /home/alice/embeddings does not exist", the operator's home folder and user name, to any client. It answered 422
    too, the client's fault, for a request that sends nothing: 500 now, and the operator's log says it with the path."""
    folder = tmp_path / "home" / "alice" / "embeddings"
    folder.mkdir(parents=True)
    with running_server(tiny_pipeline, start_worker=False, embeddings_dir=str(folder)) as (url, _):
        folder.rmdir()
        answer = httpx.post(url + "/sdapi/v1/refresh-embeddings")
    assert answer.status_code == 500 and "embeddings" in answer.text, answer.text
    assert "its operator must restore --embeddings-dir" in answer.text, answer.text
    assert "alice" not in answer.text and str(tmp_path) not in answer.text, answer.text
    # ... and not the loader's advice to whoever names files, which no HTTP client does (walk qa95)
    assert "give a textual inversion" not in answer.text and "embeddings) is gone" in answer.text, answer.text
    assert any(record.levelname == "ERROR" and str(folder) in record.getMessage() for record in caplog.records), caplog.text


def test_a_refusal_the_loop_makes_at_submission_names_the_servers_folders_too(tiny_pipeline, tmp_path, monkeypatch):
    """Job errors and sdopt's own 422s named the server's folders by their names, but a refusal of the loop's that a route
    passes on as its own (check_spec's RequestError) went out as written, absolute path and all: one handler now
    answers both."""
    from sdopt import SdoptError

    loras = tmp_path / "home" / "alice" / "loras"
    loras.mkdir(parents=True)

    def refuse(request):
        raise SdoptError(f"LoRA {loras / 'style.safetensors'} does not fit this model", field="prompt")

    monkeypatch.setattr(tiny_pipeline, "check_request", refuse)
    with running_server(tiny_pipeline, start_worker=False, lora_dir=str(loras)) as (url, _):
        answer = httpx.post(url + "/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, "steps": 1}, timeout=30)
    assert answer.status_code == 422 and "LoRA loras/style.safetensors does not fit" in answer.text, answer.text
    assert "alice" not in answer.text and str(tmp_path) not in answer.text, answer.text


def test_a_server_folder_is_named_where_its_path_ends_in_an_error():
    """Worker.shown, which names the server's folders in what clients read: a folder that ended a sentence ("... in
    /srv/alice/links.") kept its absolute path; a longer name (/srv/alice/links.old, /srv/alice/linksx) is another path."""
    from sdopt.serve.worker import Worker

    worker = Worker(object())
    worker.shown_folders = {"/srv/alice/links": "links", "/srv/alice/links/sub": "sub"}
    assert worker.shown("no image in /srv/alice/links.") == "no image in links."
    assert worker.shown("'/srv/alice/links/sub/0.png' and /srv/alice/links: gone") == "'sub/0.png' and links: gone"
    assert worker.shown("/srv/alice/links.old and /srv/alice/linksx") == "/srv/alice/links.old and /srv/alice/linksx"


def test_names_the_locale_cannot_decode_are_answered_as_text(tiny_pipeline, tmp_path, monkeypatch):
    """Under LC_ALL=C (PYTHONUTF8=0) a non-ASCII folder, --name or LoRA file name is undecoded bytes (surrogates): every
    answer naming them failed to encode (500 on sd-models, options, /v1/models, loras, cmd-flags) and no <lora:NAME>
    tag matched the file. They are answered as text (sdopt.os_text.readable: U+FFFD for a byte that is not UTF-8)."""
    import os
    from pathlib import Path

    from sdopt.serve.server import model_name
    from sdopt.serve.settings import ServeSettings

    assert model_name("/m/x", ServeSettings(name="caf\udcc3\udca9")) == "café"
    name = model_name(os.fsdecode(b"/models/mod\xe8le"), ServeSettings())
    monkeypatch.setattr(tiny_pipeline, "folder", Path(os.fsdecode(str(tmp_path).encode() + b"/mod\xe8le")))
    loras = tmp_path / os.fsdecode(b"lor\xe8s")
    loras.mkdir()
    (loras / os.fsdecode(b"caf\xe9.safetensors")).write_bytes(b"")
    with running_server(tiny_pipeline, name=name, start_worker=False, lora_dir=str(loras)) as (url, _):
        for path in ("/sdapi/v1/sd-models", "/sdapi/v1/options", "/v1/models", "/sdapi/v1/loras", "/sdapi/v1/cmd-flags"):
            assert httpx.get(url + path).status_code == 200, path
        assert httpx.get(url + "/sdapi/v1/loras").json()[0]["name"] == "caf\ufffd"
        assert httpx.get(url + "/v1/models").json()["data"][0]["id"] == "mod\ufffdle"
