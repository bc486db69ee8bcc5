"""Textual inversion embeddings (sdopt.embeddings): a prompt's word read as the embedding's vectors, as Diffusers'
load_textual_inversion reads them (SD and SDXL, prompt and negative, to the bit on torch); a prompt without the word
encoded exactly as without embeddings; fused at export, the ONNX artifact makes the torch image; AUTOMATIC1111's
rules (the file name is the word, matched on tokens longest first, an embedding kept whole in one 75-token chunk, a
folder's unfit files skipped); the refusals; serve's --embeddings-dir and /sdapi/v1/embeddings."""

import json

import numpy as np
import pytest

import sdopt
from sdopt import GenerateRequest
from sdopt.cli import main
from sdopt.embeddings import parse_embeddings, read_embedding
from sdopt.embeddings.vocabulary import Vocabulary
from sdopt.errors import SdoptError
from sdopt.runtime import emphasis

from conftest import SMALL

PROMPT = "a red fox, mystyle, in the snow"


@pytest.fixture(scope="module")
def embedding(tiny_model, tmp_path_factory):
    from sdopt.zoo.embedding import write_embedding

    return write_embedding(tiny_model, tmp_path_factory.mktemp("emb") / "mystyle.safetensors")


@pytest.fixture(scope="module")
def sdxl_embedding(sdxl_tiny, tmp_path_factory):
    from sdopt.zoo.embedding import write_embedding

    return write_embedding(sdxl_tiny, tmp_path_factory.mktemp("emb-xl") / "mystyle.safetensors", vectors=3)


def _request(prompt: str = PROMPT, **extra) -> GenerateRequest:
    return GenerateRequest(**{**SMALL, "prompt": prompt, "negative_prompt": "blurry, mystyle", **extra})


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_the_word_reads_as_diffusers_load_textual_inversion_reads_it(request, family):
    """Diffusers given the same vectors under the same token: the same hidden states (and SDXL's pooled embedding),
    prompt and negative. It adds tokens to its tokenizer; sdopt matches the word's tokens (AUTOMATIC1111's way)."""
    from safetensors.torch import load_file

    if family == "sd":
        from diffusers import StableDiffusionPipeline as Diffusers

        model, path = request.getfixturevalue("tiny_model"), request.getfixturevalue("embedding")
    else:
        from diffusers import StableDiffusionXLPipeline as Diffusers

        model, path = request.getfixturevalue("sdxl_tiny"), request.getfixturevalue("sdxl_embedding")
    pipeline = sdopt.load(model)
    assert pipeline.add_embeddings([path]) == {}
    ours = pipeline.encode_prompts(_request())
    theirs = Diffusers.from_pretrained(model)
    vectors = load_file(path)
    if family == "sd":
        theirs.load_textual_inversion(vectors["emb_params"], token="mystyle", text_encoder=theirs.text_encoder, tokenizer=theirs.tokenizer)
        positive, negative = theirs.encode_prompt(PROMPT, "cpu", 1, True, "blurry, mystyle")
    else:
        for key, encoder, tokenizer in (("clip_l", theirs.text_encoder, theirs.tokenizer), ("clip_g", theirs.text_encoder_2, theirs.tokenizer_2)):
            theirs.load_textual_inversion(vectors[key], token="mystyle", text_encoder=encoder, tokenizer=tokenizer)
        positive, negative, pooled, negative_pooled = theirs.encode_prompt(PROMPT, device="cpu", num_images_per_prompt=1,
                                                                           do_classifier_free_guidance=True, negative_prompt="blurry, mystyle")
        np.testing.assert_allclose(ours["text_embeds"], np.concatenate([negative_pooled.detach().numpy(), pooled.detach().numpy()]), atol=1e-6)
    hidden = np.concatenate([negative.detach().numpy(), positive.detach().numpy()])
    np.testing.assert_allclose(ours["encoder_hidden_states"], hidden, atol=1e-6)
    without = sdopt.load(model).encode_prompts(_request())["encoder_hidden_states"]
    assert np.abs(without - hidden).max() > 1e-2  # the word was read as the embedding, not as its letters


def test_a_prompt_without_the_word_is_the_same_prompt(tiny_model, embedding):
    plain, loaded = sdopt.load(tiny_model), sdopt.load(tiny_model)
    loaded.add_embeddings(embedding)
    request = _request("a red fox in the snow", negative_prompt="blurry")
    assert np.array_equal(plain.generate(request).latents, loaded.generate(request).latents)
    assert not np.array_equal(plain.generate(_request()).latents, loaded.generate(_request()).latents)
    # Its own tokenization, used once embeddings are loaded, pads and cuts as the tokenizer does (long text included).
    texts = ["a red fox in the snow", "", "word " * 100]
    vocabulary = loaded.vocabularies[0]
    assert vocabulary and np.array_equal(vocabulary.input_ids(texts), plain._tokenize(plain.tokenizer, texts))
    assert not Vocabulary(plain.tokenizer)  # no embeddings: the tokenizer's own path


def test_the_word_is_matched_on_its_tokens_longest_first_and_weighted_with_emphasis(tiny_pipeline):
    tokenizer = tiny_pipeline.tokenizer
    vocabulary = Vocabulary(tokenizer, [("mystyle", 5000, 2), ("mystyle two", 6000, 3)])
    ids, sizes = vocabulary.tokens("a mystyle two, mystyle")
    a = tokenizer("a", add_special_tokens=False).input_ids
    comma = tokenizer(",", add_special_tokens=False).input_ids
    assert ids == [*a, 6000, 6001, 6002, *comma, 5000, 5001]  # "mystyle two" is the longer word
    assert sizes == [1] * len(a) + [3, 0, 0] + [1] * len(comma) + [2, 0]
    assert vocabulary.used("a mystyle two, mystyle") == ["mystyle two", "mystyle"]
    # (word:1.5) weighs each of its vectors.
    weighted, weights = emphasis.weighted_ids(tokenizer, ["(mystyle:1.5) fox"], vocabulary=vocabulary)
    assert [w for i, w in zip(weighted[0], weights[0]) if i >= 5000] == [1.5, 1.5]
    # An embedding that would straddle a chunk's end starts the next chunk (AUTOMATIC1111), never split.
    word = tokenizer("fox", add_special_tokens=False).input_ids
    filler = " ".join(["fox"] * ((emphasis.CHUNK - 1) // len(word)))
    chunks = emphasis.chunks(tokenizer, filler + " mystyle two", vocabulary)
    assert len(chunks[0][0]) > emphasis.CHUNK - 3 and chunks[1][0][:3] == [6000, 6001, 6002]


def test_fused_at_export_the_onnx_artifact_makes_the_torch_image(tiny_model, embedding, sdxl_embedding, tmp_path, capsys):
    folder = tmp_path / "embeddings"
    folder.mkdir()
    (folder / embedding.name).write_bytes(embedding.read_bytes())
    (folder / "xlstyle.safetensors").write_bytes(sdxl_embedding.read_bytes())  # for SDXL: a folder's unfit file is skipped
    out = tmp_path / "onnx"
    with pytest.warns(UserWarning, match="xlstyle left out"):
        assert main(["export", tiny_model.as_posix(), "--to", "onnx", "-o", str(out), "--embedding", str(folder), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "embedding  mystyle (4 vectors) from mystyle.safetensors" in printed
    record = json.loads((out / "sdopt.json").read_text())["export"]["embeddings"]
    assert [(r["name"], r["vectors"], r["first_ids"]) for r in record] == [("mystyle", 4, {"text_encoder": 1720})]
    torch_pipeline = sdopt.load(tiny_model)
    torch_pipeline.add_embeddings([embedding])
    onnx = sdopt.load(out)
    assert [e["name"] for e in onnx.embeddings] == ["mystyle"]  # read from the manifest, nothing to give
    assert onnx.add_embeddings([embedding]) == {}  # the same file: already in
    ours, exported = torch_pipeline.generate(_request()), onnx.generate(_request())
    assert np.abs(ours.latents - exported.latents).max() < 1e-4
    plain = sdopt.load(tiny_model).generate(_request())
    assert np.abs(plain.latents - exported.latents).max() > 1e-2
    other = tmp_path / "other.safetensors"
    other.write_bytes(embedding.read_bytes())
    with pytest.raises(SdoptError, match="reads only the embeddings fused at export: export it again with --embedding"):
        onnx.add_embeddings([other])
    (tmp_path / "edited").mkdir()
    edited = tmp_path / "edited" / embedding.name  # the same word, other content (its header's text changed)
    edited.write_bytes(embedding.read_bytes().replace(b"synthetic", b"Synthetic"))
    with pytest.raises(SdoptError, match="already has another embedding named 'mystyle'"):
        onnx.add_embeddings([edited])
    # sdopt generate with the artifact: the word needs no flag.
    assert main(["generate", str(out), "-p", PROMPT, "--height", "64", "--width", "64", "--steps", "2", "-o", str(tmp_path / "a.png"), "-q"]) == 0


def test_refusals(tiny_model, sdxl_tiny, embedding, sdxl_embedding, tmp_path, capsys):
    from safetensors.numpy import save_file

    def write(name, tensors):
        path = tmp_path / name
        save_file(tensors, path)
        return path

    pickle = tmp_path / "old.pt"
    pickle.write_bytes(b"\x80\x04")
    cases = {
        pickle: "safetensors only, never pickles",
        tmp_path / "missing.safetensors": "does not exist",
        write("many.safetensors", {"a": np.zeros((1, 32), np.float32), "b": np.zeros((1, 32), np.float32), "c": np.zeros(32, np.float32)}): "holds 3 tensors",
        write("long.safetensors", {"emb_params": np.zeros((76, 32), np.float32)}): "76 vectors",
        write("ints.safetensors", {"emb_params": np.zeros((2, 32), np.int64)}): "floating-point vectors",
    }
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\xff" * 20)
    cases[broken] = "cannot be read as safetensors"
    for path, message in cases.items():
        with pytest.raises(SdoptError, match=message):
            read_embedding(path)
    twin = tmp_path / "twin"
    twin.mkdir()
    (twin / "MyStyle.safetensors").write_bytes(embedding.read_bytes())
    with pytest.raises(SdoptError, match="both the word"):
        parse_embeddings([embedding, twin])
    with pytest.raises(SdoptError, match="made for SDXL"):
        sdopt.load(tiny_model).add_embeddings([sdxl_embedding])  # named, not found in a folder: refused
    wide = write("wide.safetensors", {"emb_params": np.zeros((2, 48), np.float32)})
    with pytest.raises(SdoptError, match="48 wide"):
        sdopt.load(tiny_model).add_embeddings(wide)
    # The CLI: one line before the load, nothing written.
    assert main(["generate", str(tiny_model), "-p", "x", "--embedding", str(pickle), "-o", str(tmp_path / "x.png")]) == 2
    assert "never pickles" in capsys.readouterr().err and not (tmp_path / "x.png").exists()
    assert main(["export", str(sdxl_tiny), "--to", "onnx", "-o", str(tmp_path / "xl"), "--embedding", str(embedding)]) == 2
    assert "made for a model with one text encoder" in capsys.readouterr().err and not (tmp_path / "xl").exists()


def test_a_file_name_the_locale_cannot_decode_is_its_word_in_utf8(tiny_model, embedding, tmp_path):
    """Under LC_ALL=C (PYTHONUTF8=0) `generate --embedding стиль.safetensors` died in the tokenizer with a TypeError
    traceback: the word held the name's undecoded bytes (surrogates). It is read in UTF-8, as the prompts are."""
    (tmp_path / "стиль.safetensors").write_bytes(embedding.read_bytes())
    undecoded = str(tmp_path / "стиль.safetensors".encode().decode("ascii", "surrogateescape"))  # as sys.argv holds it there
    assert read_embedding(undecoded).name == "стиль"
    assert read_embedding(undecoded).record({})["file"] == "стиль.safetensors"  # export's record in sdopt.json: text too
    assert sdopt.load(tiny_model).add_embeddings([undecoded]) == {}


def test_a_left_out_file_whose_name_the_locale_cannot_decode_is_listed_in_text(tmp_path):
    """Under LC_ALL=C (PYTHONUTF8=0) `sdopt serve --embeddings-dir` holding a file it left out (a LoRA, 名前.safetensors)
    answered GET /sdapi/v1/embeddings with a 500 (PydanticSerializationError: surrogates not allowed): the skipped list
    was keyed by the name's undecoded bytes. A name in Latin-1 bytes (café) is undecoded in any UTF-8 locale too."""
    import os

    from sdopt.embeddings import parse_embeddings

    with open(os.path.join(os.fsencode(tmp_path), b"caf\xe9.safetensors"), "wb") as f:
        f.write(b"\xff" * 20)
    skipped = {}
    assert parse_embeddings([tmp_path], skipped) == []
    assert list(skipped) == ["caf\ufffd"]


def test_serve_lists_and_reads_the_embeddings_folder(tiny_model, embedding, sdxl_embedding, tmp_path):
    import requests

    from serving import SMALL as SERVE_SMALL, running_server

    folder = tmp_path / "embeddings"
    folder.mkdir()
    (folder / embedding.name).write_bytes(embedding.read_bytes())
    (folder / "xlstyle.safetensors").write_bytes(sdxl_embedding.read_bytes())
    pipeline = sdopt.load(tiny_model)
    with pytest.warns(UserWarning, match="embedding xlstyle skipped"), running_server(pipeline, embeddings_dir=str(folder)) as (url, _app):
        listed = requests.get(f"{url}/sdapi/v1/embeddings", timeout=30).json()
        assert listed["loaded"] == {"mystyle": {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": 32, "vectors": 4}}
        assert list(listed["skipped"]) == ["xlstyle"]
        body = {**SERVE_SMALL, "seed": 3, "prompt": "a fox"}
        plain = requests.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=120).json()["images"][0]
        styled = requests.post(f"{url}/sdapi/v1/txt2img", json={**body, "prompt": "a fox, mystyle"}, timeout=120).json()["images"][0]
        assert plain != styled
        # A file added later is loaded by AUTOMATIC1111's refresh; the ones loaded stay.
        from sdopt.zoo.embedding import write_embedding

        write_embedding(tiny_model, folder / "later.safetensors", vectors=2, seed=1)
        assert requests.post(f"{url}/sdapi/v1/refresh-embeddings", timeout=30).status_code == 200
        listed = requests.get(f"{url}/sdapi/v1/embeddings", timeout=30).json()
        assert sorted(listed["loaded"]) == ["later", "mystyle"] and list(listed["skipped"]) == ["xlstyle"]


def test_the_png_names_the_embeddings_its_prompts_used_and_a_remake_without_them_is_warned(tiny_model, embedding, tmp_path, capsys):
    from PIL import Image

    from sdopt.file_reading import sha256_file
    from sdopt.infotext import embedding_hashes, parse_parameters

    out = tmp_path / "fox.png"
    flags = ["--height", "64", "--width", "64", "--steps", "2", "-q"]
    assert main(["generate", str(tiny_model), "-p", PROMPT, "-n", "blurry, mystyle", "--embedding", str(embedding), "-o", str(out), *flags]) == 0
    text = Image.open(out).info["parameters"]
    assert embedding_hashes(parse_parameters(text)) == {"mystyle": sha256_file(embedding)[:12]}  # AUTOMATIC1111's TI hashes, once
    assert 'TI hashes: "mystyle: ' in text
    capsys.readouterr()
    again = tmp_path / "again.png"
    assert main(["generate", str(tiny_model), "--parameters-from", str(out), "-o", str(again), *flags]) == 0
    assert "used the embeddings mystyle (its TI hashes), which this run does not have" in capsys.readouterr().err
    assert main(["generate", str(tiny_model), "--parameters-from", str(out), "--embedding", str(embedding), "-o", str(again), *flags]) == 0
    assert "TI hashes" not in capsys.readouterr().err
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(out)))
    # A prompt without the word writes none.
    plain = tmp_path / "plain.png"
    assert main(["generate", str(tiny_model), "-p", "a fox", "--embedding", str(embedding), "-o", str(plain), *flags]) == 0
    assert "TI hashes" not in Image.open(plain).info["parameters"]


def test_a_remake_on_another_backend_says_how_that_backend_takes_the_missing_embeddings(tiny_model, tiny_onnx_artifact, embedding,
                                                                                      tmp_path, capsys):
    """On an ONNX artifact the warning said 'give them with --embedding', which that backend refuses: it names the export."""
    flags = ["--height", "64", "--width", "64", "--steps", "2", "-q"]
    out = tmp_path / "fox.png"
    assert main(["generate", str(tiny_model), "-p", PROMPT, "--embedding", str(embedding), "-o", str(out), *flags]) == 0
    capsys.readouterr()
    assert main(["generate", str(tiny_onnx_artifact), "--parameters-from", str(out), "-o", str(tmp_path / "again.png"), *flags]) == 0
    err = capsys.readouterr().err
    assert "used the embeddings mystyle (its TI hashes)" in err and "give them with --embedding" not in err
    assert "this onnxruntime artifact reads only the embeddings fused at export (sdopt export MODEL --embedding FILE)" in err


def test_an_empty_embeddings_folder_is_said_once(tiny_model, tmp_path, recwarn):
    """generate checks the files named before the load and adds them after it: the empty folder was warned of by both."""
    (tmp_path / "none").mkdir()
    assert main(["generate", str(tiny_model), "-p", "a fox", "--embedding", str(tmp_path / "none"), "--height", "64", "--width", "64",
                 "--steps", "2", "-q", "-o", str(tmp_path / "fox.png")]) == 0
    assert sum("holds no .safetensors file" in str(w.message) for w in recwarn) == 1


def test_a_folder_of_odd_files_loads_what_it_can_and_says_what_it_left_out(tiny_model, embedding, tmp_path, capsys):
    """AUTOMATIC1111's folder rules: a file in it that is no embedding (a LoRA, a truncated file) or that reads as
    another one's word is skipped, never failing the rest (the QA sweep's cases); a link is a word of its own; files
    in sub-folders and .SAFETENSORS count. Named on its own, each of those files is refused in one line."""
    import os

    from safetensors.numpy import save_file

    folder = tmp_path / "embeddings"
    (folder / "sub").mkdir(parents=True)
    data = embedding.read_bytes()
    (folder / "mystyle.safetensors").write_bytes(data)
    (folder / "sub" / "Deeper.SAFETENSORS").write_bytes(data)
    os.symlink(folder / "mystyle.safetensors", folder / "alias.safetensors")
    (folder / "trunc.safetensors").write_bytes(data[:-20])
    save_file({"a.lora_A.weight": np.zeros((4, 32), np.float32), "a.lora_B.weight": np.zeros((32, 4), np.float32)}, folder / "lora.safetensors")
    (folder / "my style.safetensors").write_bytes(data)
    (folder / "my  style.safetensors").write_bytes(data[:-4] + b"\x00\x00\x80\x3f")  # another file, the same tokens
    pipeline = sdopt.load(tiny_model)
    skipped = pipeline.add_embeddings(folder)
    assert sorted(e["name"] for e in pipeline.embeddings) == ["Deeper", "alias", "my  style", "mystyle"]
    assert set(skipped) == {"trunc", "lora", "my style"}
    assert "truncated" in skipped["trunc"] and "holds 2 tensors" in skipped["lora"] and "the same tokens" in skipped["my style"]
    for name, message in (("trunc.safetensors", "truncated"), ("lora.safetensors", "holds 2 tensors")):
        assert main(["generate", str(tiny_model), "-p", "x", "--embedding", str(folder / name), "-o", str(tmp_path / "x.png")]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SdoptError, match="the same tokens"):
        sdopt.load(tiny_model).add_embeddings([folder / "my style.safetensors", folder / "my  style.safetensors"])
    # The export skips them alike (with a warning each) and fuses the rest.
    with pytest.warns(UserWarning, match="left out"):
        assert main(["export", str(tiny_model), "--to", "onnx", "-o", str(tmp_path / "onnx"), "--embedding", str(folder), "-q"]) == 0
    fused = json.loads((tmp_path / "onnx" / "sdopt.json").read_text())["export"]["embeddings"]
    assert sorted(r["name"] for r in fused) == ["Deeper", "alias", "my  style", "mystyle"]
    wide = tmp_path / "wide.safetensors"
    save_file({"emb_params": np.zeros((2, 48), np.float32)}, wide)
    with pytest.raises(SdoptError, match=r"its vectors are 48 wide; this model's text encoder takes 32$"):
        sdopt.load(tiny_model).add_embeddings(wide)


def test_a_pickled_embedding_in_a_folder_is_left_out_saying_so(tiny_model, embedding, tmp_path):
    """An AUTOMATIC1111 embeddings folder holds .pt files: they were passed over in silence (the word then meant nothing
    to prompts, and sdopt serve's list of skipped files did not name them)."""
    folder = tmp_path / "embeddings"
    folder.mkdir()
    (folder / "mystyle.safetensors").write_bytes(embedding.read_bytes())
    (folder / "easynegative.pt").write_bytes(b"a pickle")
    (folder / "badhands.BIN").write_bytes(b"a pickle")
    (folder / "notes.txt").write_text("not an embedding")
    pipeline = sdopt.load(tiny_model)
    skipped = pipeline.add_embeddings(folder)
    assert [e["name"] for e in pipeline.embeddings] == ["mystyle"]
    assert set(skipped) == {"easynegative", "badhands"}
    assert skipped["easynegative"].startswith("is not .safetensors: ") and "convert" in skipped["easynegative"]
    from sdopt.embeddings import parse_embeddings

    with pytest.warns(UserWarning, match=r"easynegative\.pt left out: is not \.safetensors"):
        parse_embeddings([folder])


def test_an_embedding_of_nan_vectors_is_refused_when_named_and_left_out_of_a_folder(tiny_model, embedding, tmp_path):
    """A NaN or infinite embedding (a textual-inversion run that diverged) was accepted: every image whose prompt used its
    word came out NaN, found only as a broken result after the denoising."""
    from safetensors.numpy import save_file

    folder = tmp_path / "embeddings"
    folder.mkdir()
    save_file({"emb_params": np.full((2, 32), np.nan, np.float32)}, folder / "diverged.safetensors")
    (folder / "MyStyle.safetensors").write_bytes(embedding.read_bytes())
    with pytest.raises(SdoptError, match=r"embedding diverged.safetensors: its vectors hold NaN or infinite values \(text_encoder\)"):
        sdopt.load(tiny_model).add_embeddings(folder / "diverged.safetensors")
    pipeline = sdopt.load(tiny_model)
    skipped = pipeline.add_embeddings(folder)
    assert "NaN or infinite" in skipped["diverged"] and [e["name"] for e in pipeline.embeddings] == ["MyStyle"]


def test_two_adds_at_once_load_a_file_once(tiny_model, embedding):
    # Two add_embeddings while a call ran (two refresh-embeddings) both found the file new: it was loaded twice, the
    # text encoder's table grown twice.
    import threading

    pipeline = sdopt.load(tiny_model)
    rows = pipeline.token_tables["text_encoder"].get_input_embeddings().num_embeddings
    with pipeline._one_call.lock:  # a generate call running
        adds = [threading.Thread(target=pipeline.add_embeddings, args=(embedding,)) for _ in range(2)]
        for add in adds:
            add.start()
        for add in adds:
            add.join(timeout=0.3)
    for add in adds:
        add.join(timeout=30)
    assert [e["name"] for e in pipeline.embeddings] == ["mystyle"]
    assert pipeline.token_tables["text_encoder"].get_input_embeddings().num_embeddings == rows + pipeline.embeddings[0]["vectors"]


def test_vocabularies_built_while_an_add_ends_are_not_kept(tiny_model, embedding, monkeypatch):
    # A server checking a prompt (prompt_chunks) built the vocabularies from the list of embeddings as it was while
    # add_embeddings appended to it and reset them: the old ones were kept after the reset, and the new word never read.
    import threading

    import sdopt.embeddings.tables as tables
    import sdopt.embeddings.vocabulary as vocabulary

    pipeline = sdopt.load(tiny_model)
    building, added = threading.Event(), threading.Event()
    extend, build = tables.extend, vocabulary.Vocabulary
    checker = threading.Thread(target=pipeline.prompt_chunks, args=(["a fox"],))

    def slow_build(*args):
        building.set()
        added.wait(timeout=0.5)  # the add ends meanwhile (it cannot where it waits for this build)
        return build(*args)

    def extending(*args):
        monkeypatch.setattr(vocabulary, "Vocabulary", slow_build)
        checker.start()
        building.wait(timeout=30)  # the checker has read the list as it is now
        monkeypatch.setattr(vocabulary, "Vocabulary", build)
        return extend(*args)

    monkeypatch.setattr(tables, "extend", extending)
    pipeline.add_embeddings(embedding)
    added.set()
    checker.join(timeout=30)
    assert pipeline.vocabularies[0].used(PROMPT) == ["mystyle"]


def test_an_add_while_another_pipeline_loads_keeps_its_table_off_the_meta_device(tiny_model, embedding):
    # A torch load builds its modules under accelerate's init_empty_weights, which patches register_parameter for the
    # whole process: an add_embeddings in another thread meanwhile set its grown table there, on the meta device, and
    # every generate after failed ("Tensor on device cpu is not on the expected device meta!").
    import threading

    from accelerate import init_empty_weights

    from sdopt.runtime.library_lock import LIBRARY_LOCK

    pipeline = sdopt.load(tiny_model)
    with LIBRARY_LOCK, init_empty_weights():  # what a torch load in another thread holds while it builds
        add = threading.Thread(target=pipeline.add_embeddings, args=(embedding,))
        add.start()
        add.join(timeout=0.5)
    add.join(timeout=30)
    assert not add.is_alive() and [e["name"] for e in pipeline.embeddings] == ["mystyle"]
    assert pipeline.token_tables["text_encoder"].get_input_embeddings().weight.device.type == "cpu"
    assert pipeline.generate(_request("a fox, mystyle")).images
