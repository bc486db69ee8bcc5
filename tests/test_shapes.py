"""The shapes dataset (sdopt.shapes.scenes) and its grounding judge (sdopt.shapes.judge)."""

from __future__ import annotations

import dataclasses
import itertools
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image, ImageFilter

from sdopt.shapes.judge import Verdict, judge, judge_many
from sdopt.shapes.scenes import (
    BACKGROUND_TONES,
    COLORS,
    EVAL_SEED,
    POSITIONS,
    SHAPES,
    Scene,
    ShapeObject,
    caption,
    caption_space,
    captions,
    held_out_prompts,
    held_out_samples,
    parse_caption,
    render,
    sample_scene,
    samples,
)


@pytest.fixture(scope="module")
def ground_truth() -> list[tuple[np.ndarray, str]]:
    return list(samples(seed=1, n=500))


@pytest.fixture(scope="module")
def ground_truth_verdicts(ground_truth) -> list[Verdict]:
    return judge_many(*zip(*ground_truth))


def _objects(verdicts):
    return [o for v in verdicts for o in v.objects]


# --- dataset --------------------------------------------------------------------------------


def test_same_seed_gives_the_same_samples_and_other_seeds_others():
    a, b, c = (list(samples(seed, 20)) for seed in (3, 3, 4))
    assert all(np.array_equal(x[0], y[0]) and x[1] == y[1] for x, y in zip(a, b))
    assert [x[1] for x in a] != [x[1] for x in c]
    assert not any(np.array_equal(x[0], y[0]) for x, y in zip(a, c))


def test_images_are_64x64_uint8_rgb_and_not_blank():
    for image, _ in samples(seed=0, n=10):
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert image.std() > 10  # something is drawn on the light background


def test_captions_without_rendering_match_samples():
    assert list(captions(seed=5, n=300)) == [text for _, text in samples(seed=5, n=300)]


def test_caption_round_trip_on_500_scenes():
    rng = np.random.default_rng(0)
    for _ in range(500):
        scene = sample_scene(rng, include_held_out=True)
        text = caption(scene)
        assert parse_caption(text) == scene.objects, text
        assert len(text.split()) <= 16


def test_both_scene_kinds_and_every_attribute_are_sampled():
    rng = np.random.default_rng(1)
    scenes = [sample_scene(rng) for _ in range(2000)]
    objects = [o for s in scenes for o in s.objects]
    assert {len(s.objects) for s in scenes} == {1, 2}
    assert {o.color for o in objects} == set(COLORS)
    assert {o.shape for o in objects} == set(SHAPES)
    assert {o.position for o in objects} == set(POSITIONS)


def test_parse_caption_forgives_case_spaces_period_and_article():
    expected = (ShapeObject("orange", "cross", "left"), ShapeObject("red", "ring", "right"))
    assert parse_caption("  An ORANGE cross on the  left and a red ring on the right. ") == expected
    assert parse_caption("a orange cross on the left and an red ring on the right") == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty"),
        ("hello world", "expected 'a <color> <shape> <where>'"),
        ("a red circle", "expected 'a <color> <shape> <where>'"),
        ("a magenta circle on the left", "unknown color 'magenta'"),
        ("a red hexagon on the left", "unknown shape 'hexagon'"),
        ("a red circle on the moon", "unknown position 'on the moon'"),
        ("a red circle on the left and a red square on the right", "different colors"),
        ("a red circle on the left and a blue square at the top", "position pairs"),
        ("a red circle on the left and a blue square on the right and a green ring in the center", "at most 2"),
        (None, "a caption is a str"),
    ],
)
def test_parse_caption_rejects_what_it_cannot_parse(text, message):
    with pytest.raises(ValueError) as info:
        parse_caption(text)
    assert message in str(info.value)


def test_scenes_validate_their_objects():
    with pytest.raises(ValueError, match="unknown color 'pink'"):
        ShapeObject("pink", "circle", "left")
    with pytest.raises(ValueError, match="unknown background"):
        Scene((ShapeObject("red", "circle", "left"),), background="black-plain")
    with pytest.raises(ValueError, match="1 or 2 objects"):
        Scene(())


def test_palette_is_separated_from_itself_and_from_backgrounds():
    # The judge's colour thresholds rely on these margins; a palette edit must keep them.
    for a, b in itertools.combinations(COLORS.values(), 2):
        assert np.linalg.norm(np.subtract(a, b)) >= 90, (a, b)
    for color, tone in itertools.product(COLORS.values(), BACKGROUND_TONES.values()):
        assert np.linalg.norm(np.subtract(color, tone)) >= 150, (color, tone)


def test_render_at_other_sizes_is_judged_the_same():
    rng = np.random.default_rng(2)
    scene = Scene((ShapeObject("purple", "triangle", "top"), ShapeObject("cyan", "ring", "bottom")), "beige-noise")
    image = render(scene, rng, size=128)
    assert image.shape == (128, 128, 3)
    assert judge(Image.fromarray(image), caption(scene)).score == 1.0


# --- held-out prompts -----------------------------------------------------------------------


def test_held_out_prompts_are_fixed_distinct_mixed_and_never_trained_on():
    prompts = held_out_prompts(64)
    assert prompts == held_out_prompts(64) and len(prompts) == 64 == len(set(prompts))
    assert all(parse_caption(p) for p in prompts)
    kinds = [len(parse_caption(p)) for p in prompts]
    assert 8 <= kinds.count(1) <= 32 and kinds.count(2) >= 32
    training = set(captions(seed=0, n=20_000))
    assert len(training) > 2500  # the training captions do cover most of the space ...
    assert training.isdisjoint(prompts)  # ... but never a held-out one
    assert EVAL_SEED == 10_000


def test_held_out_prompts_rejects_bad_n():
    with pytest.raises(ValueError, match="between 1 and"):
        held_out_prompts(0)
    with pytest.raises(ValueError, match="between 1 and"):
        held_out_prompts(10_000)


def test_caption_space_sizes():
    assert len(caption_space(1)) == 7 * 6 * 5
    assert len(caption_space(2)) == 2 * 7 * 6 * 6 * 6
    assert len(set(caption_space(2))) == len(caption_space(2))


def test_held_out_ground_truth_scores_perfectly():
    pairs = list(held_out_samples(64))
    assert [t for _, t in pairs] == held_out_prompts(64)
    assert np.mean([judge(image, text).score for image, text in pairs]) >= 0.97


# --- judge: ground truth and robustness -----------------------------------------------------


def test_judge_accepts_ground_truth(ground_truth_verdicts):
    mean = float(np.mean([v.score for v in ground_truth_verdicts]))
    objects = _objects(ground_truth_verdicts)
    fully = float(np.mean([o.score == 1.0 for o in objects]))
    print(f"\nground truth: {len(ground_truth_verdicts)} images, {len(objects)} objects, mean score {mean:.4f}, fully correct objects {fully:.4f}")
    assert mean >= 0.95 and fully >= 0.95
    assert all(0.0 <= v.score <= 1.0 for v in ground_truth_verdicts)


def _blur_and_shift(image: np.ndarray, rng: np.random.Generator, per_pixel: bool) -> np.ndarray:
    blurred = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(1)), dtype=np.int16)
    shift = rng.integers(-20, 21, size=image.shape if per_pixel else 3)
    return np.clip(blurred + shift, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("per_pixel", [False, True], ids=["shift-per-image", "noise-per-pixel"])
def test_judge_tolerates_blur_and_colour_jitter(ground_truth, per_pixel):
    rng = np.random.default_rng(7)
    pairs = ground_truth[:300]
    scores = [judge(_blur_and_shift(image, rng, per_pixel), text).score for image, text in pairs]
    print(f"\nblur 1px + colour jitter ±20 ({'per pixel' if per_pixel else 'per image'}): mean score {np.mean(scores):.4f}")
    assert np.mean(scores) >= 0.9


def test_judge_accepts_pil_images_and_other_sizes(ground_truth):
    image, text = ground_truth[0]
    big = Image.fromarray(image).resize((256, 256), Image.BICUBIC)
    assert judge(big, text) == judge(image, text)
    assert judge(np.asarray(big), text).score == 1.0
    rgba = np.concatenate([image, np.full((64, 64, 1), 255, np.uint8)], axis=2)
    assert judge(rgba, text) == judge(image, text)


def test_judge_is_deterministic_and_fast(ground_truth):
    pairs = ground_truth[:100]
    first = judge_many(*zip(*pairs))
    start = time.perf_counter()
    second = judge_many(*zip(*pairs))
    per_image = (time.perf_counter() - start) / len(pairs)
    print(f"\njudge: {per_image * 1e3:.2f} ms per 64x64 image")
    assert first == second
    assert per_image < 0.05


# --- judge: it can fail -----------------------------------------------------------------------


def _mismatches(ground_truth, change, n=200):
    """(verdict of the changed object, ...) for the first n pairs, one object changed by ``change``."""
    rng = np.random.default_rng(11)
    out = []
    for image, text in ground_truth[:n]:
        objects = parse_caption(text)
        i = int(rng.integers(len(objects)))
        wrong = change(objects, i, rng)
        out.append(judge(image, caption(Scene(wrong))).objects[i])
    return out


def _other_color(objects, i, rng):
    unused = [c for c in COLORS if c not in {o.color for o in objects}]
    changed = list(objects)
    changed[i] = dataclasses.replace(objects[i], color=unused[rng.integers(len(unused))])
    return tuple(changed)


def _other_shape(objects, i, rng):
    others = [s for s in SHAPES if s != objects[i].shape]
    changed = list(objects)
    changed[i] = dataclasses.replace(objects[i], shape=others[rng.integers(len(others))])
    return tuple(changed)


def _other_position(objects, i, rng):
    if len(objects) == 2:  # swapped: still a valid pair, both now wrong
        a, b = objects
        return (dataclasses.replace(a, position=b.position), dataclasses.replace(b, position=a.position))
    others = [p for p in POSITIONS if p != objects[0].position]
    return (dataclasses.replace(objects[0], position=others[rng.integers(len(others))]),)


def test_judge_rejects_a_colour_that_is_not_there(ground_truth):
    verdicts = _mismatches(ground_truth, _other_color)
    rate = np.mean([v.score <= 1 / 3 for v in verdicts])
    print(f"\nwrong colour: object score <= 1/3 in {rate:.3f}, mean {np.mean([v.score for v in verdicts]):.3f}")
    assert rate >= 0.95


def test_judge_rejects_a_wrong_shape(ground_truth):
    verdicts = _mismatches(ground_truth, _other_shape)
    rate = np.mean([not v.shape_ok for v in verdicts])
    print(f"\nwrong shape: rejected in {rate:.3f}")
    assert rate >= 0.95 and all(v.score <= 2 / 3 + 1e-9 for v in verdicts if not v.shape_ok)


def test_judge_rejects_a_wrong_position(ground_truth):
    verdicts = _mismatches(ground_truth, _other_position)
    rate = np.mean([not v.position_ok for v in verdicts])
    print(f"\nwrong position: rejected in {rate:.3f}")
    assert rate >= 0.95


@pytest.mark.parametrize("tone", sorted(BACKGROUND_TONES))
def test_judge_gives_a_blank_background_zero(ground_truth, tone):
    blank = np.broadcast_to(np.array(BACKGROUND_TONES[tone], np.uint8), (64, 64, 3)).copy()
    assert all(judge(blank, text).score == 0.0 for _, text in ground_truth[:50])


def test_judge_gives_uniform_noise_a_low_score(ground_truth):
    scores = [judge(np.random.default_rng(k).integers(0, 256, (64, 64, 3), dtype=np.uint8), text).score for k, (_, text) in enumerate(ground_truth[:100])]
    print(f"\nuniform noise: mean score {np.mean(scores):.3f}, max {max(scores):.3f}")
    assert np.mean(scores) <= 0.1


def test_shape_and_position_count_only_when_the_colour_is_found(ground_truth, ground_truth_verdicts):
    verdicts = _objects(ground_truth_verdicts) + _mismatches(ground_truth, _other_color, n=100)
    assert any(not v.color_found for v in verdicts)
    for v in verdicts:
        if not v.color_found:
            assert not v.shape_ok and not v.position_ok and v.score == 0.0
        assert v.score == pytest.approx((v.color_found + v.shape_ok + v.position_ok) / 3)


def test_judge_rejects_bad_inputs(ground_truth):
    image, text = ground_truth[0]
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        judge(image.astype(np.float32), text)
    with pytest.raises(ValueError, match="cannot parse"):
        judge(image, "a dog")
    with pytest.raises(ValueError, match="1 images but 2 captions"):
        judge_many([image], [text, text])


# --- lightness --------------------------------------------------------------------------------


def test_importing_the_shapes_modules_does_not_import_torch():
    code = "import sys, sdopt.shapes.scenes, sdopt.shapes.judge; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "False"
