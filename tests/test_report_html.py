"""The rendered report, checked in a real headless Chromium over the DevTools protocol.

The browser is driven through ``--remote-debugging-pipe`` (NUL-separated JSON on fds 3 and 4),
so the checks need only the standard library: console errors, uncaught exceptions, failed
loads and every request the page makes are protocol events, not scraped log lines. Negative
controls prove the checks can fail. Screenshots and a print PDF are kept under ``tmp_path``.
"""

from __future__ import annotations

import base64
import dataclasses
import fcntl
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from pipetune.documents import SCHEMA_VERSION
from pipetune.report.html import embedded_json, render_report, thin_monitor, write_report
from pipetune.results import MonitorReport, MonitorSample, Role, TrialState
from pipetune.space import Dropped
from pipetune.spec import PipelineParams
from test_report_model import CPU_DEVICE, ENV, MS, make_outcome, make_trial, references_sweep

CHROMIUM = Path("/usr/bin/chromium")
SECTIONS = ["verdict", "diagnosis", "utilisation", "step-time", "ranking", "what-mattered", "not-ranked", "code",
            "environment"]
HOSTILE = "</script><script>window.__pwned=1</script><b id=\"injected\">\"q\" 'q' & ünï — ✓ 😀</b>"
SPEC = """\
name: report-sweep
source: {kind: synthetic_images, num_examples: 128, image_size: [16, 16], num_classes: 3}
preprocess: [{decode_image: {key: image}}, {normalize: {key: image}}]
inputs: {features: image, label: label}
model: {step_time_ms: 5}
measure: {warmup_steps: 2, steps: 20, repeats: 3, timeout_s: 60, epochs_planned: 20}
search:
  strategy: grid
  space: {shards: [2], interleave_cycle: [1], map_parallel: [autotune], cache: [none, memory],
          prefetch: [autotune], batch_size: [16], precision: [float32, mixed_float16]}
baseline: {shards: 2, map_parallel: autotune, batch_size: 16, prefetch: 0}
"""


# --------------------------------------------------------------------------- a tiny CDP client


@dataclass
class PageLoad:
    url: str
    session: str
    problems: list[str] = field(default_factory=list)  # errors, requests, dialogs


class Browser:
    """Headless Chromium over ``--remote-debugging-pipe``; one tab per ``load``."""

    def __init__(self, profile: Path) -> None:
        to_browser, self._commands = os.pipe()
        self._replies, from_browser = os.pipe()

        def wire_fds() -> None:  # the browser reads commands on fd 3, writes replies on fd 4
            high_in = fcntl.fcntl(to_browser, fcntl.F_DUPFD, 10)
            high_out = fcntl.fcntl(from_browser, fcntl.F_DUPFD, 10)
            os.dup2(high_in, 3)
            os.dup2(high_out, 4)

        self.process = subprocess.Popen(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             f"--user-data-dir={profile}", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--disable-extensions",
             "--hide-scrollbars", "--mute-audio", "--host-resolver-rules=MAP * ~NOTFOUND",
             "about:blank"],
            preexec_fn=wire_fds, close_fds=False, stdout=subprocess.DEVNULL,
            stderr=open(profile / "chromium.log", "wb"))  # noqa: SIM115 - closed with the process
        os.close(to_browser)
        os.close(from_browser)
        self._inbox: queue.Queue = queue.Queue()
        self._events: list[dict] = []
        self._next_id = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        while chunk := os.read(self._replies, 1 << 16):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for message in messages:
                self._inbox.put(json.loads(message))

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._inbox.get(timeout=30)
            if reply.get("id") != self._next_id:
                self._events.append(reply)
            elif "error" in reply:
                raise RuntimeError(f"{method}: {reply['error']}")
            else:
                return reply["result"]

    def load(self, path: Path, width: int = 1200, height: int = 900, settle_s: float = 0.5) -> PageLoad:
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=session)
        self.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height,
                                                         "deviceScaleFactor": 1, "mobile": width < 600},
                  session=session)
        self._events.clear()
        url = path.resolve().as_uri()
        self.call("Page.navigate", {"url": url}, session=session)
        self._wait_for("Page.loadEventFired", session)
        self.settle(settle_s)
        return PageLoad(url, session, self.problems(url, session))

    def settle(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                self._events.append(self._inbox.get(timeout=left))
            except queue.Empty:
                break

    def _wait_for(self, method: str, session: str) -> None:
        deadline = time.monotonic() + 30
        while not any(e.get("method") == method and e.get("sessionId") == session for e in self._events):
            self._events.append(self._inbox.get(timeout=max(0.1, deadline - time.monotonic())))

    def problems(self, url: str, session: str) -> list[str]:
        """Console errors, exceptions, error log entries, dialogs and any request but the page."""
        found = []
        for event in (e for e in self._events if e.get("sessionId") == session):
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                found.append(f"console {params['type']}: {params['args']}")
            elif method == "Runtime.exceptionThrown":
                found.append(f"exception: {params['exceptionDetails']}")
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(f"log error: {params['entry']['text']}")
            elif method == "Network.requestWillBeSent" and params["request"]["url"] != url:
                found.append(f"request: {params['request']['url']}")
            elif method == "Page.javascriptDialogOpening":
                found.append(f"dialog: {params['message']}")
        return found

    def evaluate(self, page: PageLoad, expression: str) -> object:
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, page.session)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, page: PageLoad, path: Path) -> Path:
        height = self.call("Page.getLayoutMetrics", session=page.session)["cssContentSize"]["height"]
        width = self.evaluate(page, "window.innerWidth")
        self.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": min(int(height), 16000),
                                                         "deviceScaleFactor": 1, "mobile": width < 600},
                  page.session)
        shot = self.call("Page.captureScreenshot", {"format": "png"}, page.session)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (RuntimeError, queue.Empty, OSError):
            pass  # the browser may go away before it answers
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        os.close(self._commands)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.fail("needs Debian's chromium at /usr/bin/chromium: apt-get install -y chromium")
    chromium = Browser(tmp_path_factory.mktemp("chromium-profile"))
    yield chromium
    chromium.close()


@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory) -> Path:
    """A real sweep in simulate mode: 5 trials (3 references, 2 candidates), 2 dropped variants."""
    folder = tmp_path_factory.mktemp("real-sweep")
    (folder / "data.yaml").write_text(SPEC)
    subprocess.run([sys.executable, "-m", "pipetune", "sweep", str(folder / "data.yaml"), "--out",
                    str(folder / "out")], check=True, timeout=400, capture_output=True)
    return folder / "out"


def image_stats(path: Path) -> tuple[int, float]:
    """(distinct colours, share of pixels that are not near-white) of a PNG."""
    from matplotlib.image import imread

    pixels = imread(path)[:, :, :3]
    colours = len(np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0))
    return colours, float((pixels < 0.94).any(axis=2).mean())


# --------------------------------------------------------------------------- the real sweep


@pytest.mark.slow
def test_sweep_writes_a_report_that_loads_clean(real_sweep, browser, tmp_path):
    report = real_sweep / "report.html"
    assert report.is_file(), "pipetune sweep must write report.html next to best_pipeline.py"
    page = browser.load(report)
    assert page.problems == []
    assert browser.evaluate(page, "[...document.querySelectorAll('section[id]')].map(s => s.id)") == SECTIONS
    sizes = browser.evaluate(page, "[...document.querySelectorAll('section')].map(s => "
                                   "[s.querySelector('h2') !== null, s.innerText.length])")
    assert all(has_heading and length > 60 for has_heading, length in sizes), sizes
    assert browser.evaluate(page, "document.querySelectorAll('svg.chart-svg').length") >= 4
    data = browser.evaluate(page, "JSON.parse(document.getElementById('pipetune-results').textContent)")
    assert data["schema_version"] == SCHEMA_VERSION and len(data["stored"]["trials"]) == 5
    colours, inked = image_stats(browser.screenshot(page, tmp_path / "report.png"))
    assert colours > 300 and inked > 0.10, (colours, inked)


@pytest.mark.slow
def test_copy_button_and_print_work_offline(real_sweep, browser, tmp_path):
    page = browser.load(real_sweep / "report.html")
    browser.evaluate(page, "document.querySelector('button.copy').click()")
    browser.settle(0.5)
    assert browser.evaluate(page, "document.querySelector('button.copy').textContent") != "Copy"
    assert browser.problems(page.url, page.session) == []
    pdf = base64.b64decode(browser.call("Page.printToPDF", {"printBackground": True},
                                        page.session)["data"])
    (tmp_path / "report.pdf").write_bytes(pdf)
    assert pdf.startswith(b"%PDF") and len(re.findall(rb"/Type\s*/Page[^s]", pdf)) >= 2


@pytest.mark.slow
def test_narrow_screen_has_no_page_wide_horizontal_scroll(real_sweep, browser, tmp_path):
    page = browser.load(real_sweep / "report.html", width=390, height=844)
    assert page.problems == []
    assert browser.evaluate(page, "document.documentElement.scrollWidth <= window.innerWidth")
    colours, inked = image_stats(browser.screenshot(page, tmp_path / "report-narrow.png"))
    assert colours > 100 and inked > 0.05


@pytest.mark.slow
def test_report_command_rerenders_from_stored_results_without_tensorflow(real_sweep, tmp_path):
    output = tmp_path / "again.html"
    code = ("import sys; from pipetune.cli import main; "
            f"code = main(['report', {str(real_sweep)!r}, '--output', {str(output)!r}]); "
            "assert code == 0; assert not {'tensorflow', 'keras'} & set(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    text = output.read_text(encoding="utf-8")
    assert all(f'<section id="{name}">' in text for name in SECTIONS)
    assert "import tensorflow as tf" in text  # the emitted code, rendered again


# --------------------------------------------------------------------------- negative controls


@pytest.mark.parametrize("body, expected", [
    ("<script>console.error('broken'); notDefined();</script>", "exception"),
    ('<img src="http://example.invalid/pixel.png" alt="">', "request: http://example.invalid"),
])
def test_the_browser_checks_catch_a_broken_page(browser, tmp_path, body, expected):
    page_file = tmp_path / "broken.html"
    page_file.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>x</title>"
                         f"<link rel='icon' href='data:,'></head><body><p>hello</p>{body}</body></html>")
    assert any(expected in problem for problem in browser.load(page_file).problems)


def test_an_external_image_slipped_into_the_report_is_caught(browser, tmp_path):
    html = render_report(make_outcome(tmp_path, references_sweep()), best_code="x = 1\n")
    page_file = tmp_path / "report.html"
    page_file.write_text(html.replace("<footer>", '<img src="http://example.invalid/x.png"><footer>'))
    assert browser.load(page_file).problems != []  # CSP refuses it, and says so


# --------------------------------------------------------------------------- diagnosis

# `pipetune diagnose examples/demo.yaml --json` (2 cores, consumer-bound in train mode), with the
# space, reasons and consumer_bound that the automatic space adds for such a diagnosis.
DIAGNOSIS = json.loads((Path(__file__).parent / "golden" / "diagnosis.json").read_text())


def diagnosis_outcome(tmp_path: Path, diagnosis: dict | None = None):
    outcome = make_outcome(tmp_path, references_sweep())
    return dataclasses.replace(outcome, diagnosis=diagnosis or DIAGNOSIS)


def test_diagnosis_section_loads_clean(browser, tmp_path):
    path = write_report(diagnosis_outcome(tmp_path), tmp_path / "report.html", best_code="x = 1\n")
    page = browser.load(path)
    assert page.problems == []
    assert browser.evaluate(page, "[...document.querySelectorAll('section[id]')].map(s => s.id)") == SECTIONS
    svg = "document.querySelector('#diagnosis svg.chart-svg')"
    assert browser.evaluate(page, f"{svg}.getAttribute('role')") == "img"
    assert browser.evaluate(page, f"{svg}.querySelector('title').textContent").startswith("Predicted ceiling")
    desc = browser.evaluate(page, f"{svg}.querySelector('desc').textContent")
    assert "mixed precision for the model: unknown" in desc and "the consumer's ceiling: 7,443" in desc
    words = browser.evaluate(page, f"[...{svg}.querySelectorAll('text')].map(t => t.textContent)")
    assert "unknown" in words  # the lever without a ceiling is a word on the chart, not a 0 bar
    rows = browser.evaluate(page, "[...document.querySelectorAll('#diagnosis table')[1].tBodies[0].rows]"
                                  ".map(r => r.cells[0].innerText.split('\\n')[0])")
    assert rows == ["read", "parse", "decode_image(image)", "resize(image)", "random_flip(image) random",
                    "normalize(image)"]
    text = browser.evaluate(page, "document.getElementById('diagnosis').innerText")
    assert DIAGNOSIS["bottleneck"]["sentence"] in text
    assert ("Predicted for the pick: 7,275 examples/s; measured: 32,000 examples/s "
            "(4.40× the prediction)") in text
    assert "the consumer's levers instead" in text and "batch_size over 64, 128" in text
    narrow = browser.load(path, width=390, height=844)
    assert narrow.problems == []
    assert browser.evaluate(narrow, "document.documentElement.scrollWidth <= window.innerWidth")


def test_a_sweep_without_diagnosis_says_why(tmp_path):
    html = render_report(make_outcome(tmp_path, references_sweep()), best_code="x = 1\n")
    section = html.split('<section id="diagnosis">')[1].split("</section>")[0]
    assert "No diagnosis ran" in section and "pipetune diagnose data.yaml" in section
    assert "<svg" not in section
    assert html.index('id="verdict"') < html.index('id="diagnosis"') < html.index('id="ranking"')


# --------------------------------------------------------------------------- escaping


def hostile_outcome(tmp_path: Path):
    env = {**ENV, "python": HOSTILE, "platform": HOSTILE}
    monitor = MonitorReport(accelerator_note=HOSTILE)
    trials = [make_trial("winner", [1.0, 1.0], prefetch="autotune", environment=env, monitor=monitor),
              make_trial("naive", [3.0, 3.0], Role.NAIVE, environment=env, monitor=monitor),
              make_trial("crashy", [], state=TrialState.FAILED, reason=HOSTILE, cache="memory")]
    device = type(CPU_DEVICE)("CPU " + HOSTILE, 2, False, accelerator_note=HOSTILE)
    dropped = [Dropped(PipelineParams(precision="mixed_float16"), HOSTILE)]
    outcome = make_outcome(tmp_path, trials, dropped=dropped, device=device)
    diagnosis = {**DIAGNOSIS, "bottleneck": {"kind": "compute", "stage": HOSTILE, "sentence": HOSTILE},
                 "reasons": [HOSTILE], "space": {HOSTILE: [HOSTILE, 1]},
                 "levers": [{"lever": HOSTILE, "stage": HOSTILE, "ceiling": 10.0, "note": HOSTILE}],
                 "stages": [{**DIAGNOSIS["stages"][0], "name": HOSTILE}]}
    return dataclasses.replace(outcome, diagnosis=diagnosis)


def test_hostile_strings_render_as_text(browser, tmp_path):
    path = write_report(hostile_outcome(tmp_path), tmp_path / "report.html", best_code=f"# {HOSTILE}\n")
    html = path.read_text(encoding="utf-8")
    embedded = html.split('id="pipetune-results">')[1].split("</script>")[0]
    assert not {"<", ">", "&"} & set(embedded)
    page = browser.load(path)
    assert page.problems == []
    assert browser.evaluate(page, "window.__pwned === undefined && "
                                  "document.getElementById('injected') === null")
    assert browser.evaluate(page, "document.querySelectorAll('script').length") == 2
    assert browser.evaluate(page, "document.querySelectorAll('b').length") == 0
    text = browser.evaluate(page, "document.body.innerText")
    # reason, dropped reason, note, environment, code; the diagnosis' sentence, reason, stage, lever
    assert text.count(HOSTILE) >= 9
    reason = browser.evaluate(page, "JSON.parse(document.getElementById('pipetune-results')"
                                    ".textContent).stored.trials.find(t => t.key === 'crashy').reason")
    assert reason == HOSTILE


def test_embedded_json_cannot_close_its_script_block():
    document = {"reason": "</script><!-- <script> & \u2028 ünï"}
    text = embedded_json(document)
    assert not {"<", ">", "&"} & set(text)
    assert json.loads(text) == document


# --------------------------------------------------------------------------- size


def fifty_trial_outcome(tmp_path: Path):
    """50 trials of 3 repeats x 50 steps, each with 10 s of host samples at 20 Hz (8 cores)."""
    metrics = ("host.process_cpu_percent", "host.rss_bytes", "host.system_cpu_percent",
               *(f"host.cpu{core}_percent" for core in range(8)))
    trials = []
    for index in range(50):
        role = [Role.NAIVE, Role.AUTOTUNE_DEFAULT, Role.BASELINE][index] if index < 3 else Role.CANDIDATE
        samples = tuple(MonitorSample(i * 50 * MS, metric, float(i % 97))
                        for i in range(200) for metric in metrics)
        cached = index % 5 == 0
        trials.append(make_trial(
            f"variant{index:03d}", [1.0 + index * 0.05 + r * 0.01 for r in range(3)], role,
            wait_ms=0.2 + (index % 7) * 0.1, steps=50, batch_size=(32, 64, 128, 256)[index % 4],
            shuffle_buffer=(0, 1024, 8192)[index % 3], prefetch=(0, "autotune")[index // 25],
            cache="memory" if cached else "none",
            fill_ns=3_000 * MS if cached else None,
            monitor=MonitorReport(samples, accelerator_note="No NVIDIA GPU")))
    return make_outcome(tmp_path, trials)


def test_fifty_trial_report_stays_under_two_megabytes(browser, tmp_path):
    code = (Path(__file__).parent / "golden" / "best_pipeline.py").read_text()
    path = write_report(fifty_trial_outcome(tmp_path), tmp_path / "report.html", best_code=code)
    size = path.stat().st_size
    print(f"50-trial report: {size / 1e6:.2f} MB")
    assert size < 2_000_000
    page = browser.load(path)
    assert page.problems == []
    assert browser.evaluate(page, "document.querySelectorAll('#ranking tbody tr').length") == 50
    browser.screenshot(page, tmp_path / "report-50.png")


def test_thin_monitor_keeps_evenly_spaced_real_samples():
    monitor = {"t_ns": list(range(10)), "metric": ["a", "b"] * 5, "value": [float(v) for v in range(10)],
               "unavailable": [], "accelerator_note": "x"}
    thinned = thin_monitor(monitor, cap=3)
    # metric a sits on rows 0, 2, 4, 6, 8: picks 0, 4, 8; metric b on 1, 3, 5, 7, 9: picks 1, 5, 9.
    assert thinned["t_ns"] == [0, 1, 4, 5, 8, 9]
    assert thinned["metric"] == ["a", "b"] * 3 and thinned["accelerator_note"] == "x"


def test_the_ranking_says_where_the_final_race_ends(tmp_path):
    """The raced variants come first and keep the race's numbers; the rows below them keep
    their screening times, which the report and the terminal say are not comparable."""
    from pipetune.commands.sweep import ranking_legend
    from pipetune.ranking import rank

    trials = references_sweep()
    raced = [dataclasses.replace(t, race_round=r, rung=2) for t in trials[:2] for r in (1, 2, 3)]
    plain = make_outcome(tmp_path, trials)
    with_race = dataclasses.replace(plain, ranking=rank(trials, "throughput", epochs=10, race=raced),
                                    race=tuple(raced))
    assert [r.raced for r in with_race.ranking.ranked] == [True, True, False, False]
    html = render_report(with_race, best_code="x = 1\n")
    assert "From #3 on, variants were measured in screening only" in html
    assert ranking_legend(with_race.ranking.ranked)[1].startswith("from row 3 on: measured in screening only")
    assert "screening only" not in render_report(plain, best_code="x = 1\n")
    assert len(ranking_legend(plain.ranking.ranked)) == 1


def test_a_variant_ranked_on_one_repeat_is_marked_in_the_report_and_the_terminal(tmp_path):
    """A screening-only row cut short after its first repeat says so (its interval is one
    value); a raced one is ranked on its rounds and is not marked."""
    from pipetune.commands.sweep import ranking_legend
    from pipetune.ranking import rank

    trials = references_sweep()
    naive = dataclasses.replace(trials[1], repeats=trials[1].repeats[:1], cut_short=True)
    trials[1] = naive
    outcome = make_outcome(tmp_path, trials)
    assert [r.trial.key for r in outcome.ranking.ranked if r.one_repeat] == ["naive"]
    html = render_report(outcome, best_code="x = 1\n")
    assert html.count("one repeat *") == 1 and "* One repeat: 2× or more behind the sweep's best" in html
    assert ranking_legend(outcome.ranking.ranked)[-1].startswith("* : one repeat")

    raced = [dataclasses.replace(t, race_round=r, rung=2) for t in (trials[0], naive) for r in (1, 2, 3)]
    with_race = dataclasses.replace(outcome, ranking=rank(trials, "throughput", epochs=10, race=raced),
                                    race=tuple(raced))
    assert not any(r.one_repeat for r in with_race.ranking.ranked)
    assert "one repeat *" not in render_report(with_race, best_code="x = 1\n")
    assert not any(line.startswith("* :") for line in ranking_legend(with_race.ranking.ranked))
