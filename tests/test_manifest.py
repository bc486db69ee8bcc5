import hashlib
import json
import os
import shutil
import time

import pytest

from sdopt import SdoptError
from sdopt.inspect_artifact import describe, format_description
from sdopt.manifest import MANIFEST_NAME, Manifest, read_manifest, validate


def test_init_model_writes_a_valid_manifest_with_hashes(tiny_model):
    data = json.loads((tiny_model / MANIFEST_NAME).read_text())
    validate(data, where="test")
    m = read_manifest(tiny_model)
    assert m.backend == "torch" and m.precision == "fp32" and not m.inferred
    assert set(m.components) == {"text_encoder", "unet", "vae_decoder", "vae_encoder"}
    assert all(f.sha256 and len(f.sha256) == 64 for c in m.components.values() for f in c.files)
    assert m.model["vae_scale_factor"] == 8 and m.model["latent_channels"] == 4
    assert len(m.source["fingerprint"]) == 64
    m.verify_files(tiny_model)


def test_manifest_round_trips(tiny_model):
    m = read_manifest(tiny_model)
    again = Manifest.from_dict(json.loads(json.dumps(m.to_dict())))
    assert again == m


def test_plain_diffusers_folder_is_an_inferred_torch_artifact(tiny_model, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(tiny_model, plain)
    (plain / MANIFEST_NAME).unlink()
    m = read_manifest(plain)
    assert m.inferred and m.backend == "torch"
    assert all(f.sha256 is None for c in m.components.values() for f in c.files)
    d = describe(plain)
    # inspect computes the fingerprint it can: the same files give the same fingerprint as the manifest's.
    assert d["source"]["fingerprint"] == read_manifest(tiny_model).source["fingerprint"]
    assert "inferred" in format_description(d)


def test_pickled_weights_are_refused(tiny_model, tmp_path):
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_model, pickled)
    (pickled / MANIFEST_NAME).unlink()
    weights = pickled / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(SdoptError, match="only pickled weights"):
        read_manifest(pickled)


def test_a_diffusers_folder_without_a_components_weights_says_to_download_it_again(tiny_model, tmp_path):
    """A snapshot cut short (unet/ without its weights) or a folder left out was 'not a complete Diffusers checkpoint'
    and no more: the one error of a missing component that did not say what to do."""
    partial = tmp_path / "partial"
    shutil.copytree(tiny_model, partial, ignore=shutil.ignore_patterns(MANIFEST_NAME, "text_encoder"))
    with pytest.raises(SdoptError, match=r"has no text_encoder/ weights in safetensors: .*; download it again$"):
        read_manifest(partial)


def test_other_pipeline_classes_are_refused(tiny_model, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_model, other)
    (other / MANIFEST_NAME).unlink()
    index = json.loads((other / "model_index.json").read_text())
    index["_class_name"] = "FluxPipeline"
    (other / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(SdoptError, match="holds a FluxPipeline"):
        read_manifest(other)
    index["_class_name"] = "AuraFlowPipeline"
    (other / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(SdoptError, match="holds an AuraFlowPipeline"):  # it said "a AuraFlowPipeline"
        read_manifest(other)


@pytest.mark.parametrize("named, message", [
    (["pipeline", "MyPipeline"], r"holds a custom pipeline \(MyPipeline from its own pipeline.py: code shipped with the model, which sdopt never runs\)"),
    ({"module": "x"}, r"names its pipeline class as \{\"module\": \"x\"\}, not a class name"),
])
def test_a_custom_pipeline_is_refused_in_one_line(tiny_model, tmp_path, named, message):
    """Diffusers' custom pipelines name themselves [module, class] in model_index.json's _class_name (code in the model's
    own folder): the family lookup hashed the list, a TypeError traceback from inspect, generate and serve."""
    custom = tmp_path / "custom"
    (custom / "unet").mkdir(parents=True)
    shutil.copy(tiny_model / "unet" / "config.json", custom / "unet" / "config.json")
    index = json.loads((tiny_model / "model_index.json").read_text())
    (custom / "model_index.json").write_text(json.dumps({**index, "_class_name": named}))
    (custom / "pipeline.py").write_text("raise SystemExit('imported')")
    with pytest.raises(SdoptError, match=message):
        read_manifest(custom)


def test_missing_component_file_is_named(tiny_model, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    (broken / "text_encoder" / "model.safetensors").unlink()
    with pytest.raises(SdoptError, match="model.safetensors is listed .* but missing"):
        read_manifest(broken).verify_files(broken)


def test_hub_id_offline_gives_a_clear_error(monkeypatch):
    from sdopt.source import resolve

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SdoptError, match="download the model where a network exists"):
        resolve("someorg/some-model-that-is-not-cached")


def test_inspect_counts_the_weights_that_load(tiny_model, tmp_path):
    """fp16 copies beside a Diffusers folder's plain weights (as on the hub) were counted in its size and its id,
    though the plain ones alone load (sdopt.runtime.torch.weights_variant)."""
    folder = tmp_path / "variants"
    shutil.copytree(tiny_model, folder, ignore=shutil.ignore_patterns(MANIFEST_NAME))
    plain = describe(folder)
    for weights in ("unet/diffusion_pytorch_model", "text_encoder/model"):
        shutil.copy(folder / f"{weights}.safetensors", folder / f"{weights}.fp16.safetensors")
    (folder / "unet/diffusion_pytorch_model.safetensors.index.fp16.json").write_text("{}")
    both = describe(folder)
    assert (both["artifact_id"], both["size_bytes"]) == (plain["artifact_id"], plain["size_bytes"])
    (folder / "unet/diffusion_pytorch_model.safetensors").unlink()  # fp16 alone: those load
    assert {f["path"] for f in describe(folder)["components"]["unet"]["files"]} == {
        "unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_pytorch_model.safetensors.index.fp16.json"}


def test_a_folder_of_several_variants_loads_its_fp16_weights(tiny_model, tmp_path):
    """A Diffusers folder with fp16 and non_ema copies and no plain weights did not load (source.loaded_variant: None,
    so from_pretrained looked for the plain file) and inspect counted its config.json alone; hub_files fetches fp16 there."""
    from sdopt.runtime.torch import load_pretrained

    folder = tmp_path / "variants"
    shutil.copytree(tiny_model, folder, ignore=shutil.ignore_patterns(MANIFEST_NAME))
    plain = folder / "unet/diffusion_pytorch_model.safetensors"
    shutil.copy(plain, folder / "unet/diffusion_pytorch_model.fp16.safetensors")
    plain.rename(folder / "unet/diffusion_pytorch_model.non_ema.safetensors")
    assert {f["path"] for f in describe(folder)["components"]["unet"]["files"]} == {
        "unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors"}
    load_pretrained("unet", folder / "unet")


def test_fp16_weights_loaded_in_place_of_pickled_plain_ones_are_said(tiny_model, tmp_path):
    """A folder whose plain weights are a pickle beside an fp16 safetensors copy (diffusion_pytorch_model.bin and
    .fp16.safetensors, as older hub repos have) ran the fp16 copy in silence: inspect said precision fp32 and nothing
    else, generate and export said nothing. The pickle is still never read."""
    from sdopt.runtime.torch import load_pretrained

    folder = tmp_path / "binplain"
    shutil.copytree(tiny_model, folder, ignore=shutil.ignore_patterns(MANIFEST_NAME))
    plain = folder / "unet/diffusion_pytorch_model.safetensors"
    plain.rename(folder / "unet/diffusion_pytorch_model.fp16.safetensors")
    (folder / "unet/diffusion_pytorch_model.bin").write_bytes(b"not a pickle: reading it fails")
    assert "unet/ loads its fp16 weights: its plain ones are a pickle (diffusion_pytorch_model.bin), never read" in read_manifest(folder).notes
    with pytest.warns(UserWarning, match=r"unet loads its fp16 weights: its plain weights are a pickle \(diffusion_pytorch_model.bin\)"):
        load_pretrained("unet", folder / "unet")
    (folder / "unet/diffusion_pytorch_model.bin").unlink()  # fp16 alone, as save_pretrained(variant="fp16") writes: noted
    assert "unet/ loads its fp16 weights: it has no plain ones" in read_manifest(folder).notes


def test_inspect_text_names_backend_components_and_sizes(tiny_model):
    text = format_description(describe(tiny_model))
    for word in ("backend    torch", "precision  fp32", "unet", "text_encoder", "vae_decoder", "MiB", "fingerprint",
                 "scheduler  PNDMScheduler (the model's own), prediction_type=epsilon",
                 # the size to generate, bench and optimize it at, which nothing showed (serve's --help says to look here)
                 "default    size 64x64 for a request that gives none (the size the model was trained at)"):
        assert word in text


def test_inspect_says_a_checkpoints_safety_checker_is_not_run(tiny_model, tmp_path):
    """SD 1.x checkpoints ship a safety checker, which Diffusers' pipeline runs (and warns when told not to): sdopt never
    runs it, and nothing said so, so a service's images were unfiltered unsaid. A checkpoint without one (the zoo's
    [null, null], SDXL's none) gets no note; an export keeps its source's model_index.json, and the note with it."""
    import json

    note = "the checkpoint's safety checker is not run: sdopt does not filter images for NSFW content"
    assert not any(note in n for n in describe(tiny_model).get("notes") or [])
    folder = tmp_path / "sd15-like"
    shutil.copytree(tiny_model, folder, ignore=shutil.ignore_patterns(MANIFEST_NAME))
    index = json.loads((folder / "model_index.json").read_text())
    index.update(safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"], requires_safety_checker=True)
    (folder / "model_index.json").write_text(json.dumps(index))
    assert note in format_description(describe(folder))
    from sdopt.export.run import write_optimum_model_index

    exported = tmp_path / "exported"
    exported.mkdir()
    write_optimum_model_index(folder, exported)
    from sdopt.layouts import safety_checker_note

    assert note in safety_checker_note(exported)
    (exported / "model_index.json").write_text("[]")  # not an index: no note, and no error here (its load says what is wrong)
    assert safety_checker_note(exported) is None


@pytest.mark.parametrize("mode,says", [("enable", "overflow fix enable: 7-bit weights; none can saturate on a CPU without VNNI/AMX"),
                                       ("first-layer", "overflow fix first-layer: 8-bit weights past the first layer; they can saturate"),
                                       ("disable", "overflow fix disable: 8-bit weights; they can saturate")])
def test_inspect_says_whether_int8_static_weights_can_saturate_on_another_cpu(tiny_model, mode, says):
    """An int8-static artifact quantized on a VNNI CPU (NNCF's first-layer) warns at load on an AVX2 one, and loses dB
    there; inspect said only "int8-static via nncf", though the manifest records the mode (quantization.overflow_fix)."""
    d = describe(tiny_model)
    d["components"]["unet"]["quantization"] = {"scheme": "int8-static", "backend": "nncf", "overflow_fix": {"mode": mode, "why": "x"}}
    text = format_description(d)
    assert f"int8-static via nncf ({says}" in text
    assert text.count("overflow fix") == 1  # the other components are not quantized


def test_a_file_is_hashed_once_while_it_is_unchanged(tiny_model, tmp_path, monkeypatch):
    """sdopt.hash_records: the second verification of a settled, unchanged artifact reads the recorded hashes; a file
    rewritten in place (same size) is hashed again and refused; a file changed just before its hash is not recorded."""
    import time

    from sdopt import hash_records

    monkeypatch.setenv("SDOPT_CACHE_DIR", str(tmp_path / "cache"))
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model, copy)
    hashed = []
    real = hash_records.sha256_file
    monkeypatch.setattr(hash_records, "sha256_file", lambda path: hashed.append(path) or real(path))
    manifest = read_manifest(copy)
    files = sum(len(c.files) for c in manifest.components.values())
    shared = len({f.path for c in manifest.components.values() for f in c.files})  # the VAE's file serves two components

    manifest.verify_files(copy)  # just written: hashed, not recorded (it may change again within its timestamps' tick)
    manifest.verify_files(copy)
    assert len(hashed) == 2 * shared and shared <= files

    monkeypatch.setattr(hash_records, "HASH_SETTLE_S", 0.0)
    time.sleep(0.05)  # past the file system's timestamp tick
    hashed.clear()
    manifest.verify_files(copy)
    manifest.verify_files(copy)
    assert len(hashed) == shared  # the second time: every hash from its record

    # A damaged record (right stamps, wrong hash) is not believed: the file is hashed again, and the good artifact loads.
    records = sorted((tmp_path / "cache" / "verified-hashes").glob("*.json"))
    assert len(records) == shared
    for record in records:
        text = json.loads(record.read_text())
        record.write_text(json.dumps({**text, "sha256": "0" * 64}))
    hashed.clear()
    manifest.verify_files(copy)
    assert len(hashed) == shared

    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # the same size, one byte changed
    weights.write_bytes(bytes(data))
    with pytest.raises(SdoptError, match="does not match the sha256 recorded"):
        manifest.verify_files(copy)

    monkeypatch.setenv("SDOPT_CACHE_DIR", str(tmp_path / "file-not-folder"))
    (tmp_path / "file-not-folder").write_text("x")  # an unusable cache folder: hashed every time, never an error
    shutil.copy(tiny_model / "unet" / "diffusion_pytorch_model.safetensors", weights)
    manifest.verify_files(copy)


def test_records_of_files_that_are_gone_are_pruned_once_a_day(tmp_path, monkeypatch):
    """Every exported, moved or deleted artifact left its files' hash records in the user's cache for good. A record
    written starts a pruning at most once every PRUNE_EVERY_S: records of files that are gone go, the others stay."""
    from sdopt import hash_records

    monkeypatch.setenv("SDOPT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(hash_records, "HASH_SETTLE_S", 0.0)
    files = [tmp_path / f"f{i}.bin" for i in range(4)]
    for f in files:
        f.write_bytes(os.urandom(64))
        os.utime(f, ns=(0, 0))  # settled long ago
    time.sleep(0.05)  # the change time, which utime cannot set back, must be past the (zero) settle time too
    for f in files[:3]:
        hash_records.recorded_sha256(f)
    folder = tmp_path / "cache" / hash_records.RECORDS
    assert len(list(folder.glob("*.json"))) == 3
    files[0].unlink()
    files[1].unlink()
    hash_records.recorded_sha256(files[3])  # pruned a moment ago (the first record's write): not again
    assert len(list(folder.glob("*.json"))) == 4
    day_ago = time.time() - hash_records.PRUNE_EVERY_S - 1
    os.utime(folder / hash_records.PRUNED, (day_ago, day_ago))
    files[3].write_bytes(os.urandom(64))  # a new record written for it: the day has passed, so it prunes
    os.utime(files[3], ns=(0, 0))
    time.sleep(0.05)
    hash_records.recorded_sha256(files[3])
    kept = sorted(json.loads(p.read_text())["path"] for p in folder.glob("*.json"))
    assert kept == [str(files[2].resolve()), str(files[3].resolve())]


def test_a_path_the_locale_cannot_decode_is_hashed_and_recorded(tmp_path, monkeypatch):
    """A name whose bytes the file system encoding cannot decode (any non-ASCII one under LC_ALL=C, PYTHONUTF8=0) made
    every load a UnicodeEncodeError in the hash record's key; the record is keyed by the path's bytes."""
    from sdopt import hash_records

    monkeypatch.setenv("SDOPT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(hash_records, "HASH_SETTLE_S", 0.0)
    weights = tmp_path / os.fsdecode(b"caf\xe9.safetensors")
    weights.write_bytes(b"weights")
    time.sleep(0.05)  # past the file system's timestamp tick
    digest = hashlib.sha256(b"weights").hexdigest()
    assert hash_records.recorded_sha256(weights) == digest
    assert len(list((tmp_path / "cache" / "verified-hashes").glob("*.json"))) == 1


def test_a_hash_record_that_cannot_be_written_leaves_no_temporary_file(tmp_path, monkeypatch):
    """A full disk under the cache folder: every load left a .HASH.json.PID.tmp per file in verified-hashes (the write
    fails at its close, or the rename), never removed. The load still gets its hash; the folder holds nothing."""
    import errno

    from sdopt import hash_records

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setenv("SDOPT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(hash_records, "HASH_SETTLE_S", 0.0)
    monkeypatch.setattr(hash_records.os, "replace", full)
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"weights")
    time.sleep(0.05)  # past the file system's timestamp tick
    assert hash_records.recorded_sha256(weights) == hashlib.sha256(b"weights").hexdigest()
    assert os.listdir(tmp_path / "cache" / "verified-hashes") == []


def test_two_threads_write_a_hash_record_through_temporary_files_of_their_own(tmp_path, monkeypatch):
    """The temporary file was named by the process alone (qa54's list): two threads loading one file shared it."""
    import threading

    from sdopt import hash_records

    renamed = []
    real_replace = os.replace
    monkeypatch.setattr(hash_records.os, "replace", lambda src, dst: (renamed.append(os.path.basename(src)), real_replace(src, dst)))
    record = tmp_path / "r.json"
    hash_records._write(record, {"sha256": "a"})
    other = threading.Thread(target=hash_records._write, args=(record, {"sha256": "a"}))
    other.start()
    other.join()
    assert len(renamed) == 2 and renamed[0] != renamed[1] and json.loads(record.read_text()) == {"sha256": "a"}


def test_identity_is_blind_to_the_library_versions_that_wrote_the_configs(tiny_model, tmp_path):
    """The tiny model init-model writes under Transformers 5.24 and 5.25 differs in one string (text_encoder/config.json's
    transformers_version): two fingerprints, which made a CI baseline written under 5.24 incomparable forever. Its
    identity is one; any change to what the model is changes it."""
    from sdopt.manifest import fingerprint_of, hash_components, identity_of

    def rewritten(name, edit):
        folder = tmp_path / name
        shutil.copytree(tiny_model, folder)
        edit(folder)
        manifest = read_manifest(folder)
        for comp in manifest.components.values():
            for f in comp.files:
                f.sha256 = None
        hash_components(manifest.components, folder)
        return fingerprint_of(manifest.components), identity_of(manifest.components, folder)

    def config(key, value):
        def edit(folder):
            path = folder / "text_encoder" / "config.json"
            data = json.loads(path.read_text())
            data[key] = value
            path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        return edit

    def weights(folder):
        path = folder / "unet" / "diffusion_pytorch_model.safetensors"
        data = bytearray(path.read_bytes())
        data[-1] ^= 1
        path.write_bytes(bytes(data))

    original = rewritten("original", lambda folder: None)
    older = rewritten("older", config("transformers_version", "5.24.0"))
    assert older[0] != original[0] and older[1] == original[1]
    for name, edit in (("act", config("hidden_act", "gelu")), ("weights", weights)):
        changed = rewritten(name, edit)
        assert changed[0] != original[0] and changed[1] != original[1], name


def test_inspect_says_a_trained_model_is_not_the_shipped_one():
    """train-shapes records source {zoo: shapes, trained: true}; inspect showed it as 'zoo model shapes (seed 0)', the
    same line as the weights `init-model shapes` ships, so a one-step run could pass for the shipped model."""
    from sdopt.inspect_artifact import _origin

    assert _origin({"zoo": "shapes", "seed": 3, "trained": True}) == "shapes model trained by `sdopt train-shapes` (seed 3)"
    assert _origin({"zoo": "shapes", "seed": 0}) == "zoo model shapes (seed 0)"
    assert _origin({"path": "/models/x"}) == "/models/x" and _origin({}) == "unknown"


@pytest.mark.parametrize("name", ["v1-5-pruned-emaonly.safetensors", "model.ckpt"])
def test_a_single_file_checkpoint_is_refused_with_how_to_convert_it(tmp_path, name):
    """The form most SD users download was refused as "a file, not an artifact folder", not saying that single-file
    checkpoints are not read or how to make a folder of one."""
    single = tmp_path / name
    single.write_bytes(b"\0" * 16)
    with pytest.raises(SdoptError, match=r"is a single-file checkpoint .*\.from_single_file\(FILE\)\.save_pretrained\(FOLDER\)"):
        read_manifest(single)


def test_a_folder_holding_a_single_file_checkpoint_says_so(tmp_path):
    """The folder of one (AUTOMATIC1111's models/Stable-diffusion/, or a download of a single-file repo) given in place
    of the file was 'not an sdopt artifact: it has neither sdopt.json nor a model_index.json', never saying that
    single-file checkpoints are not read or how to convert one, as the file itself is told."""
    (tmp_path / "v1-5-pruned-emaonly.safetensors").write_bytes(b"\0" * 16)
    (tmp_path / "v1-5-pruned-emaonly.ckpt").write_bytes(b"\0" * 16)
    with pytest.raises(SdoptError, match=r"holds v1-5-pruned-emaonly.ckpt \(and 1 more\) but no model_index.json: a single-file "
                                         r"checkpoint .*\.from_single_file\(FILE\)\.save_pretrained\(FOLDER\)"):
        read_manifest(tmp_path)


# stable-diffusion-v1-5/stable-diffusion-v1-5's files on the hub (the folders a run reads, and what is beside them)
_SD15_REPO = """model_index.json feature_extractor/preprocessor_config.json safety_checker/config.json
safety_checker/model.safetensors safety_checker/model.fp16.safetensors safety_checker/pytorch_model.bin
scheduler/scheduler_config.json text_encoder/config.json text_encoder/model.safetensors text_encoder/model.fp16.safetensors
text_encoder/pytorch_model.bin tokenizer/merges.txt tokenizer/special_tokens_map.json tokenizer/tokenizer_config.json
tokenizer/vocab.json unet/config.json unet/diffusion_pytorch_model.safetensors unet/diffusion_pytorch_model.fp16.safetensors
unet/diffusion_pytorch_model.non_ema.safetensors unet/diffusion_pytorch_model.bin vae/config.json
vae/diffusion_pytorch_model.safetensors vae/diffusion_pytorch_model.fp16.safetensors v1-5-pruned-emaonly.safetensors
v1-5-pruned-emaonly.ckpt""".split()


def test_a_hub_id_fetches_one_set_of_weights_per_component(monkeypatch, tmp_path):
    """The patterns fetched every safetensors file of every folder: SD 1.5's fp16 and non-EMA copies and its safety
    checker (about 11.7 GB where a run reads 4.3); a sharded checkpoint came without its index."""
    from types import SimpleNamespace

    import huggingface_hub
    import huggingface_hub.constants

    from sdopt.source import hub_files, resolve

    got = hub_files(_SD15_REPO)
    assert [f for f in got if f.endswith(".safetensors")] == [
        "text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"]
    assert {"model_index.json", "unet/config.json", "tokenizer/vocab.json", "scheduler/scheduler_config.json"} <= set(got)
    fp16_only = ["unet/config.json", "unet/diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
                 "unet/diffusion_pytorch_model.fp16-00002-of-00002.safetensors", "unet/diffusion_pytorch_model.safetensors.index.fp16.json",
                 "unet/diffusion_pytorch_model.non_ema.safetensors"]
    assert hub_files(fp16_only) == [fp16_only[0], fp16_only[3], fp16_only[1], fp16_only[2]]
    asked = {}
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "model_info", lambda repo_id: SimpleNamespace(siblings=[SimpleNamespace(rfilename=f) for f in _SD15_REPO]))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, allow_patterns: asked.update(patterns=allow_patterns) or str(tmp_path))
    assert resolve("someorg/sd15") == tmp_path and asked["patterns"] == got


def test_a_hub_optimum_openvino_export_fetches_its_models():
    """An Optimum Intel OpenVINO export on the hub (optimum-cli export openvino) came without its openvino_model.xml/.bin:
    sdopt.layouts then took it for a Diffusers checkpoint without weights."""
    from sdopt.source import hub_files

    ov = [f"{name}/{file}" for name in ("text_encoder", "unet", "vae_decoder", "vae_encoder")
          for file in ("config.json", "openvino_model.xml", "openvino_model.bin")]
    assert hub_files(["model_index.json", "scheduler/scheduler_config.json", *ov, "unet/diffusion_pytorch_model.bin"]) == [
        "model_index.json", "scheduler/scheduler_config.json", *ov]


def test_a_hub_sdopt_artifact_fetches_the_files_its_manifest_lists(tiny_model, tmp_path, monkeypatch):
    """The patterns were Diffusers' and ONNX's: an OpenVINO artifact pushed as is came without its .xml/.bin (and a
    TensorRT one without its engines), so `sdopt generate org/name` failed. Its sdopt.json is read first and says."""
    from types import SimpleNamespace

    import huggingface_hub
    import huggingface_hub.constants

    from sdopt.manifest import FileEntry
    from sdopt.source import resolve

    manifest = read_manifest(tiny_model)
    manifest.backend = "openvino"
    for name, comp in manifest.components.items():
        comp.folder = name
        comp.files = [FileEntry(f"{name}/{file}", 1, "0" * 64) for file in ("config.json", "openvino_model.xml", "openvino_model.bin")]
    manifest.write(tmp_path)
    listed = [f.path for c in manifest.components.values() for f in c.files]
    support = ["sdopt.json", "model_index.json", "scheduler/scheduler_config.json", "tokenizer/vocab.json", "tokenizer/merges.txt"]
    repo = [*support, *listed, "README.md", "unet/diffusion_pytorch_model.safetensors", "unet/openvino_model_old.bin"]
    asked = {}
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "model_info", lambda repo_id: SimpleNamespace(siblings=[SimpleNamespace(rfilename=f) for f in repo]))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo_id, filename: str(tmp_path / filename))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, allow_patterns: asked.update(patterns=allow_patterns) or str(tmp_path))
    assert resolve("someorg/tiny-ov") == tmp_path
    assert sorted(asked["patterns"]) == sorted([*support, *listed])
    (tmp_path / MANIFEST_NAME).write_text('{"components": []}')  # not a manifest: the patterns, and the loader's schema check
    assert resolve("someorg/tiny-ov") == tmp_path and "unet/diffusion_pytorch_model.safetensors" in asked["patterns"]


def _hub_cache(monkeypatch, home, repo_id, folder, skip=(), unfetched=()):
    """A Hugging Face cache holding repo_id as an offline snapshot_download finds it: folder's files (but ``skip``) in a
    snapshot linked to blobs/, and the repo's listing that huggingface_hub 2.4 caches with a download, where ``unfetched``
    are the repo's files a selective download left out. Returns the snapshot folder."""
    import hashlib
    import os

    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(home))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    repo, commit = home / ("models--" + repo_id.replace("/", "--")), "0" * 40
    snapshot, listing = repo / "snapshots" / commit, {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() not in skip):
        name, data = path.relative_to(folder).as_posix(), path.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).symlink_to(os.path.relpath(blob, (snapshot / name).parent))
        listing[name] = {"size": len(data), "blob_id": hashlib.sha1(data).hexdigest()}
    listing.update({name: {"size": 1, "blob_id": "0" * 40} for name in unfetched})
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    (repo / "trees").mkdir()
    (repo / "trees" / f"{commit}.json").write_text(json.dumps({"format_version": 1, "files": listing}))
    return snapshot


def test_a_hub_id_fetched_selectively_loads_offline(tiny_model, tmp_path, monkeypatch):
    """Offline, snapshot_download (huggingface_hub 2.4) refuses a cached snapshot that lacks a file its patterns match in
    the repo listing it cached: a model hub_files fetched without its fp16 copies was 'incomplete' offline ever after."""
    from sdopt.source import resolve

    snapshot = _hub_cache(monkeypatch, tmp_path / "hub", "org/tiny", tiny_model, skip={MANIFEST_NAME},
                          unfetched=["unet/diffusion_pytorch_model.fp16.safetensors", "safety_checker/model.safetensors"])
    assert resolve("org/tiny") == snapshot
    assert read_manifest(snapshot).backend == "torch"


def test_a_hub_revision_is_said_unsupported(tmp_path, monkeypatch):
    """org/name@REV was refused as a path that does not exist, saying to give 'a hub id like org/name'."""
    from sdopt.source import resolve

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SdoptError, match=r"revision \(@v1\.0\) is not supported.*hf download org/name --revision v1\.0 --local-dir FOLDER"):
        resolve("org/name@v1.0")


def test_a_hub_id_shadowed_by_a_local_folder_says_so(tmp_path, monkeypatch):
    """With ./org here, org/name was refused as not existing, saying to give 'a hub id like org/name', which it was."""
    from sdopt.source import resolve

    monkeypatch.chdir(tmp_path)
    (tmp_path / "org").mkdir()
    with pytest.raises(SdoptError, match=r"read as a local path since \./org is a folder here, not as the hub id org/name"):
        resolve("org/name")


def test_a_manifest_of_a_newer_schema_says_to_upgrade_sdopt(tiny_model, tmp_path):
    """schema_version 2 (a newer sdopt's artifact) was refused with the schema's 'at schema_version: 1 was expected',
    which says neither who wrote it nor what to do."""
    newer = tmp_path / "newer"
    shutil.copytree(tiny_model, newer)
    data = json.loads((newer / MANIFEST_NAME).read_text())
    (newer / MANIFEST_NAME).write_text(json.dumps({**data, "schema_version": 2, "sdopt_version": "9.1.0"}))
    with pytest.raises(SdoptError, match=r"manifest schema 2, written by sdopt 9\.1\.0; this sdopt .* reads schema 1 only: upgrade sdopt"):
        read_manifest(newer)
    (newer / MANIFEST_NAME).write_text(json.dumps({**data, "schema_version": 0}))  # not newer: the schema's own refusal
    with pytest.raises(SdoptError, match="at schema_version: 1 was expected"):
        read_manifest(newer)


def test_identity_is_the_same_under_any_locale(tiny_model, tmp_path):
    """A config with a non-ASCII character written as itself (a hand-edited config.json; JSON is UTF-8) was read in the
    locale's encoding: under LC_ALL=C (PYTHONUTF8=0) it did not decode, so identity_of counted the file's bytes, with
    the version stamps, and a CI runner in the C locale saw another model than the developer who wrote its baseline."""
    import subprocess
    import sys

    folder = tmp_path / "m"
    shutil.copytree(tiny_model, folder)
    path = folder / "text_encoder" / "config.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps({**data, "_name_or_path": "modèle"}, ensure_ascii=False), encoding="utf-8")
    code = ("import sys\nfrom sdopt.manifest import hash_components, identity_of, read_manifest\n"
            "m = read_manifest(sys.argv[1])\nhash_components(m.components, sys.argv[1])\n"
            "print(identity_of(m.components, sys.argv[1]))\n")
    identities = set()
    for locale in ({"LC_ALL": "C.UTF-8", "PYTHONUTF8": "1"}, {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0"}):
        run = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=120,
                             env={**os.environ, **locale})
        assert run.returncode == 0, run.stderr
        identities.add(run.stdout.strip())
    assert len(identities) == 1, identities
