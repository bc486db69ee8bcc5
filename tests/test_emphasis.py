"""AUTOMATIC1111's prompt emphasis, (word:1.2) and the like (sdopt.runtime.emphasis): parsed as AUTOMATIC1111 parses
it, each token's hidden state weighted and the row scaled back to its mean, pooled outputs untouched; a prompt
without the syntax encodes exactly as with emphasis off; AUTOMATIC1111's API reads prompts so, the others when asked."""

import numpy as np
import pytest
from PIL import Image

from sdopt import GenerateRequest
from sdopt.cli import main
from sdopt.runtime.emphasis import parse, weighted_ids

from conftest import SMALL

# The examples AUTOMATIC1111 documents for its parser (modules/prompt_parser.py), with the weights it gives.
A1111_EXAMPLES = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55), (", sun, ", 1.1),
      ("sky", 1.4641000000000006), (".", 1.1)]),
]


# Beyond AUTOMATIC1111's examples: what a user may type, never an error.
EDGES = [
    ("(x:....)", [("x:....)", 1.1)]),  # not a number: ":....)" is text, and the bracket it would close stays open
    ("(x:-1)", [("x", -1.0)]),
    ("((a", [("a", 1.1 * 1.1)]),
    (")))]]]", [(")))]]]", 1.0)]),  # nothing open: the brackets are text
    ("", [("", 1.0)]),
]


@pytest.mark.parametrize("text,expected", A1111_EXAMPLES + EDGES)
def test_prompts_parse_as_automatic1111_parses_them(text, expected):
    assert parse(text) == expected


def _request(prompt: str, **extra) -> GenerateRequest:
    return GenerateRequest(**{**SMALL, "prompt": prompt, **extra})


def test_a_prompt_without_the_syntax_is_the_same_prompt(tiny_pipeline):
    tokenizer = tiny_pipeline.tokenizer
    texts = ["a red fox in the snow", "", "word " * 100]  # plain, empty, longer than 77 tokens
    ids, weights = weighted_ids(tokenizer, texts)
    assert np.array_equal(ids, tiny_pipeline._tokenize(tokenizer, texts)) and np.all(weights == 1.0)
    plain = tiny_pipeline.generate(_request("a red fox in the snow", negative_prompt="blurry"))
    read = tiny_pipeline.generate(_request("a red fox in the snow", negative_prompt="blurry", prompt_emphasis=True))
    assert np.array_equal(plain.latents, read.latents)


def _weighted_by_hand(hidden: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUTOMATIC1111's formula for one row: z * w, then z * (mean before / mean after) — where the means are not
    rounding noise (the toys' final layer norm has no bias: see test_a_mean_that_is_noise_is_not_scaled_back)."""
    scaled = hidden * weights[:, None]
    return scaled * (hidden.mean() / scaled.mean()) if abs(hidden.mean()) > 1e-3 * np.abs(scaled).mean() else scaled


def test_weights_scale_the_tokens_hidden_states_and_keep_the_rows_mean(tiny_pipeline):
    tokenizer, encoder = tiny_pipeline.tokenizer, tiny_pipeline.components["text_encoder"]
    request = _request("a (red:1.5) fox in the [snow]", guidance_scale=1.0, prompt_emphasis=True)
    encoded = tiny_pipeline.encode_prompts(request)["encoder_hidden_states"][0]
    text_ids = tiny_pipeline._tokenize(tokenizer, ["a red fox in the snow"])  # the text without the syntax
    hidden = encoder(input_ids=text_ids)["last_hidden_state"][0]
    red, snow = tokenizer("red", add_special_tokens=False).input_ids, tokenizer("snow", add_special_tokens=False).input_ids
    weights = np.ones(len(text_ids[0]), dtype=np.float32)
    weights[[i for i, t in enumerate(text_ids[0]) if t in red]] = 1.5
    weights[[i for i, t in enumerate(text_ids[0]) if t in snow]] = 1 / 1.1
    assert (weights != 1).sum() == len(red) + len(snow)
    np.testing.assert_allclose(encoded, _weighted_by_hand(hidden, weights), rtol=1e-6, atol=1e-6)
    assert abs(float(encoded.mean()) - float(hidden.mean())) <= 1e-6 * abs(float(hidden.mean())) + 1e-7
    # An escaped bracket is the bracket itself.
    literal = tiny_pipeline.encode_prompts(_request("a \\(red\\) fox", guidance_scale=1.0, prompt_emphasis=True))["encoder_hidden_states"]
    as_text = tiny_pipeline.encode_prompts(_request("a (red) fox", guidance_scale=1.0))["encoder_hidden_states"]
    assert np.array_equal(literal, as_text)
    off = tiny_pipeline.generate(_request("a (red:1.5) fox"))
    on = tiny_pipeline.generate(_request("a (red:1.5) fox", prompt_emphasis=True))
    assert not np.array_equal(off.latents, on.latents)


def test_a_mean_that_is_noise_is_not_scaled_back():
    """weigh() scales a weighted row back to its mean as AUTOMATIC1111 does, float for float — unless either mean is
    rounding noise next to the row's values (the toys' text encoders: ~1e-9 of them), where the ratio would scale the
    row by noise, and differently on each backend; such a row is weighted only."""
    from sdopt.runtime.emphasis import weigh

    rng = np.random.default_rng(0)
    weights = np.ones((2, 6), dtype=np.float32)
    weights[:, 2] = 1.5
    trained = rng.standard_normal((1, 6, 8)).astype(np.float32) + 0.3  # a mean well away from zero, as a trained encoder's
    centred = trained - trained.mean()  # a mean of rounding noise
    out = weigh({"last_hidden_state": np.concatenate([trained, centred]), "pooler_output": np.ones((2, 8), np.float32)}, weights)
    hidden = out["last_hidden_state"]
    scaled = trained[0] * weights[0][:, None]
    np.testing.assert_array_equal(hidden[0], scaled * (trained[0].mean() / scaled.mean()))
    np.testing.assert_array_equal(hidden[1], centred[0] * weights[1][:, None])
    assert np.array_equal(out["pooler_output"], np.ones((2, 8), np.float32))


def test_sdxl_weights_both_encoders_and_leaves_the_pooled_embedding(sdxl_tiny):
    import sdopt

    with sdopt.load(sdxl_tiny) as pipe:
        weighted = pipe.encode_prompts(_request("a (fox:1.5)", guidance_scale=1.0, prompt_emphasis=True))
        plain = pipe.encode_prompts(_request("a fox", guidance_scale=1.0))
        first_encoder = pipe.components["text_encoder"](input_ids=np.zeros((1, 77), dtype=np.int64))
    assert np.array_equal(weighted["text_embeds"], plain["text_embeds"])
    split = first_encoder["last_hidden_state"].shape[-1]  # the first encoder's width: where the two are concatenated
    first, second = weighted["encoder_hidden_states"][..., :split], weighted["encoder_hidden_states"][..., split:]
    assert not np.array_equal(first, plain["encoder_hidden_states"][..., :split])
    assert not np.array_equal(second, plain["encoder_hidden_states"][..., split:])


def test_automatic1111s_api_reads_emphasis_and_the_png_says_so(tiny_model, tiny_pipeline, tmp_path):
    pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'sdopt[serve]'")
    httpx = pytest.importorskip("httpx", reason="pip install 'sdopt[serve-test]'")
    import base64
    import io

    from serving import running_server, wait_for

    prompt = "a (red:1.5) circle"
    with running_server(tiny_pipeline) as (url, app):
        a1111 = httpx.post(url + "/sdapi/v1/txt2img", json={"prompt": prompt, **{k: SMALL[k] for k in ("width", "height", "steps")},
                                                             "seed": 4, "sampler_name": "Euler"}, timeout=60).json()
        native = httpx.post(url + "/v1/jobs", json={"prompt": prompt, "width": 64, "height": 64, "steps": 4, "seed": 4, "scheduler": "euler",
                                                    "guidance_scale": 7.0}).json()
        done = wait_for(lambda: (j := httpx.get(f"{url}/v1/jobs/{native['id']}").json())["status"] not in ("queued", "running") and j)
        openai_body = {"prompt": prompt, "size": "64x64", "sdopt_seed": 4, "sdopt_steps": 4, "sdopt_guidance_scale": 7.0}
        plain_openai = httpx.post(url + "/v1/images/generations", json=openai_body, timeout=60).json()
        weighted_openai = httpx.post(url + "/v1/images/generations", json={**openai_body, "sdopt_prompt_emphasis": True}, timeout=60).json()
    image = Image.open(io.BytesIO(base64.b64decode(a1111["images"][0])))
    alone = tiny_pipeline.generate(GenerateRequest(prompt=prompt, seed=4, seeds=[4], steps=4, height=64, width=64, guidance_scale=7.0,
                                                   scheduler="euler", prompt_emphasis=True))
    assert np.array_equal(np.asarray(image), np.asarray(alone.images[0]))
    assert not np.array_equal(np.asarray(Image.open(io.BytesIO(base64.b64decode(done["images"][0])))), np.asarray(image))
    assert "Emphasis: Original" in image.info["parameters"] and "Emphasis: None" in done["infotexts"][0]  # sdopt without emphasis: AUTOMATIC1111 reads a missing key as on
    openai_images = [Image.open(io.BytesIO(base64.b64decode(r["data"][0]["b64_json"]))) for r in (plain_openai, weighted_openai)]
    assert ["Emphasis: Original" in im.info["parameters"] for im in openai_images] == [False, True]
    # The PNG makes the image again, emphasis and all.
    png = tmp_path / "a1111.png"
    image.save(png, pnginfo=__import__("sdopt.infotext", fromlist=["png_info"]).png_info(image))
    assert main(["generate", str(tiny_model), "--parameters-from", str(png), "-q", "-o", str(tmp_path / "again.png")]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "again.png")), np.asarray(image))


def test_a_long_prompt_is_read_in_chunks_of_75_tokens(tiny_pipeline, monkeypatch):
    """AUTOMATIC1111's chunks: 75 tokens each, a full chunk ending after a comma within 20 tokens of its end, every
    chunk encoded alone and the hidden states joined; the negative prompt padded with empty chunks to the same
    length. An artifact built for 77 tokens reads the first chunk and says so."""
    import warnings

    from sdopt.runtime.emphasis import chunks

    tokenizer, encoder = tiny_pipeline.tokenizer, tiny_pipeline.components["text_encoder"]
    assert tokenizer("a", add_special_tokens=False).input_ids != tokenizer(",", add_special_tokens=False).input_ids
    text = "a " * 70 + ", " + "a " * 10  # 70 tokens, a comma, 10 more: the comma is 5 tokens from the full chunk's end
    assert [len(ids) for ids, _ in chunks(tokenizer, text)] == [71, 10]
    long = ", ".join(f"a (red:1.2) fox number {i}" for i in range(20))
    parts = chunks(tokenizer, long)
    all_ids = tokenizer("".join(run for run, _ in parse(long)), add_special_tokens=False).input_ids
    assert len(parts) >= 2 and all(len(ids) <= 75 for ids, _ in parts) and sum((ids for ids, _ in parts), []) == all_ids

    request = _request(long, negative_prompt="blurry", prompt_emphasis=True)
    hidden = tiny_pipeline.encode_prompts(request)["encoder_hidden_states"]
    assert hidden.shape[1] == 77 * len(parts)
    ids, weights = weighted_ids(tokenizer, [long], max_chunks=None)
    first = encoder(input_ids=ids[:, :77])["last_hidden_state"][0]
    np.testing.assert_allclose(hidden[1, :77], _weighted_by_hand(first, weights[0, :77]), rtol=1e-6, atol=1e-6)  # row 1: the prompt
    empty = encoder(input_ids=weighted_ids(tokenizer, [""])[0])["last_hidden_state"][0]
    np.testing.assert_array_equal(hidden[0, 77:154], empty)  # row 0: the negative, padded with an empty chunk
    whole = tiny_pipeline.generate(request)
    assert whole.warnings == [] and np.isfinite(whole.latents).all()

    monkeypatch.setattr(type(tiny_pipeline), "max_prompt_chunks", property(lambda self: 1))  # as a static-shape artifact
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        cut = tiny_pipeline.generate(request)
    assert tiny_pipeline.encode_prompts(request)["encoder_hidden_states"].shape[1] == 77
    assert any("built for one (static shapes), so it reads the first" in w for w in cut.warnings)
    assert not np.array_equal(cut.latents, whole.latents)


def test_a_long_prompt_batches_only_with_prompts_as_long(tiny_pipeline):
    """In the server, jobs share a call only with jobs whose prompts need as many chunks (every row of a call is padded
    to the most any needs): each image is still the one its request gets alone."""
    from serving import run_queued
    from sdopt.serve import jobs as J

    small = {"width": 64, "height": 64, "steps": 4, "prompt_emphasis": True}
    prompts = [(", ".join(f"a (red:1.2) fox number {i}" for i in range(20)), 1), ("a (fox:1.2)", 2), ("a fox, [snow]", 3)]
    specs = [J.JobSpec(prompt=p, seed=s, **small) for p, s in prompts]
    for spec in specs:  # what submission does
        spec.text_chunks = tiny_pipeline.prompt_chunks([spec.prompt, spec.negative_prompt])
    assert specs[0].text_chunks > 1 and specs[1].batch_key() == specs[2].batch_key() != specs[0].batch_key()
    jobs = run_queued(tiny_pipeline, specs)
    assert [job.batch_size for job in jobs] == [1, 2, 2]
    for job, (prompt, seed) in zip(jobs, prompts):
        alone = tiny_pipeline.generate(GenerateRequest(prompt=prompt, seed=seed, seeds=[seed], steps=4, height=64, width=64, prompt_emphasis=True))
        diff = np.abs(np.asarray(job.images[0], dtype=np.int16) - np.asarray(alone.images[0], dtype=np.int16)).max()
        assert diff <= 1, f"{prompt[:20]}: batched differs from alone by {diff} levels"


# AUTOMATIC1111's BREAK: a run of its own (its marker, weight -1), the spaces around it gone; a word in capitals only.
BREAKS = [
    ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
    ("BREAK a", [("", 1.0), ("BREAK", -1.0), ("a", 1.0)]),
    ("a BREAK BREAK b", [("a", 1.0), ("BREAK", -1.0), ("", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
    ("BREAKfast, a break", [("BREAKfast, a break", 1.0)]),
    ("(a BREAK b:1.2)", [("a", 1.2), ("BREAK", -1.0), ("b", 1.2)]),  # still a BREAK in brackets (AUTOMATIC1111: the text "BREAK")
]


@pytest.mark.parametrize("text,expected", BREAKS)
def test_break_parses_as_automatic1111s_marker(text, expected):
    assert parse(text) == expected


def test_break_starts_a_new_chunk(tiny_pipeline, monkeypatch):
    """Each part before and after a BREAK is a chunk of its own, encoded alone (an empty one too, as AUTOMATIC1111's
    next_chunk); a BREAK at the end adds none; an artifact built for 77 tokens reads the part before the first."""
    from sdopt.runtime.emphasis import chunks

    tokenizer = tiny_pipeline.tokenizer
    fox, snow = (tokenizer(t, add_special_tokens=False).input_ids for t in ("a red fox", "in the snow"))
    assert [ids for ids, _ in chunks(tokenizer, "a red fox BREAK in the snow")] == [fox, snow]
    assert [ids for ids, _ in chunks(tokenizer, "BREAK a red fox BREAK")] == [[], fox]
    assert [ids for ids, _ in chunks(tokenizer, "a red fox BREAK BREAK in the snow")] == [fox, [], snow]

    hidden = tiny_pipeline.encode_prompts(_request("a red fox BREAK in the snow", guidance_scale=1.0, prompt_emphasis=True))["encoder_hidden_states"]
    alone = [tiny_pipeline.encode_prompts(_request(t, guidance_scale=1.0, prompt_emphasis=True))["encoder_hidden_states"] for t in ("a red fox", "in the snow")]
    np.testing.assert_array_equal(hidden, np.concatenate(alone, axis=1))
    # Without emphasis BREAK is text, as in Diffusers.
    plain = tiny_pipeline.encode_prompts(_request("a red fox BREAK in the snow", guidance_scale=1.0))["encoder_hidden_states"]
    assert plain.shape[1] == 77 and not np.array_equal(plain, alone[0])

    monkeypatch.setattr(type(tiny_pipeline), "max_prompt_chunks", property(lambda self: 1))  # as a static-shape artifact
    cut = tiny_pipeline.encode_prompts(_request("a red fox BREAK in the snow", guidance_scale=1.0, prompt_emphasis=True))["encoder_hidden_states"]
    np.testing.assert_array_equal(cut, alone[0])


def test_tokenizer_calls_from_threads_run_one_at_a_time(tiny_pipeline):
    """A server checks one request's prompt (prompt_chunks, truncated_prompts) on its event loop while its worker
    encodes another's: transformers' tokenizer keeps padding as state of its backend during a call, and two calls at
    once padded the worker's rows to several lengths (measured: 45 of 2,419 encodes failed, 'setting an array element
    with a sequence'), which failed the jobs with a 500."""
    import copy
    import threading
    import time

    class Spy:  # the real tokenizer, each call slowed so that calls from two threads would overlap
        def __init__(self, tokenizer):
            self.tokenizer, self.inside, self.most = tokenizer, 0, 0

        def __call__(self, *args, **kwargs):
            self.inside += 1
            self.most = max(self.most, self.inside)
            time.sleep(0.01)
            try:
                return self.tokenizer(*args, **kwargs)
            finally:
                self.inside -= 1

        def __getattr__(self, name):
            return getattr(self.tokenizer, name)

    pipe = copy.copy(tiny_pipeline)  # its own tokenizers; the same lock
    spy = Spy(tiny_pipeline.tokenizer)
    pipe.tokenizers, pipe.tokenizer, pipe._vocabularies = [spy], spy, None
    pipe.vocabularies  # built before the threads start
    request = GenerateRequest(prompt=["a red circle", "a blue square"], steps=1, height=64, width=64)
    checking = threading.Thread(target=lambda: [pipe.prompt_chunks([f"word{i} (red:1.2)", ""]) for i in range(5)])
    checking.start()
    for _ in range(5):
        pipe.encode_prompts(request)
        pipe.truncated_prompts(request)
    checking.join()
    assert spy.most == 1


def test_prompt_editing_and_alternation_are_said_not_read_silently(tiny_pipeline):
    """AUTOMATIC1111's prompt editing ([cat:dog:0.5]: cat, then dog from half the steps) and alternation ([cat|dog])
    are not done here: parse reads them as [word], the text "cat:dog:0.5" weighted ÷1.1, which went to the text
    encoder without a word (a pasted AUTOMATIC1111 prompt). Now the result's warnings and sdopt_ignored name them;
    emphasis brackets, escaped ones and plain-text prompts are not named."""
    pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'sdopt[serve]'")
    from sdopt.runtime.request_checks import notices
    from sdopt.serve.a1111_fields import ignored_fields
    from sdopt.serve.a1111_models import Txt2ImgRequest

    prompt, negative = "a [cat:dog:0.5] on a (hill:1.2), [sun], \\[x:1\\]", "[blur|noise]"
    request = _request(prompt, negative_prompt=negative, prompt_emphasis=True)
    said = notices(tiny_pipeline, request, request, None, False)
    assert [s for s in said if "AUTOMATIC1111's prompt editing [cat:dog:0.5] is not done" in s]
    assert [s for s in said if "alternation [blur|noise]" in s] and len(said) == 2, said
    assert notices(tiny_pipeline, request, _request(prompt, negative_prompt=negative), None, False) == []  # plain text
    body = Txt2ImgRequest(prompt=prompt, negative_prompt=negative)
    assert ignored_fields(body, None) == ["prompt: prompt editing [cat:dog:0.5]", "negative_prompt: alternation [blur|noise]"]
    assert ignored_fields(Txt2ImgRequest(prompt="a (hill:1.2) [sun] [x:y]"), None) == []
