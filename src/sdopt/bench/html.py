"""A self-contained report.html: tables, plots and an image grid, all inlined (no network)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from sdopt.bench.report import figure_cells, flat_rows, precision_label, table_header, vae_encodes

_MAX_GRID_SAMPLES = 4


def _png(fig) -> str:
    import warnings

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    with warnings.catch_warnings():
        # An artifact named in CJK or emoji: matplotlib's font has no glyph for it and warned once per character, nine
        # lines under "sdopt: warning:" for one name; the plot draws boxes there, the report's tables the name.
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font")
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _image_uri(array: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _latency_plot(rows, report) -> str:
    return _png(latency_figure(rows, report["request"]["steps"]))


def latency_figure(rows, steps: int):
    """Each artifact's bar of its stages' medians per image (a matplotlib figure)."""
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["latency_median_s"]]
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * len(ok)))
    names = [r["artifact"] for r in ok]
    te = np.array([r["text_encoder_s"] for r in ok])
    vae = np.array([r["vae_decoder_s"] for r in ok])
    if all(r["other_s"] is not None for r in ok):  # each stage's median per image, "other" measured call by call
        unet = np.array([r["unet_per_image_s"] for r in ok])
        other = np.array([r["other_s"] for r in ok])
    else:  # a report from before those were kept: the median step times the steps, the rest of the median image as other
        unet = np.array([r["unet_step_s"] * steps for r in ok])
        other = np.maximum(np.array([r["latency_median_s"] for r in ok]) - te - unet - vae, 0)
    encode = np.array([r.get("vae_encoder_s") or 0.0 for r in ok])  # img2img and inpainting: the init image to latents
    left = np.zeros(len(ok))
    stages = ((te, "text encoder", "#4c72b0"), (encode, "VAE encode", "#8172b3"), (unet, "UNet steps", "#dd8452"),
              (vae, "VAE decode", "#55a868"), (other, "other", "#bbbbbb"))
    for values, label, color in (s for s in stages if s[1] != "VAE encode" or encode.any()):
        ax.barh(names, values * 1000, left=left, label=label, color=color)  # in ms, as the tables beside it
        left += values * 1000
    ax.invert_yaxis()
    ax.set_xlabel("ms per image (each stage's median)")
    ax.set_title("Latency per artifact and stage")
    # Beside the axes, not on them: inside, "lower right" covered the end of the slowest artifact's bar.
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    return fig


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both lower latency and higher PSNR."""
    front = []
    for i, (lat, q) in enumerate(points):
        dominated = any((l2 <= lat and q2 >= q) and (l2 < lat or q2 > q) for j, (l2, q2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def _pareto_plot(rows) -> str | None:
    fig = pareto_figure(rows)
    return _png(fig) if fig is not None else None


def pareto_figure(rows):
    """Latency against PSNR, each artifact labelled, the Pareto front's points ringed and joined (a matplotlib figure;
    None without a row that has both)."""
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["latency_median_s"] and r["psnr_db"] is not None]
    if not ok:
        return None
    points = [(r["latency_median_s"] * 1000, r["psnr_db"]) for r in ok]  # in ms, as the tables beside it
    front = pareto_front(points)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(*zip(*points), color="#4c72b0", zorder=3)
    # The front's points ringed (the legend shows a ring, also for a front of one point, where a line alone shows
    # nothing), and joined when there are two or more.
    ax.plot([points[i][0] for i in front], [points[i][1] for i in front], color="#c44e52", linestyle="--" if len(front) > 1 else "none",
            marker="o", markersize=11, markerfacecolor="none", zorder=2, label="Pareto front" if len(front) > 1 else "Pareto front (one artifact)")
    # Room inside the axes for the labels: one at the right edge (the slowest) went past it, and out of the picture.
    ax.margins(x=0.08, y=0.12)
    fig.canvas.draw()
    x_mid = sum(ax.get_xlim()) / 2
    labels = []
    for r, (x, y) in zip(ok, points):
        right_half = x > x_mid  # its label to the left of the point, so it stays inside the axes
        labels.append(ax.annotate(r["artifact"], (x, y), textcoords="offset points", xytext=(-6 if right_half else 6, 4), fontsize=8,
                                  ha="right" if right_half else "left"))
    _apart(fig, labels)
    ax.set_xlabel("latency, ms per image (median)")
    ax.set_ylabel("PSNR vs reference, dB (worst sample; 100 = identical)")
    ax.set_title("Speed vs quality")
    ax.legend(fontsize=8)
    return fig


def _apart(fig, labels) -> None:
    """Move labels down until none overlaps another: artifacts of near-equal speed and quality (sd15's int4 and nf4
    rows) printed their names over each other. Each in turn, from the top, steps below the labels it meets."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    points_per_pixel = 72 / fig.dpi
    placed = []
    for label in sorted(labels, key=lambda a: -a.get_window_extent(renderer).y0):
        for _ in range(len(labels)):
            box = label.get_window_extent(renderer)
            hit = next((other for other in placed if box.overlaps(other)), None)
            if hit is None:
                break
            dx, dy = label.xyann
            label.xyann = (dx, dy - (box.y1 - hit.y0 + 1) * points_per_pixel)  # its top just under the other's bottom
        placed.append(label.get_window_extent(renderer))


def _memory_plot(rows) -> str:
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 0.6 + 0.45 * len(rows)))
    names = [r["artifact"] for r in rows]
    a1.barh(names, [(r["peak_memory_bytes"] or 0) / 2**20 for r in rows], color="#8172b3")
    for i, row in enumerate(rows):  # a peak not measured (Windows: null) is no bar of 0 MiB
        if row["peak_memory_bytes"] is None:
            a1.text(0, i, " not measured", va="center", fontsize=8, color="#555555")
    a1.set_xlabel("MiB")
    a1.set_title("Peak memory during generate")
    a2.barh(names, [(r["size_bytes"] or 0) / 2**20 for r in rows], color="#937860")
    a2.set_xlabel("MiB")
    a2.set_title("Size on disk")
    for ax in (a1, a2):
        ax.invert_yaxis()
    a2.set_yticklabels([])
    return _png(fig)


# What a difference map's colours mean (its "×4" alone did not say what black or yellow stood for).
_DIFF_AMPLIFY = 4
_DIFF_SCALE = (f"A difference map is |artifact − reference| per pixel, averaged over R, G and B, times {_DIFF_AMPLIFY}, in the "
               f"'inferno' colours: black is identical, purple about 10-20 levels of 255, orange about 40, yellow {255 / _DIFF_AMPLIFY:.0f} or more.")


def _diff_heatmap(reference: np.ndarray, image: np.ndarray) -> np.ndarray:
    """|difference| averaged over channels, amplified ×4, in the 'inferno' colour map."""
    from matplotlib import colormaps

    diff = np.abs(reference.astype(np.float32) - image.astype(np.float32)).mean(axis=2)
    rgba = colormaps["inferno"](np.clip(diff * _DIFF_AMPLIFY / 255.0, 0, 1))
    return (rgba[..., :3] * 255).astype(np.uint8)


def _image_grid(report: dict, out: Path) -> str:
    from PIL import Image

    artifacts = [a for a in report["artifacts"] if a.get("samples")]
    if not artifacts:
        return "<p>No images: every artifact failed.</p>"
    ref = next((a for a in artifacts if a["name"] == report["reference"]), None)
    prompts = report["request"]["prompts"]
    # Without the reference's images (it failed) there is no difference to map: its cell under every artifact read
    # "reference", as under the reference itself.
    parts = [] if ref else [f"<p>The reference, {html.escape(str(report['reference']))}, made no images (it failed): "
                            "no difference maps.</p>"]
    # An artifact that failed before making an image has no column: said, where the table has its row
    unseen = [a["name"] for a in report["artifacts"] if not a.get("samples") and a["name"] != report["reference"]]
    if unseen:
        parts.append(f"<p>Not shown, having made no images (failed): {html.escape(', '.join(map(str, unseen)))}.</p>")
    samples = artifacts[0]["samples"]
    # Every prompt's first seed before any prompt's second: the first _MAX_GRID_SAMPLES in prompt order left the last
    # prompts of a bench with several seeds out of the grid.
    turn, count = [], {}  # each sample's place among its prompt's seeds
    for s in samples:
        turn.append(count.get(s["prompt_index"], 0))
        count[s["prompt_index"]] = turn[-1] + 1
    shown = sorted(sorted(range(len(samples)), key=lambda i: (turn[i], samples[i]["prompt_index"]))[:_MAX_GRID_SAMPLES])
    for sample_index in shown:
        sample = samples[sample_index]
        title = f"prompt {sample['prompt_index'] + 1} “{html.escape(prompts[sample['prompt_index']])}”, seed {sample['seed']}"
        ref_img = np.asarray(Image.open(out / ref["work_dir"] / ref["samples"][sample_index]["image"]).convert("RGB")) if ref else None
        cells = []
        for a in artifacts:
            this = a["samples"][sample_index]
            img = np.asarray(Image.open(out / a["work_dir"] / this["image"]).convert("RGB"))
            score = f" · adherence {this['adherence']:.2f}" if this.get("adherence") is not None else ""
            if a.get("status") != "ok":  # images from a row the table marks failed (NaN, all black): marked here too
                score += f" · failed ({html.escape(str(a.get('status')))})"
            heat = _diff_heatmap(ref_img, img) if ref_img is not None and a is not ref else None
            cells.append(
                f"<figure><img src='{_image_uri(img)}' alt='{html.escape(a['name'])}'>"
                + (f"<img src='{_image_uri(heat)}' alt='difference'>" if heat is not None
                   else f"<div class='ref'>{'reference' if a is ref else 'no reference'}</div>")
                + f"<figcaption>{html.escape(a['name'])}{score}</figcaption></figure>"
            )
        parts.append(f"<h3>{title}</h3><div class='grid'>{''.join(cells)}</div>")
    total = len(artifacts[0]["samples"])
    if total > _MAX_GRID_SAMPLES:
        parts.append(f"<p>{_MAX_GRID_SAMPLES} of the {total} images each artifact made (prompts × seeds) are shown, each prompt's "
                     "first seed first; the tables count them all, and every one is under raw/.</p>")
    return "\n".join(parts)


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1400px}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
td:first-child,th:first-child{text-align:left}.failed{background:#fde2e2}
.grid{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0;text-align:center;font-size:12px}
figure img{display:block;width:192px;height:192px;image-rendering:pixelated;margin-bottom:3px}
.ref{width:192px;height:192px;display:flex;align-items:center;justify-content:center;background:#eee;color:#666}
.plots img{max-width:100%}.warning{background:#fff3cd;border-left:5px solid #e0a800;padding:8px 12px;max-width:1100px}
"""


def _paragraph_html(text: str) -> str:
    """One of report.md's paragraphs as HTML: a heading, a bullet list, or text (its ** and ` marks dropped)."""
    plain = html.escape(text.replace("**", "").replace("`", ""))
    if plain.startswith("## "):
        return f"<h3>{plain[3:]}</h3>"
    lines = plain.splitlines()
    if all(line.startswith("- ") for line in lines):
        return "<ul>" + "".join(f"<li>{line[2:]}</li>" for line in lines) + "</ul>"
    return f"<p>{'<br>'.join(lines)}</p>"


def render_html(report: dict, out: Path) -> str:
    from sdopt.bench.report import markdown

    import matplotlib

    matplotlib.use("Agg")
    rows = flat_rows(report)
    encodes = vae_encodes(rows)
    header = table_header(encodes)
    body = []
    for r in rows:
        levers = [x for x in (r["replaced"], f"cache every {r['cache_interval']} steps" if (r["cache_interval"] or 1) > 1 else None,
                              f"guidance until {r['guidance_end']:g} of the steps" if r.get("guidance_end") else None) if x]
        cells = [r["artifact"] + (f" ({'; '.join(levers)})" if levers else ""), r["backend"], precision_label(r), r["status"],
                 *figure_cells(r, encodes)]
        # A failed row's error is said once, under "Failures" below, as in report.md: in its cell, a sha256 mismatch's
        # 150 characters widened the table past a 1400-px window, its last columns cut off.
        cls = "" if r["status"] == "ok" else " class='failed'"
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    ok_rows = [r for r in rows if r["status"] == "ok" or r["latency_median_s"]]
    plots = []
    if ok_rows:
        plots.append(_latency_plot(ok_rows, report))
        pareto = _pareto_plot(ok_rows)
        if pareto:
            plots.append(pareto)
        plots.append(_memory_plot(ok_rows))
    paragraphs = markdown(report).split("\n\n")
    summary = paragraphs[1]  # the bullet list: machine, software, request
    # The warnings (timings too noisy to compare, an interrupted run) in a box of their own above the table: as the
    # summary's last plain bullet they read like the creation date.
    summary_html = "<ul>" + "".join(f"<li>{html.escape(line[2:].replace('**', ''))}</li>" for line in summary.splitlines()
                                    if not line.startswith("- **warning**")) + "</ul>"
    # The plots (and a screenshot of them) say what machine and request they measured: both were only at the top.
    setting = [line[2:].replace("**", "") for line in summary.splitlines() if line.startswith(("- machine: ", "- request: "))]
    setting_html = f"<p class='setting'>{html.escape('; '.join(setting))}</p>"
    warnings_html = "".join(f"<p class='warning'><strong>Warning:</strong> {html.escape(w)}</p>" for w in report.get("warnings", []))
    # What report.md says below its table (how each column is measured, levers, budgets, failures, per-stage rates).
    table_at = next((i for i, p in enumerate(paragraphs) if p.startswith("| artifact")), len(paragraphs))
    notes_html = "".join(_paragraph_html(p) for p in paragraphs[table_at + 1:] if p.strip())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sdopt bench report</title><style>{_CSS}</style></head>
<body>
<h1>sdopt bench report{html.escape(' — ' + report['profile']) if report.get('profile') else ''}</h1>
{summary_html}
{warnings_html}
<h2>Results</h2>
<table><tr>{''.join(f'<th>{h}</th>' for h in header)}</tr>{''.join(body)}</table>
{notes_html}
<h2>Plots</h2>
{setting_html}
<div class="plots">{''.join(f"<p><img src='{p}' alt='plot'></p>" for p in plots)}</div>
<h2>Images: reference beside each artifact, same prompt and seed, with the difference (×4) below</h2>
<p>{_DIFF_SCALE}</p>
{_image_grid(report, out)}
</body></html>
"""
