"""Property tests (Hypothesis): random requests, manifests, gate reports and output folders.

What must hold for every input, however odd: never a traceback (only
SdoptError), never a silent pass, never a read outside the artifact, never a
deletion of what sdopt did not write. Bounded (examples per property, no
deadline) so the whole module stays within a few seconds per property; the
database is off so a run is reproducible from its seed alone.
"""

from __future__ import annotations

import builtins
import copy
import json
import math
import shutil
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="the dev extra: pip install 'sdopt[dev]'")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sdopt import GenerateRequest, SdoptError  # noqa: E402
from sdopt.request import MAX_GUIDANCE, MAX_IMAGES, MAX_STEPS  # noqa: E402

BOUNDED = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SLOWER = settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Values of every JSON kind, with the strings that matter here: paths out of the artifact, huge numbers.
NASTY_STRINGS = st.sampled_from(["", "..", "../x", "../../outside/unet", "/etc/hostname", "C:\\x", "unet/../../x", "ok", "nan", "unet"])
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True), NASTY_STRINGS, st.text(max_size=20))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=8)


# --- requests -----------------------------------------------------------------------------------
ANY = st.one_of(JSON_VALUES, st.floats(), st.integers())


@BOUNDED
@given(
    prompt=st.one_of(st.text(max_size=30), st.lists(st.text(max_size=10), max_size=3), ANY),
    negative=st.one_of(st.none(), st.text(max_size=10), ANY),
    seed=st.one_of(st.integers(-5, 2**64), ANY),
    steps=st.one_of(st.integers(-5, 2000), ANY),
    guidance=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 100), ANY),
    height=st.one_of(st.integers(0, 5000), ANY),
    width=st.one_of(st.integers(0, 5000), ANY),
    num_images=st.one_of(st.integers(-2, 100), ANY),
    scheduler=st.one_of(st.none(), st.text(max_size=10), ANY),
)
def test_any_request_validates_or_says_why(prompt, negative, seed, steps, guidance, height, width, num_images, scheduler):
    request = GenerateRequest(prompt=prompt, negative_prompt=negative, seed=seed, steps=steps, guidance_scale=guidance,
                              height=height, width=width, num_images=num_images, scheduler=scheduler)
    try:
        request.validate()
    except SdoptError as exc:
        assert str(exc)  # a message for the user; any other exception type fails the test
        return
    # What passes is runnable: finite numbers in their documented ranges.
    assert math.isfinite(request.guidance_scale) and 0 <= request.guidance_scale <= MAX_GUIDANCE
    assert 1 <= request.steps <= MAX_STEPS and 1 <= request.batch_size <= MAX_IMAGES
    assert request.height % 8 == 0 and request.width % 8 == 0 and all(isinstance(p, str) for p in request.prompts)


# --- manifests ------------------------------------------------------------------------------------
def _paths(data, prefix=()):
    """Every (path of keys) in a JSON tree."""
    yield prefix
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _paths(v, prefix + (i,))


def _mutate(data, path, action, value):
    if not path:
        return value if action == "set" else data
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    if action == "delete" and isinstance(parent, dict):
        del parent[path[-1]]
    elif action == "add" and isinstance(parent, dict):
        parent[f"extra_{len(parent)}"] = value
    else:
        parent[path[-1]] = value
    return data


@pytest.fixture(scope="module")
def artifact_with_decoy(tiny_model, tmp_path_factory):
    """A copy of the tiny model beside a decoy folder that no manifest path may reach."""
    root = tmp_path_factory.mktemp("fuzz-manifest")
    shutil.copytree(tiny_model, root / "a" / "m")
    (root / "outside" / "unet").mkdir(parents=True)
    (root / "outside" / "unet" / "config.json").write_text("{}")
    (root / "outside" / "secret").write_text("x")
    return root / "a" / "m", root / "outside", json.loads((root / "a" / "m" / "sdopt.json").read_text())


@SLOWER
@given(data=st.data())
def test_any_manifest_mutation_is_read_safely(artifact_with_decoy, monkeypatch, data):
    from sdopt.inspect_artifact import describe

    folder, decoy, original = artifact_with_decoy
    manifest = copy.deepcopy(original)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = list(_paths(manifest))
        path = data.draw(st.sampled_from(paths))
        action = data.draw(st.sampled_from(["set", "delete", "add"]))
        manifest = _mutate(manifest, path, action, data.draw(JSON_VALUES))
    if data.draw(st.booleans()):  # aim straight at the decoy too
        manifest = _mutate(manifest, ("components", "unet", "folder"), "set", str(decoy / "unet")) if isinstance(manifest, dict) and isinstance(manifest.get("components"), dict) and isinstance(manifest["components"].get("unet"), dict) else manifest
    (folder / "sdopt.json").write_text(json.dumps(manifest))

    opened = []
    real_open = builtins.open

    def watching_open(file, *args, **kwargs):
        opened.append(Path(file).resolve() if isinstance(file, (str, Path)) else file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", watching_open)
    try:
        describe(folder)  # read, validate, confine paths, verify hashes: what load() does before any weights
    except SdoptError:
        pass
    finally:
        monkeypatch.setattr(builtins, "open", real_open)
        (folder / "sdopt.json").write_text(json.dumps(original))
    outside = decoy.resolve()
    assert not [p for p in opened if isinstance(p, Path) and (p == outside or outside in p.parents)]


# --- gate reports ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ci_report():
    return json.loads((Path(__file__).parents[1] / "reports" / "ci" / "baselines" / "avx2-fma.json").read_text())


RULE_TEXTS = st.sampled_from(["+10%", "-0.5", ">= 30", "<= 2", "ok", "+5", "-2%", "bogus", ">= -1", ""])
METRICS = st.sampled_from(["latency.median", "latency.p90", "peak_memory", "size", "load", "quality.psnr_db", "quality.ssim", "quality.latent_cosine", "status", "nope"])


@BOUNDED
@given(data=st.data(), rules=st.dictionaries(METRICS, st.one_of(RULE_TEXTS, st.lists(RULE_TEXTS, max_size=2)), max_size=4))
def test_any_report_and_rules_are_judged_or_refused_never_passed_silently(ci_report, data, rules):
    from sdopt.bench.gate import gate, metric_value
    from sdopt.bench.rules import parse_rules

    current = copy.deepcopy(ci_report)
    for _ in range(data.draw(st.integers(0, 3))):
        paths = [p for p in _paths(current) if p]
        current = _mutate(current, data.draw(st.sampled_from(paths)), data.draw(st.sampled_from(["set", "delete"])), data.draw(JSON_VALUES))
    baseline = copy.deepcopy(ci_report) if data.draw(st.booleans()) else None
    try:
        result = gate(current, rules, baseline)
    except SdoptError:
        return
    if result.exit_code != 0:
        return
    # A pass: every artifact ran, and every number a rule asked of it is a finite number.
    judged = parse_rules(rules)
    for artifact in current["artifacts"]:
        assert artifact.get("status") == "ok"
        for rule in judged:
            if rule.kind in ("floor", "ceiling") and artifact["name"] != current["reference"]:
                value = metric_value(rule.metric, artifact, current)
                assert isinstance(value, (int, float)) and math.isfinite(value), (rule, value)


# --- what --force may remove ----------------------------------------------------------------------
@SLOWER
@given(
    written=st.lists(st.sampled_from(["sdopt.json", "unet/a.bin", "tokenizer/v.json", "x.txt"]), unique=True, max_size=4),
    extra=st.lists(st.sampled_from(["keep.txt", "unet/mine.bin", "photos/a.jpg"]), unique=True, max_size=2),
    has_list=st.booleans(),
    input_at=st.sampled_from(["elsewhere", "out", "inside-out"]),
)
def test_force_removes_only_what_sdopt_wrote(tmp_path_factory, written, extra, has_list, input_at):
    from sdopt.outputs import WRITTEN_LIST, check_output_dir

    root = tmp_path_factory.mktemp("force")
    out = root / "out"
    out.mkdir()
    for rel in written + extra:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text("x")
    if has_list:
        (out / WRITTEN_LIST).write_text("".join(f"{r}\n" for r in written))
    source = {"elsewhere": root / "src", "out": out, "inside-out": out / "unet"}[input_at]
    source.mkdir(parents=True, exist_ok=True)
    try:
        check_output_dir(out, force=True, inputs=(source,))
    except SdoptError:
        return
    # Allowed: only an empty folder, or one holding exactly what sdopt listed, and never around the input.
    assert input_at == "elsewhere"
    present = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {WRITTEN_LIST}
    assert not present or (has_list and present <= set(written))
