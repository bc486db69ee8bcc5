"""Measuring and choosing: bench, optimize, gate."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from pathlib import Path

from sdopt.cli.common import add_eta_flag, comma_list, int_list, is_stdout, path_list, user_path, write_text_file
from sdopt.errors import SdoptError


def _optimize(args: argparse.Namespace) -> int:
    from sdopt.bench.optimize import Floor, NoCandidateHolds, optimize
    from sdopt.bench.artifacts import model_defaults
    from sdopt.bench.settings import BenchSettings
    from sdopt.prompts import read_prompts

    floor = Floor(**{k: v for k, v in (("min_psnr", args.min_psnr), ("min_adherence", args.min_adherence),
                                        ("lever_min_psnr", args.lever_min_psnr)) if v is not None})
    work = Path(args.work) if args.work else Path(str(Path(args.output).absolute()) + ".work")
    # Before any work: a budget of 0 or less called every candidate "ran out" after the checks; 0 latents or steps
    # were dropped for the defaults without a word, and fewer failed in the tiny decoder's build.
    if args.budget_minutes is not None and not (math.isfinite(args.budget_minutes) and args.budget_minutes > 0):
        raise SdoptError(f"--budget-minutes {args.budget_minutes:g}: give the minutes building may take, a positive number "
                         "(leave it out for no limit)")
    for flag, value, least in (("--distill-latents", args.distill_latents, 2), ("--distill-steps", args.distill_steps, 1)):
        if value is not None and value < least:
            raise SdoptError(f"{flag} {value}: give {least} or more" + (" (one latent is held out to measure the decoder)" if least == 2 else ""))
    distill = {k: v for k, v in (("latents", args.distill_latents), ("train_steps", args.distill_steps)) if v is not None}
    plan = None
    if args.ray is not None:
        from sdopt.cluster.optimize import RayPlan

        plan = RayPlan(address=args.ray or None, kind=args.ray_kind, cpus=1.0 if args.cpus_per_job is None else args.cpus_per_job)
    elif args.ray_kind or args.cpus_per_job is not None:  # --cpus-per-job 0 too: said, not dropped
        raise SdoptError("--ray-kind and --cpus-per-job go with --ray [ADDRESS] (docs/ray.md)")
    images = path_list(args.calibration_images) if args.calibration_images else None
    say = (lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr))
    # Last: the flags above are refused before the model is read (it names the settings a few-step model is benched at).
    settings = BenchSettings.resolve(
        None, model_defaults(args.model), say,  # what the user did not give: the model's own where it is a few-step one
        prompts=read_prompts(args.prompts) if args.prompts is not None else None,
        seeds=int_list(args.seeds, "--seeds") if args.seeds is not None else None,
        steps=args.steps, height=args.height, width=args.width, guidance_scale=args.guidance,
        scheduler=args.scheduler, eta=args.eta, runs=args.runs, device=args.device, rounds=args.rounds, worker_start=args.worker_start,
        init_image=args.init_image, mask_image=args.mask, strength=args.strength,
    )
    try:
        outcome = optimize(args.model, args.output, settings, work, floor, quick=args.quick, budget_minutes=args.budget_minutes,
                           distill=distill or None, precision=args.precision, rebench=args.rebench, force=args.force, progress=not args.quiet,
                           say=say, ray=plan, calibration_images=images)
    except NoCandidateHolds as exc:  # the verdicts say how far each candidate was from the floor: what to lower it to
        _print_candidates(exc.rows, None)
        raise
    _print_candidates(outcome.rows, outcome.chosen)
    print(f"chosen: {outcome.chosen} -> {outcome.out} (report: {outcome.out / 'optimize' / 'report.md'})")
    return 0


def _print_candidates(rows: list[dict], chosen: str | None) -> None:
    width = max([36, *(len(r["name"]) for r in rows)])  # a long candidate name (every lever) shifted its row's columns
    print(f"{'candidate':<{width}} {'exact':<6} {'speed-up':>9} {'PSNR dB':>8} {'adherence':>10}  verdict")
    for r in rows:
        speed = f"{r['speedup']:.2f}x" if r.get("speedup") else "-"
        psnr = f"{r['psnr_db']:.1f}" if r.get("psnr_db") is not None else "-"
        adh = f"{r['adherence']:.3f}" if r.get("adherence") is not None else "-"
        mark = " <- chosen" if r["name"] == chosen else ""
        mark += f" (the report's row {r['report_row']})" if r.get("report_row", r["name"]) != r["name"] else ""
        print(f"{r['name']:<{width}} {'yes' if r['exact'] else 'no':<6} {speed:>9} {psnr:>8} {adh:>10}  {r['why']}{mark}")


def _bench(args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as held:  # --build-from's --work lock: from its build to the end of the bench of what it built
        return _bench_holding(args, held)


def _bench_holding(args: argparse.Namespace, held: contextlib.ExitStack) -> int:
    from sdopt.bench.grounding import unjudged_rows
    from sdopt.bench.profiles import load_profile
    from sdopt.bench.report import require_report_libraries
    from sdopt.bench.runner import check_device_here, check_report_folder, prepare_report_folder, run_bench
    from sdopt.bench.artifacts import model_defaults
    from sdopt.bench.settings import BenchSettings
    from sdopt.prompts import read_prompts

    if args.ray is None:
        check_report_folder(args.output, args.force)  # before anything is built or run (each profile's folder on a cluster: below)
    if args.timeout is not None and not args.timeout > 0:
        raise SdoptError(f"--timeout {args.timeout}: give the seconds an artifact may take, a positive number")
    if args.only is not None and not comma_list(args.only):
        raise SdoptError(f"--only {args.only!r}: no artifact names given; leave --only out to build every artifact of the profile")
    profiles = [load_profile(p) for p in args.profile or []]
    if len(profiles) > 1 and args.ray is None:
        raise SdoptError("several --profile are several machine kinds: add --ray [ADDRESS] to run each on its nodes (docs/ray.md), "
                         "or bench one profile at a time here")
    named = [p.name for p in profiles]
    twice = next((n for n in named if named.count(n) > 1), None)
    if twice is not None:  # their reports (OUTPUT/NAME/) and builds (WORK/NAME/) would be one folder, the last overwriting the first
        paths = sorted({str(p.path) for p in profiles if p.name == twice})
        raise SdoptError(f"--profile: {named.count(twice)} profiles are named {twice!r} ({', '.join(paths)}), and each profile's report "
                         "goes to OUTPUT/NAME/: give each --profile once, and each profile a name of its own (name = \"...\")")
    if args.ray and ":" not in args.ray and args.ray != "auto" and Path(args.ray).exists():  # `--ray ART1 ART2 --reference REF`: ART1 read as the cluster's address
        raise SdoptError(f"--ray {args.ray}: a path, not a Ray cluster's address: put the artifacts before --ray, "
                         "or give it an address (HOST:6379, ray://HOST:10001, auto)")
    if args.ray is not None:  # before any folder is touched or anything built (run_matrix checks again for Python callers)
        from sdopt.cluster.bench import refuse_local_settings
        from sdopt.cluster.connect import ray_module

        refuse_local_settings(args.rounds or 1, args.worker_start)
        ray_module()  # the ray extra, not after the artifacts are built
    require_report_libraries()  # the bench extra's too (the report's writers), before --build-from builds anything
    if args.build_from:
        if not profiles or args.work is None or args.artifacts or args.reference:
            raise SdoptError("--build-from MODEL builds the artifacts a profile lists: give --profile and --work, and no artifacts or --reference")
    elif args.work or args.only:
        raise SdoptError("--work and --only go with --build-from MODEL (building a profile's artifacts)")
    elif not args.artifacts or not args.reference:
        raise SdoptError("give the artifacts to measure and --reference (or --profile NAME --build-from MODEL --work DIR)")
    prompts = read_prompts(args.prompts) if args.prompts is not None else None
    seeds = int_list(args.seeds, "--seeds") if args.seeds is not None else None
    say = (lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr))
    plans, not_built = [], {}
    model = model_defaults(args.build_from or args.reference)  # a few-step model's own steps, guidance and sampler
    for profile in profiles or [None]:
        settings = BenchSettings.resolve(
            profile, model, None if plans else say,  # the model's own where the user did not say (once)
            prompts=prompts, seeds=seeds, steps=args.steps, height=args.height, width=args.width, guidance_scale=args.guidance,
            warmup=args.warmup, runs=args.runs, max_seconds=args.max_seconds, scheduler=args.scheduler, eta=args.eta, device=args.device, judge=args.judge,
            rounds=args.rounds, worker_start=args.worker_start, init_image=args.init_image, mask_image=args.mask, strength=args.strength,
        )
        artifacts, reference, names = args.artifacts, args.reference, None
        if args.ray is None:  # on a cluster the device is the nodes'
            check_device_here(settings.device)
        if args.build_from:
            from sdopt.bench.build import build_profile_artifacts

            only = comma_list(args.only) if args.only is not None else None
            work = Path(args.work) / profile.name if len(profiles) > 1 else Path(args.work)
            built = build_profile_artifacts(profile, args.build_from, work, settings.height, settings.width, settings.device, only, say,
                                            progress=not args.quiet, held=held)
            artifacts, reference = built.others, built.reference
            names = built.names
            not_built.update({f"{profile.name}/{k}" if len(profiles) > 1 else k: v for k, v in built.not_built.items()})
        # On a cluster every profile's report has a folder of its own under OUTPUT.
        out = Path(args.output) / profile.name if args.ray is not None and profile else Path(args.output)
        plans.append((profile, settings, artifacts, reference, names, out))
    if args.ray is None:
        profile, settings, artifacts, reference, names, out = plans[0]
        reports = [run_bench(artifacts, reference, out, settings, profile=profile, timeout=args.timeout, progress=not args.quiet,
                             force=args.force, names=names)]
        outs = [out]
    else:
        from sdopt.bench.artifacts import check_static_shapes, collect
        from sdopt.cluster.bench import ProfileRun, run_matrix

        runs = []
        for profile, settings, artifacts, reference, names, out in plans:
            entries = collect(artifacts, reference, names)
            check_static_shapes(entries, settings)
            check_report_folder(out, args.force)
            runs.append(ProfileRun(profile, entries, settings, out))
        from sdopt.locks import folder_lock

        for run in runs:  # each report folder held to the end, as run_bench holds its -o: a second bench into it is refused
            held.enter_context(folder_lock(run.out, "bench", "-o"))
        for run in runs:  # every folder checked before any is emptied
            prepare_report_folder(run.out, args.force, create=False)
        run_matrix(runs, address=args.ray or None, timeout=args.timeout, progress=not args.quiet)
        outs = [r.out for r in runs]
        reports = [json.loads((out / "report.json").read_text(encoding="utf-8")) for out in outs]
    for out in outs:
        print((out / "report.md").read_text(encoding="utf-8"))
        print(f"report: {(out / 'report.html').resolve()}")
    for name, why in not_built.items():
        print(f"not built: {name}: {why}", file=sys.stderr)
    failed_references = [r["artifacts"][0]["name"] for r in reports if r["artifacts"][0]["status"] != "ok"]
    for name in failed_references:
        print(f"sdopt bench: the reference {name} failed, so nothing was compared: see its error in the report", file=sys.stderr)
    unjudged = []  # a --judge that failed after the bench: the report is kept, but a measurement asked for is not in it
    for (_, settings, *_, out), report in zip(plans, reports):
        rows = unjudged_rows(report, settings.judge)
        if rows:
            unjudged.append(out)
            print(f"sdopt bench: the {settings.judge} judge failed, so {out / 'report.json'} has no adherence for {', '.join(rows)} "
                  "(its warnings say why); the other measurements are kept: fix the judge and bench again", file=sys.stderr)
    return 1 if not_built or failed_references or unjudged else 0


def _gate(args: argparse.Namespace) -> int:
    from sdopt.bench import gate
    from sdopt.bench.profiles import load_profile
    from sdopt.bench.rules import load_rules_file

    # --json - (or --markdown -) is for a script to parse: that output alone goes to stdout, the table to stderr. It had
    # written a file named "-", and --json /dev/stdout had the table overwrite the JSON.
    outputs = [(path, text) for path, text in ((args.markdown, lambda: gate.table(result, markdown=True)),
                                               (args.json, lambda: json.dumps(result.to_dict(), indent=2) + "\n")) if path]
    piped = [text for path, text in outputs if is_stdout(path)]
    files = [(path, text) for path, text in outputs if text not in piped]
    if len(piped) > 1:
        raise SdoptError("--markdown and --json both name stdout: give one of them a file")
    if len(files) > 1 and Path(files[0][0]).resolve() == Path(files[1][0]).resolve() and not Path(files[0][0]).is_char_device():
        # the JSON was written over the Markdown (a job summary that showed a JSON blob, or a parser reading Markdown);
        # /dev/null for both discards both, as asked
        raise SdoptError(f"--markdown and --json both name {files[0][0]}: give each a file of its own")
    try:
        current = gate.read_report(args.current)
        profile_gate = False  # the rules are a profile's [gate]
        baseline = gate.read_report(args.baseline) if args.baseline else None
        if args.rules:
            rules, source = load_rules_file(args.rules), args.rules
        elif args.profile or current.get("profile"):
            try:
                profile = load_profile(args.profile or current["profile"])
            except SdoptError as exc:
                if args.profile:
                    raise
                # a profile of the user's own, named by the report but not installed here: say where the name came from
                raise SdoptError(f"{args.current} was benched with profile {current['profile']!r}, whose [gate] rules apply, but it is not "
                                 f"found here ({exc}): give --profile FILE.toml (the profile it was made with) or --rules FILE") from None
            rules, profile_gate = profile.gate or gate.DEFAULT_RULES, bool(profile.gate)
            source = f"profile {profile.name}" if profile.gate else f"default rules (profile {profile.name} has no [gate])"
        else:
            rules, source = gate.DEFAULT_RULES, "default rules"
        result = gate.gate(current, rules, baseline)
        if profile_gate and (otherwise := profile.benched_otherwise(current.get("request") or {})):
            # a profile's floors hold for benches like its own: cpu-shapes' adherence >= 0.85 judged a 4-step bench in silence.
            # "Bench with --profile X" alone was advice a report benched with X and --steps 4 had followed already.
            result.notes.insert(0, f"profile {profile.name}'s [gate] rules were drawn for its own bench settings, and this report "
                                   f"was benched otherwise: {', '.join(otherwise)}; its floors may not hold for such a bench: bench "
                                   f"with --profile {profile.name} and none of these set otherwise (--steps, --prompts, --seeds, ...) "
                                   "to gate on them, or give --rules for these settings")
    except SdoptError as exc:
        # Not judged is a verdict too: the --json and --markdown a CI step reads (its job summary, a PR comment) were not
        # written, so a script found no file, or the last run's "pass" in a kept workspace, and `--json -` printed nothing
        result = gate.GateResult(notes=[f"not judged: {exc}"], error="incomparable" if isinstance(exc, gate.IncomparableReports) else "input")
        for path, text in files:
            write_text_file(path, text())
        for text in piped:
            print(text(), end="")
        raise
    # The files first: one that cannot be written is exit 2, and no verdict is printed above that error.
    for path, text in files:
        write_text_file(path, text())
    said = sys.stderr if piped else sys.stdout
    print(f"rules: {source}; baseline: {args.baseline or 'none (absolute floors only)'}", file=said)
    print(gate.table(result), file=said)
    for text in piped:
        print(text(), end="")
    return result.exit_code


def _add_worker_start(p: argparse.ArgumentParser) -> None:
    from sdopt.bench.forkserver import WORKER_STARTS

    p.add_argument("--worker-start", choices=WORKER_STARTS, default=None,
                   help="fork (default): each artifact's worker process is forked from one that imported its backend's libraries once "
                        "(Linux), so load time is the artifact's own; cold: a fresh interpreter per worker, load time including the imports")


def _add_image_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--init-image", type=user_path, default=None, metavar="PATH", help="bench img2img: every prompt and seed starts from this image "
                   "(resized to --height/--width); with --ray, a path every node sees")
    p.add_argument("--mask", type=user_path, default=None, metavar="PATH", help="bench inpainting: white = repaint, black = keep (needs --init-image; "
                   "an inpainting checkpoint takes only this)")
    p.add_argument("--strength", type=float, default=None, help="with --init-image: how much of the schedule runs (default 0.8)")


def add_bench(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="measure artifacts side by side: latency per stage, memory, size, quality vs a reference",
        description="Measure artifacts side by side. Either name them (ARTIFACT... --reference REF), or let a "
        "profile's [[artifacts]] list be built from one checkpoint (--profile NAME --build-from MODEL --work DIR); "
        "then exit 1 if one could not be built here (the report has the others).",
    )
    p.add_argument("artifacts", type=user_path, nargs="*", help="artifact folders; PATH@bf16 runs a torch artifact in another precision")
    p.add_argument("--reference", type=user_path, help="the artifact whose images count as correct (usually the fp32 checkpoint)")
    p.add_argument("--build-from", type=user_path, metavar="MODEL", help="build the profile's artifacts from this checkpoint (reused when already under --work)")
    p.add_argument("--work", type=user_path, help="with --build-from: where the built artifacts are kept")
    p.add_argument("--only", help="with --build-from: comma-separated artifact names of the profile, run in this order (the reference always runs, first)")
    p.add_argument("--profile", type=user_path, action="append", help="hardware profile name (sdopt's own, or ./profiles/NAME.toml) or a .toml file; "
                   "with --ray, repeat it to run the matrix on each profile's kind of node, one report each under OUTPUT/NAME/")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run each artifact as a Ray task on a node of its profile's kind ([resources] in the profile): on the cluster at ADDRESS "
                        "(ray://HOST:10001, HOST:6379 or auto), else on a local one started for the run; artifacts must be on a path every node sees (docs/ray.md)")
    p.add_argument("--prompts", type=user_path, help="file with one prompt per line (default: the profile's, else two built-in prompts)")
    p.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2 (default: the profile's, else 0,1)")
    p.add_argument("--steps", type=int, help="denoising steps (default: the profile's, else the reference's own for a few-step model, else 4)")
    p.add_argument("--height", type=int, help="image height in pixels, a multiple of 8 (default: the profile's, else 256, or the reference's own size where smaller)")
    p.add_argument("--width", type=int, help="image width in pixels, a multiple of 8 (default: the profile's, else 256, or the reference's own size where smaller)")
    p.add_argument("--guidance", "--guidance-scale", type=float, help="classifier-free guidance scale (default: the profile's, else the reference's own "
                   "for a few-step model (8.5 for an LCM), else 7.5)")
    p.add_argument("--scheduler", help="default: the profile's, else the reference's own for a few-step model (lcm for an LCM), else euler")
    add_eta_flag(p)
    p.add_argument("--warmup", type=int, help="warm-up generate calls before measuring (default: the profile's, else 1); the first, of one prompt and "
                   "seed, always runs: 0 runs it too")
    p.add_argument("--runs", type=int, help="measured passes over all prompts and seeds (default: the profile's, else 3)")
    p.add_argument("--rounds", type=int, default=None, metavar="K",
                   help="go over every artifact K times, the order rotating, each time a fresh process with its warm-up and --runs; "
                        "the rows join every round's samples, so a shared machine's slow minutes land on every artifact alike (default 1)")
    _add_image_options(p)
    _add_worker_start(p)
    p.add_argument("--max-seconds", type=float, default=None, help="per-artifact time budget: no more warm-ups or measured passes once spent (at least one pass runs, the first generate itself when it alone outlasts the budget and covers every prompt and seed; the report says so)")
    p.add_argument("--device", help="default: the profile's, else cpu")
    p.add_argument("--judge", help="prompt adherence judge: auto (classical when every prompt is a shapes caption, else none; default), none, classical, "
                   "openai (a VLM behind an OpenAI-compatible API: SDOPT_JUDGE_URL, SDOPT_JUDGE_MODEL, SDOPT_JUDGE_API_KEY), "
                   "transformers (a local VLM folder in SDOPT_JUDGE_MODEL); docs/judges.md")
    p.add_argument("--timeout", type=float, default=None, help="seconds an artifact may take before it is recorded as failed")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or notes (the report and warnings are still printed)")
    p.add_argument("-o", "--output", required=True, type=user_path, help="report folder (created if missing; other files in it are kept)")
    p.add_argument("--force", action="store_true", help="bench into a report folder that holds another bench's report: its report "
                   "files and raw/ results are removed first (other files in the folder are kept)")
    p.set_defaults(func=_bench)


def add_optimize(sub) -> None:
    p = sub.add_parser("optimize", help="build the candidates this machine can run, bench them against fp32, keep the fastest above a quality floor")
    p.add_argument("model", type=user_path, help="Diffusers model folder (or hub id) in full precision")
    p.add_argument("-o", "--output", required=True, type=user_path, help="output artifact folder (the chosen candidate, with its bench report in optimize/)")
    p.add_argument("--work", default=None, type=user_path, help="where candidates are built and kept, so a second run resumes (default: OUTPUT.work)")
    p.add_argument("--device", default="cpu", help="where the candidates are built for and benched (default cpu; CPU candidates only so far: a GPU device is refused)")
    p.add_argument("--min-psnr", type=float, default=None, help="floor for exact candidates: worst-case PSNR vs fp32 in dB (default 30)")
    p.add_argument("--min-adherence", type=float, default=None, help="floor for levers (tiny decoder, caching): adherence at least this, "
                   "besides within 0.05 of fp32's (the shapes judge, which reads shapes captions only: refused with other prompts, whose "
                   "levers are held to --lever-min-psnr)")
    p.add_argument("--lever-min-psnr", type=float, default=None, help="where no judge reads the prompts: the PSNR floor for levers "
                   "(default: --min-psnr; levers change the computation, so 30 dB is usually out of their reach)")
    p.add_argument("--prompts", type=user_path, default=None, help="prompt file, one per line (default: the bench's)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps of the bench (default: the model's own for a few-step model, else 4, as sdopt bench)")
    p.add_argument("--height", type=int, default=None, help="image height in pixels of the bench, a multiple of 8 (default 256, or the model's own size where smaller: 64 for shapes)")
    p.add_argument("--width", type=int, default=None, help="image width in pixels of the bench, a multiple of 8 (default 256, or the model's own size where smaller: 64 for shapes)")
    p.add_argument("--guidance", "--guidance-scale", type=float, default=None, help="classifier-free guidance scale of the bench (default: the model's own "
                   "for a few-step model (8.5 for an LCM), else 7.5)")
    p.add_argument("--scheduler", default=None, help="scheduler of the bench (default: the model's own for a few-step model, else euler)")
    add_eta_flag(p)
    p.add_argument("--runs", type=int, default=None, help="timed runs per candidate (default 3)")
    p.add_argument("--rounds", type=int, default=None, metavar="K",
                   help="bench every candidate K times, the order rotating, and join the samples (sdopt bench --rounds; default 1)")
    _add_image_options(p)
    p.add_argument("--calibration-images", default=None, metavar="PATHS",
                   help="an inpainting checkpoint's int8-static candidates calibrate repainting these (a folder of images, or comma-separated "
                        "files; not the --init-image the bench measures on); without them those candidates are not built")
    _add_worker_start(p)
    p.add_argument("--quick", action="store_true", help="a small candidate set (OpenVINO in this CPU's float precision, bf16 where it is native, else fp32; "
                   "with step-feature caching every 2 steps, and with truncated guidance too): a first look")
    p.add_argument("--budget-minutes", type=float, default=None, help="stop building new candidates after this long (the built ones are still benched)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                   help="what the OpenVINO candidates' float parts run in (default: bf16 where this CPU has it natively, else fp32)")
    p.add_argument("--distill-latents", type=int, default=None, help="latents the tiny-decoder candidates learn from (default 256; fewer for big models)")
    p.add_argument("--distill-steps", type=int, default=None, help="training steps of the tiny-decoder candidates (default 1500; fewer for big models)")
    p.add_argument("--rebench", action="store_true", help="measure again even where the work folder holds a bench of the same candidates and settings")
    p.add_argument("--force", action="store_true", help="replace the output folder if it exists")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or notes (the candidates' table is still printed)")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="build the candidates in parallel and bench them on a Ray cluster (at ADDRESS, else a local one); the work folder must be on a path every node sees (docs/ray.md)")
    p.add_argument("--ray-kind", default=None, metavar="RESOURCE",
                   help="with --ray: the custom resource naming the node kind every build and bench job runs on, so the timings compare (ray start --resources '{\"RESOURCE\": 1}')")
    p.add_argument("--cpus-per-job", type=float, default=None, help="with --ray: CPUs each build and bench job holds (default 1); a bench job still computes with the threads a local run would (docs/ray.md)")
    p.set_defaults(func=_optimize)


def add_gate(sub) -> None:
    p = sub.add_parser(
        "gate", help="check a bench report against a baseline and thresholds (exit 0 ok, 1 regression, 2 incomparable)",
        description="Judge a bench report by rules, per metric: '\"latency.median\" = \"+10%\"' (may grow 10% against the "
        "baseline; latency as the ratio to the reference of the same run), '\"quality.psnr_db\" = \">= 30\"' (an absolute floor, "
        "needs no baseline), '\"status\" = \"ok\"'. Metrics: latency.median, latency.p90, load, peak_memory, size, quality.psnr_db, "
        "quality.ssim, quality.latent_cosine, adherence, status. Exit 0: every check passed (or within the recorded noise); "
        "1: a regression, or an artifact failed or missing; 2: the reports cannot be compared (other settings, device or schema), a number "
        "is missing, or the timings were too noisy to judge: bench again (--json's cannot_judge says which: too noisy, missing, "
        "incomparable, input). README, 'Regression gate', has the whole grammar.",
    )
    p.add_argument("current", type=user_path, help="report.json of this run")
    p.add_argument("--baseline", type=user_path, help="report.json to compare with; without it only absolute floors are checked")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--rules", type=user_path, help="TOML file with a [gate] table of metric = rule")
    group.add_argument("--profile", type=user_path, help="take the rules from this hardware profile (default: the report's profile)")
    p.add_argument("--markdown", type=user_path, help="also write the table as Markdown here (for a CI job summary); - : on stdout, "
                   "the table on stderr")
    p.add_argument("--json", type=user_path, help="also write the verdict as JSON here; - : on stdout, the table on stderr")
    p.set_defaults(func=_gate)
