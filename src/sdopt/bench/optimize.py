"""``sdopt optimize MODEL -o OUT``: the fastest pipeline this machine runs above a quality floor.

1. Candidates: the artifacts this device can have (``candidates``), as profile
   ``[[artifacts]]`` entries, built into a work folder by the bench's builder
   (``bench/build.py``): what is already there is reused, so a second run after
   an interruption resumes; one that cannot be built is reported, not fatal.
2. One bench run of them all against PyTorch fp32 on the same prompts and seeds.
3. The floor: an *exact* candidate (same computation, other runtime or
   precision) must keep the worst-case PSNR at ``min_psnr``; a *lever* (a tiny
   decoder, step-feature caching, truncated guidance: another computation by design) must keep the
   grounding judge's adherence within ``max_adherence_drop`` of the reference's
   (and at ``min_adherence`` when given) — without a judge (prompts that are
   not shapes captions) it must hold the PSNR floor too.
4. The fastest candidate that holds it is copied to OUT, with the bench report
   that justifies the choice (``OUT/optimize/``: report.md/html/json, and
   ``choice.json`` with every candidate's verdict). A request lever it chose
   (truncated guidance) becomes the copy's default (``export.guidance_end``),
   so the artifact runs as it was measured.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from sdopt.errors import SdoptError

REPORT_FOLDER = "optimize"


@dataclass(frozen=True)
class Floor:
    min_psnr: float = 30.0  # dB, worst case over the prompts and seeds, for exact candidates
    max_adherence_drop: float = 0.05  # levers: adherence at least the reference's minus this
    min_adherence: float | None = None  # and at least this, when given
    # Levers without a judge (prompts that are not shapes captions) are held to this PSNR; None: min_psnr.
    # A lever changes the computation, so 30 dB is usually out of its reach even when the images look right.
    lever_min_psnr: float | None = None

    def __post_init__(self):
        # Checked before anything is built: a NaN floor compares False both ways, so every candidate "held" it.
        for flag, value in (("--min-psnr", self.min_psnr), ("--lever-min-psnr", self.lever_min_psnr),
                            ("--min-adherence", self.min_adherence), ("max_adherence_drop", self.max_adherence_drop)):
            if value is not None and not math.isfinite(value):
                raise SdoptError(f"{flag} {value!r}: give a finite number (--min-psnr is in dB, 30 by default; --min-adherence from 0 to 1)")

    def verdict(self, row: dict[str, Any], reference: dict[str, Any], exact: bool) -> tuple[bool, str]:
        """(holds, why) for one bench row."""
        if row.get("status") != "ok":
            return False, f"did not run: {row.get('error') or row.get('status')}"
        psnr = (row.get("quality") or {}).get("psnr_db")
        adherence = (row.get("adherence") or {}).get("mean")
        ref_adherence = (reference.get("adherence") or {}).get("mean")
        if exact or adherence is None or ref_adherence is None:
            least = self.min_psnr if exact or self.lever_min_psnr is None else self.lever_min_psnr
            judged = "" if exact else " (no judge for these prompts: a lever held to PSNR)"
            if psnr is None or psnr < least:
                return False, (f"PSNR {psnr:.1f} dB < {least:g} dB" if psnr is not None else "no PSNR measured") + judged
            return True, f"PSNR {psnr:.1f} dB >= {least:g} dB" + judged
        floor = ref_adherence - self.max_adherence_drop
        if self.min_adherence is not None:
            floor = max(floor, self.min_adherence)
        # A lever exactly the allowed drop below the reference holds (1e-9: floating point's rounding): 20 images, the
        # reference's 17 right and 3 at 2/3 (0.9500000000000002), a lever's 14 right and 6 at 2/3 (0.9), was refused as
        # "adherence 0.900 < 0.900".
        if adherence < floor - 1e-9:
            return False, f"adherence {adherence:.3f} < {floor:.3f} (reference {ref_adherence:.3f})"
        return True, f"adherence {adherence:.3f} >= {floor:.3f} (reference {ref_adherence:.3f})"


@dataclass(frozen=True)
class Candidate:
    spec: dict[str, Any]  # a profile [[artifacts]] entry (bench/build.py)
    exact: bool  # the same computation as the reference (no tiny decoder, no step caching, no truncated guidance)

    @property
    def name(self) -> str:
        return self.spec["name"]


def _openvino(name: str, precision: str = "fp32", **extra: Any) -> dict[str, Any]:
    return {"name": name, "export": "openvino", "precision": precision, "static": True, **extra}


def _int8(name: str, source: str, everything: bool) -> dict[str, Any]:
    """NNCF int8-static from an OpenVINO candidate; ``everything``: the text encoder and VAE decoder too, not only the UNet."""
    spec: dict[str, Any] = {"name": name, "quantize": "int8-static", "backend": "nncf", "from": source}
    if everything:
        # The VAE decoder is a third of an int8 pipeline's time when only the UNet is int8 (docs/optimize.md).
        spec["components"] = ["unet", "text_encoder", "vae_decoder"]
    return spec


GUIDANCE_END = 0.5  # truncated guidance's candidates: guided for the first half of the steps


def _guidance_half(source: str) -> Candidate:
    """The same artifact with its requests guided for the first half of the steps only (nothing to build)."""
    return Candidate({"name": f"{source}-guidance-half", "from": source, "guidance_end": GUIDANCE_END}, exact=False)


def float_precision(device: str) -> str:
    """What OpenVINO's float parts run in: bf16 where the CPU has it natively (AVX-512-BF16, AMX), else fp32.

    Emulated bf16 is slower than fp32 (reports/cpu-avx2), so it is not worth a candidate there."""
    from sdopt.hardware import cpu_lacks_bf16

    return "fp32" if cpu_lacks_bf16() or not device.startswith("cpu") else "bf16"


def candidates(device: str, quick: bool = False, distill: dict[str, Any] | None = None, base: str | None = None,
               calibration_images: list[str] | None = None, guided: bool = True) -> list[Candidate]:
    """What to try on a device, exact ones first. ``quick``: a small set for tests and a first look.

    ``base``: the float precision the OpenVINO candidates run in (``float_precision``): int8 candidates
    are quantized from it, so what NNCF leaves in float runs in it too. ``calibration_images``: for the
    int8 candidates of an inpainting checkpoint (what they repaint while calibrating: sdopt quantize
    --calibration-images). ``guided``: False where the requests run no unconditional pass (guidance <= 1,
    or an LCM-distilled UNet, which embeds it): truncated guidance has nothing to cut."""
    pool = [c for c in _candidates(device, quick, distill, base) if guided or "guidance_end" not in c.spec]
    for candidate in pool:
        if calibration_images and candidate.spec.get("quantize") == "int8-static":
            candidate.spec["options"] = {"calibration_images": list(calibration_images)}
    return pool


def _candidates(device: str, quick: bool, distill: dict[str, Any] | None, base: str | None) -> list[Candidate]:
    from sdopt.hardware import cpu_lacks_int8_dot

    if not device.startswith("cpu"):
        raise SdoptError(f"sdopt optimize knows CPU candidates only so far; --device {device} has none (the GPU paths are another issue)")
    base = base or float_precision(device)
    tiny = {"vae_decoder": "distilled", **({"distill": distill} if distill else {})}
    plain = f"openvino-{base}"
    if quick:
        return [
            Candidate(_openvino(plain, base), exact=True),
            Candidate(_openvino(f"{plain}-cache2", base, options={"deep_cache": 2}), exact=False),
            _guidance_half(f"{plain}-cache2"),
        ]
    pool = []
    if base == "fp32":  # where OpenVINO runs bf16 natively, its pipelines measured ~2x ONNX Runtime's (docs/onnx.md)
        pool += [
            Candidate({"name": "onnx-fp32", "export": "onnx", "precision": "fp32"}, exact=True),
            Candidate({"name": "onnx-fp32-int8-static", "quantize": "int8-static", "backend": "onnxruntime", "from": "onnx-fp32",
                       "components": ["unet", "vae_decoder"]}, exact=True),
        ]
    pool += [
        Candidate(_openvino(plain, base), exact=True),
        Candidate(_int8(f"{plain}-int8-static", plain, everything=False), exact=True),
        Candidate(_int8(f"{plain}-int8-static-all", plain, everything=True), exact=True),
    ]
    # Without VNNI, OpenVINO's int8 linear layers run no faster than fp32 ones, its int8 1x1 convolutions
    # ~2.5x faster: the UNet's transformers as convolutions (an exact rewrite) is worth an int8 pipeline there.
    channels_first = f"{plain}-channels-first" if cpu_lacks_int8_dot() else None
    rewrite = ["transformer_channels_first"]
    if channels_first:
        pool += [
            Candidate(_openvino(channels_first, base, options={"rewrite": rewrite}), exact=True),
            Candidate(_int8(f"{channels_first}-int8-static-all", channels_first, everything=True), exact=True),
        ]
    pool += [
        Candidate(_openvino(f"{plain}-tiny-decoder", base, **tiny), exact=False),
        Candidate(_openvino(f"{plain}-cache2", base, options={"deep_cache": 2}), exact=False),
        Candidate(_openvino(f"{plain}-cache3", base, options={"deep_cache": 3}), exact=False),
        Candidate(_openvino(f"{plain}-tiny-cache3", base, options={"deep_cache": 3}, **tiny), exact=False),
        Candidate(_int8(f"{plain}-int8-static-all-tiny-cache3", f"{plain}-tiny-cache3", everything=True), exact=False),
        _guidance_half(f"{plain}-int8-static-all"),
        _guidance_half(f"{plain}-int8-static-all-tiny-cache3"),
    ]
    if channels_first:  # the fastest lever, its transformers channels-first too
        levers = f"{channels_first}-tiny-cache3"
        pool += [
            Candidate(_openvino(levers, base, options={"deep_cache": 3, "rewrite": rewrite}, **tiny), exact=False),
            Candidate(_int8(f"{channels_first}-int8-static-all-tiny-cache3", levers, everything=True), exact=False),
            _guidance_half(f"{channels_first}-int8-static-all-tiny-cache3"),
        ]
    return pool


class NoCandidateHolds(SdoptError):
    """Nothing held the floor: the verdicts come with the error, so that the command line shows why each failed."""

    def __init__(self, message: str, rows: list[dict[str, Any]]):
        super().__init__(message)
        self.rows = rows


@dataclass
class Outcome:
    chosen: str | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    not_built: dict[str, str] = field(default_factory=dict)
    out: Path | None = None


def optimize(model: str | Path, out: str | Path, settings, work: str | Path, floor: Floor = Floor(), quick: bool = False,
             budget_minutes: float | None = None, distill: dict[str, Any] | None = None, precision: str | None = None,
             rebench: bool = False, force: bool = False,
             progress: bool = True, say: Callable[[str], None] = lambda line: None, ray: "RayPlan | None" = None,  # noqa: F821
             calibration_images: list[str] | None = None) -> Outcome:
    """Build the candidates, bench them against fp32, copy the fastest that holds the floor to ``out``.
    ``ray``: build the candidates in parallel and bench them on a Ray cluster's nodes of one kind (sdopt.cluster.optimize).
    ``calibration_images``: what an inpainting checkpoint's int8 candidates repaint while calibrating."""
    import contextlib

    args = (model, out, settings, work, floor, quick, budget_minutes, distill, precision, rebench, force, progress, say, calibration_images)
    with contextlib.ExitStack() as held:  # the --work folder's lock, taken once it is made, held to the end
        if ray is None:
            return _optimize(*args, None, held)
        from sdopt.cluster.optimize import connected

        with connected(ray):
            return _optimize(*args, ray, held)


def _optimize(model, out, settings, work, floor, quick, budget_minutes, distill, precision, rebench, force, progress, say,
              calibration_images, ray, held) -> Outcome:
    from sdopt.bench.assemble import too_noisy, with_more_rounds
    from sdopt.bench.profiles import HardwareProfile
    from sdopt.bench.report import require_report_libraries
    from sdopt.bench.runner import run_bench
    from sdopt.export.run import source_checkpoint
    from sdopt.locks import folder_lock
    from sdopt.outputs import atomic_output_dir, check_output_dir, local_inputs, make_work_dir

    check_output_dir(out, force, local_inputs(model))  # before any slow work
    require_report_libraries()  # the bench extra: its report is written once every candidate is benched
    from sdopt.bench.grounding import choose_judge

    if floor.min_adherence is not None and choose_judge(settings.judge, settings.prompts) is None:
        # Without a judge every lever is held to PSNR: the floor asked for was dropped without a word.
        raise SdoptError(f"--min-adherence {floor.min_adherence:g} is a floor on the shapes judge's adherence, and no judge reads these "
                         "prompts (it reads shapes captions only, 'a red circle on the left [and a blue square on the right]'): give "
                         "such prompts (--prompts prompts/shapes-held-out.txt), or leave --min-adherence out and floor the levers' "
                         "PSNR with --lever-min-psnr")
    source, manifest = source_checkpoint(model)
    from sdopt.runtime.conditioning import is_inpainting

    if is_inpainting(manifest, source) and settings.mask_image is None:
        raise SdoptError(f"{source} is an inpainting checkpoint: it is measured inpainting, so give --init-image and --mask "
                         "(and --calibration-images for its int8 candidates)")
    started = time.monotonic()
    # The decoder learns from latents made as the bench makes them (its steps and guidance).
    distill = {"steps_per_image": settings.steps, "guidance_scale": settings.guidance_scale, **(distill or {})}
    precision = precision or float_precision(settings.device)
    if calibration_images:
        from sdopt.input_images import image_files

        calibration_images = list(image_files(calibration_images, "--calibration-images"))  # absolute: builds may run elsewhere (Ray)
        if settings.init_image:
            from sdopt.file_reading import sha256_file

            measured = sha256_file(settings.init_image)
            if same := [Path(p).name for p in calibration_images if sha256_file(p) == measured]:
                raise SdoptError(f"--calibration-images holds the image the candidates are judged on (--init-image: {', '.join(same)}): "
                                 "int8 calibrated on it would be measured on what it was fitted to, its PSNR flattered; give other images")
    from sdopt.runtime.embedded_guidance import runs_guided

    # Truncated guidance needs an unconditional pass to cut: none at guidance <= 1 (Turbo models) or in an LCM UNet.
    pool = candidates(settings.device, quick, distill, precision, calibration_images, guided=runs_guided(settings.guidance_scale, manifest.model))
    work = make_work_dir(Path(work), (source,), out)  # after every refusal above (a device without candidates, the calibration images)
    # Two optimize runs on one --work built into each other's candidate folders (the loser's export "already exists",
    # its candidate "not built"), and a rebuild removed an artifact the other was benching.
    held.enter_context(folder_lock(work, "work", "--work"))
    if ray is not None:
        from sdopt.cluster.optimize import build_all

        built, not_built = build_all(ray, pool, source, work, settings, budget_minutes, say)
    else:
        built, not_built = _build_here(pool, source, work, settings, budget_minutes, started, say, progress)
    if not built:
        raise SdoptError("no candidate could be built here: " + "; ".join(f"{k}: {v}" for k, v in not_built.items()))

    profile = HardwareProfile(name="optimize", description=f"sdopt optimize {source}", device=settings.device, precisions=[], backends=[])
    bench_out = work / "bench"
    key = _bench_key(built, source, settings)
    report = None if rebench else _earlier_bench(bench_out, key)
    if report is None:
        # Its folder is the work folder's own: an earlier bench there is replaced, and its key goes first, so that a
        # bench interrupted now (its partial report written) is never taken for that earlier, finished one.
        (bench_out / BENCH_KEY).unlink(missing_ok=True)
        if ray is not None:
            from sdopt.bench.runner import prepare_report_folder
            from sdopt.cluster.optimize import bench

            prepare_report_folder(bench_out, force=True, create=False)  # run_bench does this itself
            report = bench(ray, list(built.values()), source, bench_out, settings, progress)
        else:
            report = run_bench(list(built.values()), str(source), bench_out, settings, profile=profile, progress=progress, force=True)
        (bench_out / BENCH_KEY).write_text(json.dumps(key, indent=2) + "\n")
    else:
        say(f"== the bench of these candidates with these settings is in {bench_out}: reused (--rebench measures again)")
    by_name = {a["name"]: a for a in report["artifacts"]}
    reference = report["artifacts"][0]
    rows = []
    for candidate in pool:
        if candidate.name in not_built:
            rows.append({"name": candidate.name, "exact": candidate.exact, "holds": False, "why": f"not built: {not_built[candidate.name]}"})
            continue
        row = by_name[bench_label(built[candidate.name])]
        holds, why = floor.verdict(row, reference, candidate.exact)
        rows.append({"name": candidate.name, "report_row": row["name"], "exact": candidate.exact, "holds": holds, "why": why,
                     "latency_s": (row.get("latency_s") or {}).get("median"),
                     "speedup": 1 / row["latency_ratio_to_reference"] if row.get("latency_ratio_to_reference") else None,
                     "psnr_db": (row.get("quality") or {}).get("psnr_db"), "adherence": (row.get("adherence") or {}).get("mean")})
    holding = [r for r in rows if r["holds"] and r["latency_s"] is not None]
    choice = min(holding, key=lambda r: r["latency_s"]) if holding else None
    # Rows the bench could not time fairly (a busy machine: assemble.too_noisy): the fastest by their medians may not be.
    noisy = {a["name"]: why for a in report["artifacts"] if (why := too_noisy(a))}
    if noisy:
        print(f"sdopt optimize: warning: the bench could not time {', '.join(f'{n} ({w})' for n, w in noisy.items())} fairly "
              "(the machine was busy), so the fastest by these timings may not be the fastest: measure again on a quiet "
              f"machine (--rebench), or {with_more_rounds(settings.rounds)}", file=sys.stderr)
    summary = {
        "model": str(source), "floor": asdict(floor),
        "settings": {"quick": quick, "budget_minutes": budget_minutes, "precision": precision,
                     **({"calibration_images": list(calibration_images)} if calibration_images else {})},
        "reference": {"name": reference["name"], "latency_s": (reference.get("latency_s") or {}).get("median"),
                      "adherence": (reference.get("adherence") or {}).get("mean")},
        "candidates": rows, "chosen": choice["name"] if choice else None, "too_noisy": noisy,
        "best_exact": _fastest(rows, exact=True), "best_overall": choice["name"] if choice else None,
        # Whatever the floor says: the fastest that ran, so a report shows what the levers buy where they cannot be judged.
        "fastest_that_ran": _fastest_that_ran(rows),
    }
    (bench_out / "choice.json").write_text(json.dumps(summary, indent=2) + "\n")
    if choice is None:
        raise NoCandidateHolds(f"no candidate holds the floor (see {bench_out / 'choice.json'} and {bench_out / 'report.md'}): "
                               "lower --min-psnr, or widen the adherence floor", rows)
    from sdopt.bench.artifacts import parse_artifact_arg

    chosen = parse_artifact_arg(built[choice["name"]])
    with atomic_output_dir(out, force=force, inputs=(source, work)) as tmp:
        shutil.copytree(chosen[0], tmp, dirs_exist_ok=True)
        if chosen[3]:  # a request lever: the copy runs with it by default
            from sdopt.manifest import read_manifest

            manifest = read_manifest(chosen[0])  # the source's (the temporary folder reads as unfinished)
            manifest.export = {**(manifest.export or {}), **chosen[3]}
            manifest.write(tmp)
        shutil.copytree(bench_out, tmp / REPORT_FOLDER)  # the report with its images and choice.json
    return Outcome(choice["name"], rows, not_built, Path(out).absolute())


def _build_here(pool, source: Path, work: Path, settings, budget_minutes: float | None, started: float,
                say: Callable[[str], None], progress: bool = True) -> tuple[dict[str, str], dict[str, str]]:
    """Every candidate built on this machine, one after another: (built, not_built)."""
    from sdopt.bench.build import OPTIMIZE_PARITY_ADVICE, build_one

    built: dict[str, str] = {}
    not_built: dict[str, str] = {}
    for candidate in pool:
        # Past the budget, what --work holds built is still taken, unsaid (it costs nothing); nothing more is built.
        spent = budget_minutes is not None and time.monotonic() - started > budget_minutes * 60
        ran_out = f"the --budget-minutes {budget_minutes:g} ran out before it was built" if spent else None
        tell = (lambda line: None) if spent else say
        tell(f"== {candidate.name}")  # build_one says whether it builds it or reuses what --work holds
        try:
            built[candidate.name] = build_one(candidate.spec, source, work, settings.height, settings.width, settings.device, built,
                                              tell, progress, reuse_only=ran_out, parity_advice=OPTIMIZE_PARITY_ADVICE)
        except SdoptError as exc:
            not_built[candidate.name] = str(exc)
            tell(f"   not built: {exc}")
    return built, not_built


BENCH_KEY = "optimize-key.json"


def _bench_key(built: dict[str, str], source: Path, settings) -> dict[str, Any]:
    """What a bench run measured: the same key means the same measurement (each artifact by its manifest id).
    As JSON reads it back (tuples become lists), so a key from disk compares equal."""
    from sdopt.bench.artifacts import parse_artifact_arg
    from sdopt.manifest import read_manifest

    key = {"source": str(source), "settings": asdict(settings),
           "artifacts": {name: [read_manifest(Path(parse_artifact_arg(path)[0])).artifact_id, bench_label(path)] for name, path in built.items()}}
    return json.loads(json.dumps(key))


def _earlier_bench(bench_out: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The report of an earlier run that benched exactly these candidates with these settings, or None."""
    try:
        same = json.loads((bench_out / BENCH_KEY).read_text(encoding="utf-8")) == key
        return json.loads((bench_out / "report.json").read_text(encoding="utf-8")) if same else None
    except (OSError, ValueError):
        return None


def bench_label(text: str) -> str:
    """The name a bench row gives a built candidate (its folder, and what its argument adds)."""
    from sdopt.bench.artifacts import artifact_label, parse_artifact_arg

    path, precision, options, request = parse_artifact_arg(text)
    return artifact_label(Path(path), precision, options, request)


def _fastest_that_ran(rows: list[dict[str, Any]]) -> str | None:
    """The fastest candidate the bench timed, held to the floor or not; None when none ran (every one failed to run)."""
    ran = [r for r in rows if r.get("latency_s") is not None]
    return min(ran, key=lambda r: r["latency_s"])["name"] if ran else None


def _fastest(rows: list[dict[str, Any]], exact: bool) -> str | None:
    pick = [r for r in rows if r["holds"] and r["exact"] == exact and r["latency_s"] is not None]
    return min(pick, key=lambda r: r["latency_s"])["name"] if pick else None
