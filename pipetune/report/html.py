"""Render the report as one self-contained HTML file: jinja2 (autoescaped) and inline SVG.

The page makes no network request: no external font, script, style or image, and a
Content-Security-Policy that allows only its own inline script (by hash), so even text that
slipped past escaping could neither run nor load anything. The raw results ride along in a
``<script type="application/json">`` block with every ``<``, ``>`` and ``&`` escaped, so no
string inside can close it. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2

from pipetune import __version__
from pipetune.dimensions import BY_NAME
from pipetune.errors import PipetuneError
from pipetune.documents import json_document
import pipetune.report.charts as charts
from pipetune.report.model import Report, build_report
from pipetune.report.timelines import HOST_BUSY_NOTE

if TYPE_CHECKING:
    from pipetune.outcome import SweepOutcome

REPORT_NAME = "report.html"
TEMPLATE_NAME = "template.html.j2"
# Monitor samples kept in the embedded JSON over all trials (results.json keeps every one).
EMBEDDED_SAMPLE_BUDGET = 12_000
MIN_SAMPLES_PER_SERIES = 5
PER_CORE_METRIC = re.compile(r"^host\.cpu\d+_percent$")  # one series per core: left out
COPY_SCRIPT = """(function () {
  "use strict";
  function viaTextarea(text) {
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    var copied = false;
    try { copied = document.execCommand("copy"); } catch (err) { copied = false; }
    document.body.removeChild(area);
    return copied;
  }
  function selectText(element) {
    var range = document.createRange();
    range.selectNodeContents(element);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }
  function say(button, words) {
    button.textContent = words;
    window.setTimeout(function () { button.textContent = "Copy"; }, 1800);
  }
  document.querySelectorAll("button[data-copy-target]").forEach(function (button) {
    button.addEventListener("click", function () {
      var source = document.getElementById(button.getAttribute("data-copy-target"));
      var text = source.textContent;
      function fallback() {
        if (viaTextarea(text)) { say(button, "Copied"); return; }
        selectText(source);
        say(button, "Selected: press Ctrl+C");
      }
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(function () { say(button, "Copied"); }, fallback);
      } else {
        fallback();
      }
    });
  });
})();"""


def write_report(outcome: SweepOutcome, path: Path | None = None,
                 best_code: str | None = None) -> Path:
    """Write the sweep's HTML report and return its path.

    Args:
        outcome: A finished sweep, fresh from ``run_sweep`` or read back by ``load_outcome``.
        path: Where to write; default ``report.html`` in the sweep's folder.
        best_code: The text of ``best_pipeline.py`` when already rendered; else it is
            rendered here (from the sweep's shards, which are found again, not rewritten).
    """
    path = path or Path(outcome.out_dir) / REPORT_NAME
    path.write_text(render_report(outcome, best_code), encoding="utf-8")
    return path


def render_report(outcome: SweepOutcome, best_code: str | None = None) -> str:
    """The report's HTML. ``best_code``: the emitted module's text, else rendered here."""
    code, code_problem = (best_code, "") if best_code is not None else _emitted_code(outcome)
    return render_html(build_report(outcome), code, code_problem, raw_document(outcome))


def render_html(report: Report, best_code: str | None, code_problem: str,
                raw: dict[str, Any], generated: datetime.datetime | None = None) -> str:
    generated = generated or datetime.datetime.now(datetime.timezone.utc)
    template = _environment().get_template(TEMPLATE_NAME)
    return template.render(
        r=report, v=report.verdict, charts=_charts(report), best_code=best_code,
        code_problem=code_problem, raw_json=embedded_json(raw), copy_script=COPY_SCRIPT,
        script_hash=script_hash(COPY_SCRIPT), colours=charts.ROLE_COLOURS,
        host_note=HOST_BUSY_NOTE, wait_colour=charts.INPUT_WAIT_COLOUR,
        compute_colour=charts.COMPUTE_COLOUR,
        version=__version__, generated=generated.strftime("%Y-%m-%d %H:%M UTC"),
    )


def embedded_json(document: Any) -> str:
    """JSON that is safe inside ``<script type="application/json">``: no ``<``, ``>`` or ``&``.

    ``</script>`` (or ``<!--``) in a string would otherwise end or confuse the block; the
    ``\\u003c`` escapes decode back to the same characters in ``JSON.parse``.
    """
    text = json.dumps(document, separators=(",", ":"), ensure_ascii=False, default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def script_hash(script: str) -> str:
    """The CSP source that allows exactly this inline script."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"


def raw_document(outcome: SweepOutcome) -> dict[str, Any]:
    """The ``--json`` document with raw trials, monitor samples thinned to a fixed budget.

    Per-step timings are kept whole: they are the measurement. Monitor samples are picked
    evenly (real samples, not averages) so a 50-trial page stays small.
    """

    document = json_document(outcome, raw=True)
    trials = document["stored"]["trials"]
    for trial in trials:
        trial["monitor"] = keep_metrics(trial["monitor"], lambda m: not PER_CORE_METRIC.match(m))
        trial.pop("pipeline_source", None)  # each trial's module; results.json keeps it
    series = sum(len(set(trial["monitor"]["metric"])) for trial in trials)
    cap = max(MIN_SAMPLES_PER_SERIES, EMBEDDED_SAMPLE_BUDGET // max(1, series))
    for trial in trials:
        trial["monitor"] = thin_monitor(trial["monitor"], cap)
    document["embedded"] = {
        "max_monitor_samples_per_metric": cap,
        "note": ("monitor samples thinned to at most max_monitor_samples_per_metric per metric "
                 "and trial, evenly spaced; per-core CPU samples and pipeline_source left out; "
                 "results.json next to this report holds everything"),
    }
    return document


def keep_metrics(monitor: dict[str, Any], wanted: Callable[[str], bool]) -> dict[str, Any]:
    """The monitor columns without the rows of unwanted metrics."""
    rows = [row for row, metric in enumerate(monitor["metric"]) if wanted(metric)]
    return {**monitor, **{column: [monitor[column][row] for row in rows]
                          for column in ("t_ns", "metric", "value")}}


def thin_monitor(monitor: dict[str, Any], cap: int) -> dict[str, Any]:
    """Columns ``t_ns``/``metric``/``value`` with at most ``cap`` evenly spaced rows per metric."""
    rows_by_metric: dict[str, list[int]] = {}
    for row, metric in enumerate(monitor["metric"]):
        rows_by_metric.setdefault(metric, []).append(row)
    kept = sorted(row for rows in rows_by_metric.values()
                  for row in (rows if len(rows) <= cap else
                              [rows[round(i * (len(rows) - 1) / max(1, cap - 1))] for i in range(cap)]))
    return {**monitor, **{column: [monitor[column][row] for row in kept]
                          for column in ("t_ns", "metric", "value")}}


def _emitted_code(outcome: SweepOutcome) -> tuple[str | None, str]:
    """best_pipeline.py's text for the winner, or (None, why there is none)."""
    if outcome.ranking.best is None:
        return None, "No variant completed, so there is no pipeline to emit."
    from pipetune.emit import render_best

    try:
        return render_best(outcome), ""
    except PipetuneError as err:  # e.g. the shards are gone and the source with them
        return None, f"best_pipeline.py could not be rendered: {err}"


def _charts(report: Report) -> dict[str, Any]:
    return {
        "timelines": [charts.timeline_svg(t, f"timeline-{i}") for i, t in enumerate(report.timelines)],
        "steps": charts.steps_svg(report.steps, "steps") if report.steps else "",
        "effects": charts.effects_svg(report.effects, "effects") if report.effects else "",
        "ceilings": (charts.ceilings_svg(report.diagnosis, "ceilings")
                     if report.diagnosis and report.diagnosis.levers else ""),
    }


def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent), autoescape=True,
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )
    environment.filters.update(ratio=format_ratio, percent=format_percent, duration=format_duration,
                               size=format_bytes, rate=format_rate, value=format_value,
                               cpu=format_cpu, dimension=short_dimension,
                               element_size=format_element_bytes, per_element=format_per_element)
    return environment


# --------------------------------------------------------------------------- number formats


def format_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def format_percent(fraction: float | None) -> str:
    """0.046 -> "4.6%", 0.44 -> "44%": one decimal where the TF Profiler bands are decided."""
    if fraction is None:
        return "—"
    return f"{fraction * 100:.1f}%" if abs(fraction) < 0.1 else f"{fraction * 100:.0f}%"


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    sign, size = ("−" if seconds < 0 else ""), abs(seconds)
    if size < 1:
        return f"{sign}{size * 1000:.0f} ms"
    if size < 60:
        return f"{sign}{size:.1f} s" if size < 10 else f"{sign}{size:.0f} s"
    if size < 3600:
        minutes, rest = divmod(round(size), 60)
        return f"{sign}{minutes} min {rest} s"
    hours, minutes = divmod(round(size / 60), 60)
    return f"{sign}{hours} h {minutes} min"


def format_bytes(count: int | None) -> str:
    if count is None:
        return "—"
    return f"{count / 2**30:.2f} GiB" if count >= 2**30 else f"{count / 2**20:.0f} MiB"


def format_element_bytes(count: float | None) -> str:
    """An element's size: 3256 -> "3.2 KiB"; whole bytes below 1 KiB."""
    if count is None:
        return "—"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count:.0f} B"


def format_per_element(seconds: float | None) -> str:
    """Time per element, about three significant digits: 2.034e-05 -> "20.3 µs"."""
    if seconds is None:
        return "—"
    value, unit = ((seconds, "s") if seconds >= 1 else (seconds * 1e3, "ms") if seconds >= 1e-3
                   else (seconds * 1e6, "µs"))
    digits = 0 if value >= 100 else 1 if value >= 10 else 2
    return f"{value:.{digits}f} {unit}"


def format_rate(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}"


def format_cpu(percent: float | None) -> str:
    return "—" if percent is None else f"{percent:.0f}%"


def short_dimension(name: str) -> str:
    """A column header for a pipeline parameter; the full name goes in its title."""
    return BY_NAME[name].short if name in BY_NAME else name


def format_value(value: object) -> str:
    """A parameter value as the spec writes it."""
    if isinstance(value, bool):
        return str(value).lower()
    return "—" if value is None else str(value)
