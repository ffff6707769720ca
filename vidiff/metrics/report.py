"""The HTML report of ``vidiff eval``: one self-contained page (no scripts, no network resources).

Plots are drawn with matplotlib (the Agg canvas, no pyplot state) and embedded as PNG ``data:`` URIs:
per-frame curves (consecutive-frame difference, colour drift, warp error, fidelity against the reference),
the flow magnitude over time, and a contact sheet of evenly spaced frames of each video. One result gives a
table of the set's values and one of per-video values; two results (``vidiff eval --compare``) give a table
side by side, with the difference and which run is better by the metric's direction, and their curves
overlaid (solid: the first run, dashed: the second). Every string that comes from the user (paths, video
names, labels) is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["CURVE_TITLES", "contact_sheet_png", "curves_png", "format_value", "render_report"]

# curve key of vidiff.metrics.suite.evaluate -> (plot title, y label, x label)
CURVE_TITLES: dict[str, tuple[str, str, str]] = {
    "frame_difference": ("Consecutive-frame difference", "mean |frame i+1 - frame i|", "frame pair i"),
    "colour_drift": ("Colour drift from frame 0", "colour-moment distance", "frame"),
    "warp_error": ("Warp error", "squared error", "frame pair i"),
    "reference_psnr": ("PSNR against the reference", "dB", "frame"),
    "reference_ssim": ("SSIM against the reference", "SSIM", "frame"),
    "first_frame_psnr": ("PSNR of each frame against the conditioning image", "dB", "frame"),
    "first_frame_ssim": ("SSIM of each frame against the conditioning image", "SSIM", "frame"),
    "clip_consistency": ("CLIP consistency with the first and previous frame", "cosine", "frame t (from 1)"),
    "flow_magnitude": ("Flow magnitude over time", "mean |flow| (px/frame)", "frame pair i"),
}
MAX_LINES = 12  # lines per plot (videos beyond are left out of the plot, and the plot says so)
MAX_SHEETS = 16  # contact sheets per report


def format_value(x: float | None) -> str:
    """A metric value for a table: 4 significant digits, ∞ for infinities, n/a for a missing value."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    return f"{x:.4g}"


def _png_uri(fig: Any) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _finite(values: Sequence[float]) -> list[float]:
    return [v if math.isfinite(v) else math.nan for v in values]


def curves_png(title: str, ylabel: str, xlabel: str, runs: Sequence[tuple[str, Mapping[str, Sequence[float]]]]) -> str:
    """One plot, a line per video of each run (solid for the first run, dashed for the second), as a PNG URI."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6))
    ax = fig.add_subplot()
    shown = left = 0
    for r, (label, by_video) in enumerate(runs):
        for i, (name, values) in enumerate(by_video.items()):
            if i >= MAX_LINES:
                left += 1
                continue
            tag = f"{label}: {name}" if len(runs) > 1 else name
            ax.plot(range(len(values)), _finite(values), linestyle="-" if r == 0 else "--", marker=".",
                    color=f"C{i % 10}", label=tag)
            shown += 1
    ax.set_title(title + (f" ({left} more videos not drawn)" if left else ""))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if shown:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return _png_uri(fig)


def contact_sheet_png(name: str, frames: torch.Tensor, count: int = 8) -> str:
    """Up to ``count`` evenly spaced frames of ``frames (T, 3, H, W)`` in [0, 1], labelled, as a PNG URI."""
    from matplotlib.figure import Figure

    t = frames.shape[0]
    idx = sorted({round(i * (t - 1) / max(1, count - 1)) for i in range(min(count, t))})
    h, w = frames.shape[-2:]
    cell = 1.6
    fig = Figure(figsize=(cell * len(idx), cell * h / w + 0.5))
    for k, i in enumerate(idx):
        ax = fig.add_subplot(1, len(idx), k + 1)
        ax.imshow(frames[i].clamp(0, 1).permute(1, 2, 0).float().numpy(), interpolation="nearest")
        ax.set_title(f"frame {i}", fontsize=8)
        ax.axis("off")
    fig.suptitle(name, fontsize=9)
    fig.tight_layout()
    return _png_uri(fig)


_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1100px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f0f0f0; }
.better { font-weight: bold; color: #075; }
.muted { color: #777; }
.wide { overflow-x: auto; }
img { max-width: 100%; height: auto; display: block; margin: 0.5em 0; }
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{_e(alt)}">'


def _sources(label: str, result: Mapping[str, Any]) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in result.get("inputs", {}).items())
    return f"<h3>{_e(label)}</h3><table>{rows}</table>" if rows else ""


def _better_of(better: str | None, a: float, b: float) -> int | None:
    """0 when ``a`` is better, 1 when ``b`` is, None for a tie or when it cannot be said."""
    if better not in ("higher", "lower") or a == b or math.isnan(a) or math.isnan(b):
        return None
    return int((b > a) == (better == "higher"))


def _metrics_table(runs: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    names = list(dict.fromkeys(n for _, r in runs for n in r.get("metrics", {})))
    better = {n: d for _, r in runs for n, d in r.get("better", {}).items()}
    desc = {n: d for _, r in runs for n, d in r.get("descriptions", {}).items()}
    head = "".join(f"<th>{_e(label)}</th>" for label, _ in runs)
    extra = "<th>second - first</th>" if len(runs) == 2 else ""
    rows = []
    for n in names:
        vals = [r.get("metrics", {}).get(n) for _, r in runs]
        best = _better_of(better.get(n), *vals) if len(vals) == 2 and None not in vals else None
        cells = "".join(f'<td class="num{" better" if best == i else ""}">{_e(format_value(v))}</td>'
                        for i, v in enumerate(vals))
        if len(runs) == 2:
            diff = vals[1] - vals[0] if None not in vals else None
            cells += f'<td class="num">{_e(format_value(diff))}</td>'
        direction = f"{better[n]} is better" if better.get(n) in ("higher", "lower") else "neither"
        rows.append(f"<tr><th>{_e(n)}</th>{cells}<td>{_e(direction)}</td>"
                    f'<td class="muted">{_e(desc.get(n, ""))}</td></tr>')
    table = (f"<table><tr><th>metric</th>{head}{extra}<th>direction</th><th>what it measures</th></tr>"
             + "".join(rows) + "</table>")
    skipped = {n: reason for _, r in runs for n, reason in r.get("skipped", {}).items()}
    if skipped:
        table += "<h3>Skipped</h3><table><tr><th>metric</th><th>why</th></tr>" + "".join(
            f"<tr><th>{_e(n)}</th><td>{_e(why)}</td></tr>" for n, why in skipped.items()) + "</table>"
    return table


def _per_video_table(result: Mapping[str, Any]) -> str:
    per = result.get("per_video", {})
    names = list(dict.fromkeys(m for vals in per.values() for m in vals))
    if not names:
        return ""
    head = "".join(f"<th>{_e(n)}</th>" for n in names)
    rows = "".join(f"<tr><th>{_e(v)}</th>" + "".join(f'<td class="num">{_e(format_value(vals.get(n)))}</td>'
                                                     for n in names) + "</tr>" for v, vals in per.items())
    return f'<div class="wide"><table><tr><th>video</th>{head}</tr>{rows}</table></div>'


def render_report(runs: Sequence[tuple[str, Mapping[str, Any]]], *,
                  videos: Mapping[str, torch.Tensor] | None = None, title: str = "vidiff eval") -> str:
    """The report page for one result, or two side by side, as HTML text.

    ``runs``: ``(label, result)`` pairs, results as :func:`vidiff.metrics.suite.evaluate` returns them (plus
    ``skipped`` and ``inputs``, shown as given). ``videos``: frames by video name, for the contact sheets.
    """
    if not 1 <= len(runs) <= 2:
        raise ValueError(f"a report shows one result or two side by side, got {len(runs)}")
    parts = [f"<h1>{_e(title)}</h1>", *(_sources(label, r) for label, r in runs)]
    parts += ["<h2>Metrics</h2>", _metrics_table(runs)]
    if len(runs) == 1 and (per := _per_video_table(runs[0][1])):
        parts += ["<h2>Per video</h2>", per]
    keys = list(dict.fromkeys(k for _, r in runs for k in r.get("curves", {})))
    keys = [k for k in keys if k != "flow_magnitude"] + [k for k in keys if k == "flow_magnitude"]
    if keys:
        parts.append("<h2>Per-frame curves</h2>")
    for k in keys:
        t, ylabel, xlabel = CURVE_TITLES.get(k, (k, k, "frame"))
        series = [(label, r["curves"][k]) for label, r in runs if k in r.get("curves", {})]
        parts.append(_img(curves_png(t, ylabel, xlabel, series), t))
    if videos:
        parts.append("<h2>Frames</h2>")
        for name, frames in list(videos.items())[:MAX_SHEETS]:
            parts.append(_img(contact_sheet_png(name, frames), f"frames of {name}"))
        if len(videos) > MAX_SHEETS:
            parts.append(f'<p class="muted">{len(videos) - MAX_SHEETS} more videos not shown.</p>')
    body = "\n".join(p for p in parts if p)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<link rel="icon" href="data:,"><title>{_e(title)}</title>'
            f"<style>{_CSS}</style></head>\n<body>\n{body}\n</body></html>\n")
