import pytest

from sdopt import GenerateRequest, SdoptError


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("height", 100, "multiple of 8"),
        ("width", 4096, "between 64 and 2048"),
        ("height", 56, "between 64 and 2048"),
        ("steps", 0, "from 1 to 1000"),
        ("steps", 1001, "from 1 to 1000"),
        ("steps", True, "must be an integer"),
        ("guidance_scale", -1.0, "finite number from 0 to 50"),
        ("guidance_scale", float("nan"), "finite number from 0 to 50"),
        ("guidance_scale", "7.5", "finite number from 0 to 50"),
        ("num_images", 0, "from 1 to 64"),
        ("seed", -1, "from 0 to"),
        ("seed", "7", "must be an integer"),
        ("prompt", 5, "must be a string or a list of strings"),
        ("eta", -0.1, "eta=-0.1: must be a number from 0 to 1"),
        ("eta", 1.5, "eta=1.5: must be a number from 0 to 1"),
        ("eta", float("nan"), "must be a number from 0 to 1"),
        ("eta", "0.3", "must be a number from 0 to 1"),
        ("eta", True, "must be a number from 0 to 1"),
    ],
)
def test_bad_fields_are_refused_with_a_reason(field, value, message):
    with pytest.raises(SdoptError, match=message):
        GenerateRequest(**{"prompt": "x", field: value}).validate()


def test_a_misspelt_field_is_an_sdopt_error_naming_it():
    """GenerateRequest(stpes=2) was Python's TypeError from the dataclass's __init__, where every other wrong argument is
    an SdoptError (the README's promise); copies and replace() still build requests as before."""
    import copy
    import dataclasses

    with pytest.raises(SdoptError, match=r"no field 'stpes' \(did you mean steps\?\)") as caught:
        GenerateRequest(prompt="x", stpes=2)
    assert caught.value.field == "stpes"
    request = GenerateRequest(prompt="x", steps=3)
    assert dataclasses.replace(request, steps=4).steps == 4 and copy.deepcopy(request) == request


def test_help_shows_the_fields_and_what_the_types_are():
    """help(sdopt.GenerateRequest) showed 'GenerateRequest(*args, **kwargs)' twice, as its signature and as its only
    doc (the dataclass's made-up one, read from the __new__ that names a misspelt field), and GenerateResult its field
    list and nothing more: the README's public types said neither what their fields are nor what they are for."""
    import inspect

    from sdopt import GenerateResult

    assert list(inspect.signature(GenerateRequest).parameters)[:4] == ["prompt", "negative_prompt", "seed", "steps"]
    for cls in (GenerateRequest, GenerateResult):
        assert not cls.__doc__.startswith(cls.__name__ + "("), cls
        assert "sdopt.load" in cls.__doc__


def test_a_missing_prompt_or_a_field_given_twice_is_an_sdopt_error():
    """GenerateRequest() and GenerateRequest("a", prompt="b") were Python's TypeError from the dataclass's __init__; copy
    and pickle, which build a request without calling it (cls.__new__(cls)), still do."""
    import copy
    import pickle

    for args, kwargs, message in (((), {}, "needs a prompt"), ((), {"seed": 3}, "needs a prompt"),
                                  (("a",), {"prompt": "b"}, "prompt given twice"), (tuple("x" * 22), {}, "22 fields given by position")):
        with pytest.raises(SdoptError, match=message):
            GenerateRequest(*args, **kwargs)
    request = GenerateRequest("x", steps=3)
    assert copy.deepcopy(request) == request == pickle.loads(pickle.dumps(request)) == copy.copy(request)


def test_a_strength_given_without_an_image_is_refused_but_the_default_is_not():
    """GenerateRequest(prompt=..., strength=0.5) ran text-to-image and dropped the strength unsaid (sdopt generate refuses
    --strength without --init-image); the default strength, kept through copies, pickles and replace(), is no strength given."""
    import copy
    import dataclasses
    import json
    import pickle

    for strength in (0.5, 0.8):
        with pytest.raises(SdoptError, match=rf"strength={strength} is how much of the init image is repainted: give init_image") as caught:
            GenerateRequest(prompt="x", strength=strength).validate()
        assert caught.value.field == "strength"
    request = GenerateRequest(prompt="x")
    for same in (request, copy.deepcopy(request), pickle.loads(pickle.dumps(request)), dataclasses.replace(request, steps=3)):
        assert same.validate().strength == 0.8
    assert json.loads(json.dumps(request.to_dict()))["strength"] == 0.8


def test_prompt_lists_and_negative_prompts():
    r = GenerateRequest(prompt=["a", "b"], negative_prompt="blurry", num_images=3)
    assert r.prompts == ["a", "b"]
    assert r.negative_prompts == ["blurry", "blurry"]
    assert r.batch_size == 6
    assert GenerateRequest(prompt="a").negative_prompts == [""]
    with pytest.raises(SdoptError, match="negative prompts"):
        GenerateRequest(prompt=["a", "b", "c"], negative_prompt=["x", "y"]).validate()


def test_guidance_at_or_below_one_disables_the_unconditional_pass():
    assert GenerateRequest(prompt="a", guidance_scale=1.0).uses_guidance is False
    assert GenerateRequest(prompt="a", guidance_scale=1.01).uses_guidance is True


def test_numpy_numbers_are_taken_as_pythons():
    """np.random's seeds and np.float32 scales validate and serialise as ints and floats; numpy's bool is no integer."""
    import json

    import numpy as np

    from sdopt import GenerateRequest, SdoptError

    request = GenerateRequest(prompt="x", seed=np.int64(3), seeds=np.array([1, 2]), steps=np.int32(4), guidance_scale=np.float32(5.5), num_images=2)
    request.validate()
    assert (request.seed, request.seeds, request.steps, request.guidance_scale) == (3, [1, 2], 4, 5.5)
    assert type(request.seed) is int and type(request.guidance_scale) is float and json.dumps(request.to_dict())
    with pytest.raises(SdoptError, match="seed="):
        GenerateRequest(prompt="x", seed=np.bool_(True)).validate()


def _sideways_jpeg(path):
    """A 24x16 picture, red on its left half, stored as a camera does: turned 90 degrees, EXIF orientation 6."""
    from PIL import Image

    picture = Image.new("RGB", (24, 16), "blue")
    picture.paste("red", (0, 0, 12, 16))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to show
    picture.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif.tobytes(), quality=95)


def test_an_exif_rotated_init_image_is_read_the_right_way_up(tmp_path):
    """A phone's portrait JPEG was repainted lying on its side: the CLI and the server read the stored pixels and
    ignored EXIF's orientation, which Diffusers' load_image and AUTOMATIC1111 apply."""
    from sdopt.input_images import open_image
    from sdopt.serve.images import read_image

    _sideways_jpeg(tmp_path / "photo.jpg")
    for image in (open_image(str(tmp_path / "photo.jpg"), "--init-image"),
                  read_image((tmp_path / "photo.jpg").read_bytes(), "init_images", 2**20, 2**20)):
        assert image.size == (24, 16)
        red, _, blue = image.convert("RGB").getpixel((2, 8))
        assert red > 200 and blue < 60


def test_a_png_whose_text_chunk_inflates_past_pils_limit_is_refused_in_one_line(tmp_path):
    """A 2 kB PNG whose zTXt chunk inflates to 2 MiB: PIL stops at its MAX_TEXT_CHUNK with a ValueError, which the readers
    did not catch: a traceback from generate --init-image/--mask/--parameters-from, a 500 from every server route taking an
    image (AUTOMATIC1111's img2img and png-info, OpenAI's edits), where a bad image is one line or a 422."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from sdopt.input_images import open_image
    from sdopt.serve.errors import RequestError
    from sdopt.serve.images import read_image

    info = PngInfo()
    info.add_text("parameters", "a" * 2**21, zip=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "bomb.png", pnginfo=info)
    with pytest.raises(SdoptError, match=r"--init-image .*bomb.png: not an image sdopt can read .*MAX_TEXT_CHUNK"):
        open_image(str(tmp_path / "bomb.png"), "--init-image")
    with pytest.raises(RequestError, match="init_images: .*MAX_TEXT_CHUNK"):
        read_image((tmp_path / "bomb.png").read_bytes(), "init_images", 2**20, 2**20)


def test_a_16_bit_grayscale_init_image_keeps_its_greys(tmp_path):
    """A 16-bit PNG opens as PIL's I;16, whose conversion to RGB clips every value above 255: mid-grey came out white,
    and the image was repainted from a blank page (CLI and server alike)."""
    import numpy as np
    from PIL import Image

    from sdopt.input_images import open_image
    from sdopt.serve.images import read_image

    Image.fromarray(np.full((8, 8), 32896, np.uint16)).save(tmp_path / "grey16.png")  # 128 * 257
    for image in (open_image(str(tmp_path / "grey16.png"), "--init-image"),
                  read_image((tmp_path / "grey16.png").read_bytes(), "init_images", 2**20, 2**20)):
        assert image.convert("RGB").getpixel((0, 0)) == (128, 128, 128)
