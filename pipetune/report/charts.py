"""The report's charts: matplotlib figures rendered by its SVG backend, returned as inline SVG.

One colour per role on every chart and on the page (``ROLE_COLOURS``). Text stays text
(``svg.fonttype: none``) so the page's font applies and the file stays small; the XML prolog,
metadata and unreferenced ids are dropped and referenced ids are made unique per chart, so
several SVGs can share one HTML document. No pyplot: figures are plain ``Figure`` objects,
so no GUI backend or global figure state is involved.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from pipetune.report.diagnosis import DiagnosisSection
from pipetune.report.rows import EffectRow, StepBreakdown
from pipetune.report.timelines import Timeline

# Okabe-Ito colours: distinguishable with the common colour-vision deficiencies.
ROLE_COLOURS = {
    "winner": "#0072B2",
    "naive": "#D55E00",
    "autotune-default": "#CC79A7",
    "baseline": "#009E73",
    "candidate": "#7F7F7F",
}
INPUT_WAIT_COLOUR = "#E69F00"
COMPUTE_COLOUR = "#A9B8C6"
LOWEST_CEILING_COLOUR = "#64748B"  # the lever whose ceiling binds
INK, MUTED, GRID, SHADE = "#1F2937", "#4B5563", "#E5E7EB", "#EEF2F6"
WIDTH_IN = 9.0
_STYLE = {
    "svg.fonttype": "none", "svg.hashsalt": "pipetune-report", "text.parse_math": False,
    "font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 8.5,
    "axes.spines.top": False, "axes.spines.right": False, "axes.edgecolor": "#9CA3AF",
    "axes.labelcolor": MUTED, "axes.titlecolor": INK, "xtick.color": MUTED, "ytick.color": MUTED,
    "axes.grid": True, "grid.color": GRID, "grid.linewidth": 0.6, "axes.axisbelow": True,
    "legend.frameon": False, "lines.linewidth": 1.4,
}
_LINE_STYLES = ("-", "--", ":", "-.")  # one per GPU when a panel shows several


def timeline_svg(timeline: Timeline, chart_id: str) -> str:
    """Stacked panels on one time axis; the timed repeats shaded."""
    colour = ROLE_COLOURS.get(timeline.colour_role, ROLE_COLOURS["candidate"])
    with matplotlib.rc_context(_STYLE):
        figure = Figure(figsize=(WIDTH_IN, 0.5 + 1.15 * len(timeline.panels)), layout="constrained")
        axes = figure.subplots(len(timeline.panels), 1, sharex=True, squeeze=False)[:, 0]
        for ax, panel in zip(axes, timeline.panels):
            for start, end in timeline.timed_windows_s:
                ax.axvspan(start, end, color=SHADE, lw=0, zorder=0)
            for index, series in enumerate(panel.series):
                ax.plot(series.times_s, series.values, color=colour,
                        linestyle=_LINE_STYLES[index % len(_LINE_STYLES)], label=series.label)
            ax.set_title(panel.axis_label, loc="left", pad=3)
            ax.set_ylim(0, panel.y_max)
            ax.grid(axis="x", visible=False)
            if len(panel.series) > 1:
                ax.legend(loc="upper right", ncols=len(panel.series))
        axes[-1].set_xlabel("time since the trial's first sample (s)")
        axes[-1].set_xlim(left=0)
        return svg_text(figure, chart_id, f"Utilisation over time of {timeline.label}")


def steps_svg(rows: Sequence[StepBreakdown], chart_id: str) -> str:
    """Horizontal stacked bars: mean input wait, then compute, per step; rank 1 on top."""
    with matplotlib.rc_context(_STYLE):
        figure = Figure(figsize=(WIDTH_IN, 0.85 + 0.24 * len(rows)), layout="constrained")
        ax = figure.subplots()
        positions = list(range(len(rows)))
        waits = [r.input_wait_ms for r in rows]
        ax.barh(positions, waits, height=0.62, color=INPUT_WAIT_COLOUR, label="input wait")
        ax.barh(positions, [r.compute_ms for r in rows], left=waits, height=0.62,
                color=COMPUTE_COLOUR, label="compute (training step)")
        filled = [(r.fill_ms_per_step, y) for r, y in zip(rows, positions) if r.fill_ms_per_step]
        if filled:
            ax.scatter([f for f, _ in filled], [y for _, y in filled], marker="D", s=18, color=INK,
                       zorder=3, label="cache-fill epoch (mean per step)")
        _role_ticks(ax, positions, [f"#{r.position}  {r.label}" for r in rows],
                    [r.colour_role for r in rows])
        ax.set_ylim(len(rows) - 0.5, -0.5)  # rank 1 on top, no empty bands
        ax.grid(axis="y", visible=False)
        ax.set_xlabel("mean time per step (ms)")
        handles, labels = ax.get_legend_handles_labels()
        order = sorted(range(len(labels)), key=lambda i: labels[i].startswith("cache"))
        ax.legend([handles[i] for i in order], [labels[i] for i in order], loc="lower left",
                  bbox_to_anchor=(0, 1.0), ncols=3, borderaxespad=0.2)
        return svg_text(figure, chart_id, "Step time per variant: input wait and compute")


def effects_svg(rows: Sequence[EffectRow], chart_id: str) -> str:
    """Median throughput ratio per dimension change, with the range over matched pairs."""
    with matplotlib.rc_context(_STYLE):
        figure = Figure(figsize=(WIDTH_IN, 0.9 + 0.3 * len(rows)), layout="constrained")
        ax = figure.subplots()
        positions = list(range(len(rows)))
        ax.hlines(positions, [r.low for r in rows], [r.high for r in rows], color="#9CA3AF", lw=2.2)
        ax.plot([r.ratio for r in rows], positions, "o", color=INK, markersize=5)
        ax.axvline(1.0, color=MUTED, lw=0.8, ls="--")
        ax.set_yticks(positions, [f"{r.dimension}: {_value(r.better_value)} over "
                                  f"{_value(r.worse_value)}" for r in rows])
        ax.grid(axis="y", visible=False)
        ax.set_ylim(len(rows) - 0.4, -0.6)  # rank 1 on top, room for the end dots
        low, high = min([1.0] + [r.low for r in rows]), max([1.0] + [r.high for r in rows])
        margin = 0.06 * (high - low) or 0.02
        ax.set_xlim(low - margin, high + margin)
        digits = 2 if high - low > 0.2 else 3  # small effects need the third decimal
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:.{digits}f}×"))
        ax.set_xlabel("throughput ratio (×): dot = median over matched pairs, bar = their range")
        return svg_text(figure, chart_id, "Effect of each dimension on throughput")


def ceilings_svg(section: DiagnosisSection, chart_id: str) -> str:
    """Roofline-style bars: each lever's predicted ceiling, with the consumer and the pick as lines."""
    bars = section.levers
    with matplotlib.rc_context(_STYLE):
        figure = Figure(figsize=(WIDTH_IN, 1.0 + 0.26 * len(bars)), layout="constrained")
        ax = figure.subplots()
        positions = list(range(len(bars)))
        known = [(y, b) for y, b in zip(positions, bars) if b.ceiling is not None]
        ax.barh([y for y, _ in known], [b.ceiling for _, b in known], height=0.62,
                color=[LOWEST_CEILING_COLOUR if b.lowest else COMPUTE_COLOUR for _, b in known])
        if section.log_scale:
            ax.set_xscale("log")
        _ceiling_limits(ax, section)
        for y, bar in zip(positions, bars):
            if bar.ceiling is None:  # drawn as a word, never as a zero-length bar
                ax.text(0.005, y, "unknown", transform=ax.get_yaxis_transform(), va="center",
                        color=MUTED, style="italic", zorder=4,
                        bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.0})
        _ceiling_markers(ax, section)
        ax.set_yticks(positions, [b.label for b in bars])
        for tick, bar in zip(ax.get_yticklabels(), bars):
            if bar.lowest:
                tick.set_fontweight("bold")
        ax.set_ylim(len(bars) - 0.5, -0.5)
        ax.grid(axis="y", visible=False)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
        ax.set_xlabel("predicted ceiling (examples/s" + (", log scale)" if section.log_scale else ")"))
        return svg_text(figure, chart_id, "Predicted ceiling of each lever (examples/s)",
                        _ceilings_description(section))


def _ceiling_limits(ax, section: DiagnosisSection) -> None:
    values = [b.ceiling for b in section.levers] + [section.consumer_rate, section.pick_measured_rate]
    positive = [v for v in values if v is not None and v > 0] or [1.0]
    if section.log_scale:
        ax.set_xlim(min(positive) / 1.6, max(positive) * 1.6)
    else:
        ax.set_xlim(0, max(positive) * 1.08)


def _ceiling_markers(ax, section: DiagnosisSection) -> None:
    if section.consumer_rate is not None:
        ax.axvline(section.consumer_rate, color=INK, lw=1.2, ls="--", label="the consumer's ceiling")
    if section.pick_measured_rate is not None:
        ax.axvline(section.pick_measured_rate, color=ROLE_COLOURS["winner"], lw=1.6,
                   label="the pick, measured")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncols=2, borderaxespad=0.2)


def _ceilings_description(section: DiagnosisSection) -> str:
    parts = [f"{b.label}: {'unknown' if b.ceiling is None else f'{b.ceiling:,.0f}'}"
             for b in section.levers]
    if section.consumer_rate is not None:
        parts.append(f"the consumer's ceiling: {section.consumer_rate:,.0f}")
    if section.pick_measured_rate is not None:
        parts.append(f"the pick, measured: {section.pick_measured_rate:,.0f}")
    return "Examples/s. " + "; ".join(parts) + "."


def svg_text(figure: Figure, chart_id: str, title: str, description: str = "") -> str:
    """The figure as an ``<svg>`` element that can sit inline in HTML next to other charts.

    ``title`` becomes its accessible name; ``description``, when given, a ``<desc>`` child.
    """
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None, "Format": None,
                                                   "Type": None})
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg"):]  # the XML prolog and DOCTYPE mean nothing inline
    svg = re.sub(r"\s*<metadata>.*?</metadata>", "", svg, flags=re.S)
    svg = re.sub(r"\s*<style type=\"text/css\">.*?</style>", "", svg, flags=re.S)  # page CSS
    svg = re.sub(r"font-family:[^;\"]*;?\s*", "", svg)  # the page's font applies
    svg = re.sub(r' transform="rotate\(-?0 [^"]*\)"', "", svg)  # no-op rotations of tick labels
    svg = re.sub(r'(\s[\w:-]+=")([^"]*)"', _rounded_attribute, svg)
    svg = re.sub(r">\s+<", "><", svg)
    svg = _scoped_ids(svg, chart_id).replace(
        "<svg ", f'<svg class="chart-svg" role="img" aria-label="{_attribute(title)}" ', 1)
    if description:
        opening = svg.index(">") + 1
        labels = f"<title>{_attribute(title)}</title><desc>{_attribute(description)}</desc>"
        svg = svg[:opening] + labels + svg[opening:]
    return svg


def _scoped_ids(svg: str, chart_id: str) -> str:
    """Drop ids nothing refers to; prefix the others with ``chart_id`` (ids are page-global)."""
    referenced = set(re.findall(r'(?:url\(#|href="#)([^)"]+)', svg))
    svg = re.sub(r'\sid="([^"]+)"',
                 lambda m: f' id="{chart_id}-{m.group(1)}"' if m.group(1) in referenced else "", svg)
    svg = re.sub(r'(url\(#|href="#)([^)"]+)', lambda m: f"{m.group(1)}{chart_id}-{m.group(2)}", svg)
    # The page sizes the chart (width 100 %); the viewBox keeps its proportions.
    return re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"', r"<svg\1", svg, count=1)


def _rounded_attribute(match: re.Match) -> str:
    """Coordinates cut to 1/100 pt, finer than any screen or printer; text content is left alone."""
    return match.group(1) + re.sub(r"(\d\.\d{2})\d+", r"\1", match.group(2)) + '"'


def _role_ticks(ax, positions: list[int], labels: list[str], roles: list[str]) -> None:
    ax.set_yticks(positions, labels)
    for tick, role in zip(ax.get_yticklabels(), roles):
        tick.set_color(ROLE_COLOURS.get(role, ROLE_COLOURS["candidate"]) if role != "candidate" else MUTED)
        if role == "winner":
            tick.set_fontweight("bold")


def _value(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _attribute(text: str) -> str:
    return (text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
            .replace(">", "&gt;"))
