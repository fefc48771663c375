"""``report``: one self-contained HTML page about a run, checked in a real browser (headless
Chromium: a screenshot that is not blank and shows the timeline's colours, and the DOM)."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import REPO, run_python
from stalwart import Context, ItemContext, Pipeline
from stalwart._errors import HttpStatusError
from stalwart._map import ItemsFailed
from stalwart.cli._report import _CHAR_W, Attempt, _timeline, render_report
from stalwart.testing import FlakyServer, RecordingAlerter, Reply

SCRIPT = REPO / "tests" / "scripts" / "ops_pipeline.py"
HOSTILE = '<script>alert("x")</script> & <img src=x onerror=alert(1)>'
FAILED_RED = (0xD6, 0x45, 0x45)
DONE_GREEN = (0x2E, 0x9D, 0x5B)


def ops(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_python([str(SCRIPT), *args], env={"STALWART_ROOT": str(root), **env})


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium; skipped where it is not installed, except in CI (``CI=true``)."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must have chromium: .ci/run installs the Debian package")
        pytest.skip("chromium is not installed (apt-get install chromium); CI runs this test")
    sandbox = ["--no-sandbox"] if os.geteuid() == 0 else []  # Chromium refuses root otherwise
    return subprocess.run(
        [
            binary,
            "--headless",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            *sandbox,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def png_pixels(data: bytes) -> tuple[int, int, list[tuple[int, ...]]]:
    """Decode an 8-bit, non-interlaced RGB(A) PNG (what Chromium writes): width, height and
    every pixel (stdlib only: zlib and the five scanline filters)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, [], b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat.append(body)
    width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert (depth, interlace) == (8, 0), "only 8-bit non-interlaced PNGs"
    bpp = {2: 3, 6: 4}[colour_type]
    stride = width * bpp
    raw = zlib.decompress(b"".join(idat))
    previous = bytearray(stride)
    pixels: list[tuple[int, ...]] = []
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = previous[i]
            c = previous[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + ((a + b) >> 1)) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        pixels.extend(tuple(line[i : i + 3]) for i in range(0, stride, bpp))
        previous = line
    return width, height, pixels


def failed_run(root: Path) -> None:
    """r0 succeeds; r1 fails at load twice (a dead letter kept), with a hostile message."""
    assert ops(root, "--run-id", "r0").returncode == 0
    env = {"OPS_FAIL": "load", "OPS_DEAD_LETTER": "load", "OPS_ERROR": HOSTILE}
    assert ops(root, "--run-id", "r1", **env).returncode == 1
    assert ops(root, "--run-id", "r1", OPS_FAIL="load", OPS_ERROR=HOSTILE).returncode == 1


def test_the_report_of_a_failed_run_looks_right_in_chromium(root: Path, tmp_path: Path) -> None:
    failed_run(root)
    page = tmp_path / "report.html"
    made = ops(root, "report", "--run-id", "r1", "-o", str(page))
    assert made.returncode == 0, made.stderr
    assert f"to {page}" in made.stdout

    shot = tmp_path / "report.png"
    done = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,1000", page.as_uri())
    assert done.returncode == 0, done.stderr
    width, height, pixels = png_pixels(shot.read_bytes())
    assert (width, height) == (1200, 1000)
    colours = set(pixels)
    assert len(colours) > 50, "the screenshot is (nearly) blank"
    # The timeline's bars are there: a failed attempt in red, done steps in green.
    assert pixels.count(FAILED_RED) > 500
    assert pixels.count(DONE_GREEN) > 500

    dom = chromium(tmp_path, "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr
    html = dom.stdout
    assert 'id="timeline"' in html
    assert len(re.findall(r'class="attempt failed"', html)) == 2  # both tries of load
    assert len(re.findall(r'class="attempt done"', html)) == 1  # extract, once
    assert 'id="failure"' in html
    assert "Step <b>load</b> failed after 2 attempt(s)" in html
    assert re.search(
        r"Resume with <code>cd \S+ &amp;&amp; python \S*ops_pipeline\.py --run-id r1</code>", html
    )
    assert '&lt;script&gt;alert("x")&lt;/script&gt; &amp; &lt;img src=x' in html
    assert "<script" not in html
    assert "<img" not in html
    assert 'id="dead-letter-table"' in html
    assert "warehouse said no" in html
    assert re.search(r"<code>rows\.csv</code> \d\.\d kB", html)
    assert 'id="history"' in html
    assert len(re.findall(r'<g class="run (failed|succeeded)">', html)) == 2


def test_the_page_loads_nothing_from_anywhere(root: Path) -> None:
    failed_run(root)
    pipeline = Pipeline("nightly", root=root)
    pipeline.step(name="extract")(lambda ctx: None)
    pipeline.step(name="load")(lambda ctx: None)
    html = render_report(pipeline, "r1")
    tags = Tags()
    tags.feed(html)
    assert {"html", "style", "svg", "rect", "table", "pre"} <= tags.names
    assert not tags.names & {"script", "link", "img", "iframe", "object", "embed", "image"}
    assert not tags.attributes & {"src", "href", "xlink:href", "srcset", "action"}
    assert not [name for name in tags.attributes if name.startswith("on")]
    assert "url(" not in tags.style
    assert "@import" not in tags.style
    assert "default-src 'none'" in html  # and the browser is told so


class Tags(HTMLParser):
    """The element names, attribute names and inline style of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()
        self.attributes: set[str] = set()
        self.style = ""
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.names.add(tag)
        self.attributes.update(name for name, _ in attrs)
        self.style += " ".join(v or "" for n, v in attrs if n == "style")
        self._in_style = tag == "style"

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.style += data
            self._in_style = False


def test_parameters_and_item_counts_from_markers_are_shown(root: Path) -> None:
    done = ops(root, "--run-id", "r1", "--param", "region=<eu>", "--param", "day=mon")
    assert done.returncode == 0, done.stderr
    summary = json.loads((root / "nightly" / "runs" / "r1" / ".summary.json").read_text())
    assert summary["params"] == {"region": "<eu>", "day": "mon"}
    marker = root / "nightly" / "runs" / "r1" / ".checkpoints" / "extract.done"
    data = json.loads(marker.read_text())
    data["items"] = {"done": 98, "failed": 2}  # as a map step's marker may count them
    marker.write_text(json.dumps(data))
    pipeline = Pipeline("nightly", root=root)
    pipeline.step(name="extract")(lambda ctx: None)
    pipeline.step(name="load")(lambda ctx: None)
    html = render_report(pipeline, "r1")
    assert "<td><code>region</code></td><td>&lt;eu&gt;</td>" in html
    assert "items: done 98, failed 2" in html
    assert "No parameters." not in html


def test_report_defaults_to_the_newest_run_and_refuses_unknown_ones(
    root: Path, tmp_path: Path
) -> None:
    nothing = ops(root, "report")
    assert nothing.returncode == 2
    assert "no runs yet" in nothing.stderr
    assert ops(root, "--run-id", "a").returncode == 0
    assert ops(root, "--run-id", "b").returncode == 0
    made = run_python([str(SCRIPT), "report"], env={"STALWART_ROOT": str(root)}, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert "run b" in (tmp_path / "nightly-b.html").read_text()
    unknown = ops(root, "report", "--run-id", "zzz")
    assert unknown.returncode == 2
    assert "has no run 'zzz'" in unknown.stderr
    bad = ops(root, "report", "--run-id", "../x")
    assert bad.returncode == 2


def two_step_pipeline(root: Path) -> Pipeline:
    pipeline = Pipeline("nightly", root=root, alerters=[RecordingAlerter()])
    pipeline.step(name="extract")(lambda ctx: None)
    pipeline.step(name="load")(lambda ctx: None)
    return pipeline


def test_a_step_whose_process_died_is_drawn_as_interrupted(root: Path) -> None:
    pipeline = two_step_pipeline(root)
    pipeline.run(run_id="r1")
    journal = root / "nightly" / "runs" / "r1" / ".journal.jsonl"
    with journal.open("a") as handle:
        handle.write("not json\n")
        handle.write('{"step": "../x", "runs": 1, "outcome": "running"}\n')
        handle.write(
            '{"step": "load", "runs": 2, "started": "2999-01-01T00:00:00.000000Z", '
            '"outcome": "running"}\n'
        )
    html = render_report(pipeline, "r1")
    assert len(re.findall(r'class="attempt interrupted"', html)) == 1
    assert "../x" not in html
    assert len(re.findall(r'class="attempt done"', html)) == 2


def test_a_run_with_no_journal_and_no_summary_still_reports(root: Path) -> None:
    pipeline = two_step_pipeline(root)
    (root / "nightly" / "runs" / "bare").mkdir(parents=True)
    html = render_report(pipeline, "bare")
    assert "No step has started in this run." in html
    assert '<span class="badge" style="background:#9aa5b1">unknown</span>' in html


def test_an_http_dead_letter_shows_its_request(root: Path) -> None:
    with FlakyServer() as server:
        server.route("POST", "/sink", Reply(status=400, body="<b>no</b>"))
        pipeline = Pipeline("nightly", root=root, alerters=[RecordingAlerter()])

        @pipeline.step()
        def upload(ctx: Context) -> None:
            ctx.http.post(server.url("/sink"), content=b"rows", dead_letter=True)

        with pytest.raises(HttpStatusError):
            pipeline.run(run_id="r1")
        html = render_report(pipeline, "r1")
    assert f"<td>POST {server.url('/sink')}</td>" in html
    assert "[dead letter <code>" in html
    assert "&lt;b&gt;no&lt;/b&gt;" in html


def test_item_counts_may_be_a_plain_number(root: Path) -> None:
    pipeline = two_step_pipeline(root)
    pipeline.run(run_id="r1")
    marker = root / "nightly" / "runs" / "r1" / ".checkpoints" / "load.done"
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "items": 12}))
    (root / "nightly" / "runs" / "r1" / ".checkpoints" / "extract.done").write_text("[]")
    html = render_report(pipeline, "r1")
    assert "items: 12" in html


def test_a_torn_marker_is_left_out_of_the_reports_parameters(root: Path) -> None:
    pipeline = two_step_pipeline(root)
    pipeline.run(run_id="r1", params={"day": "mon"})
    (root / "nightly" / "runs" / "r1" / ".checkpoints" / "load.done").write_text("{torn")
    html = render_report(pipeline, "r1")
    assert "<td><code>day</code></td><td>mon</td>" in html  # from the other marker


def test_a_map_steps_item_counts_come_from_its_journal(root: Path) -> None:
    """A failed map step has no marker: its counts are the journal's, as ``status`` shows."""
    pipeline = Pipeline("pages", root=root, alerters=[])

    @pipeline.map(items=range(5), key=str)
    def page(ctx: ItemContext, n: int) -> None:
        if n == 3:
            raise ValueError("bad page")
        ctx.write_text(f"p/{n}.txt", "x")

    with pytest.raises(ItemsFailed):
        pipeline.run(run_id="r1")
    html = render_report(pipeline, "r1")
    assert "items: 4 done / 1 failed / 0 pending of 5" in html


def _at(seconds: float) -> str:
    return f"2026-11-28T03:00:{seconds:06.3f}Z"


def _labels(svg: str) -> list[tuple[int, float, float, bool]]:
    """Each bar label of a timeline: its row (y), x extent and whether it is inside a bar."""
    return [
        (int(y), float(x), float(x) + _CHAR_W * len(text), inside != "")
        for x, y, inside, text in re.findall(
            r'<text x="([\d.]+)" y="(\d+)"( class="inside")?>(run [^<]*)</text>', svg
        )
    ]


def test_bar_labels_never_overprint_each_other() -> None:
    attempts = [
        Attempt("extract", 1, _at(0), _at(9), "done", attempts=3, retries=2),
        Attempt("load", 1, _at(9), _at(9.05), "failed"),  # two quick tries at the right edge
        Attempt("load", 2, _at(9.6), _at(9.7), "failed"),
        Attempt("load", 3, _at(9.75), _at(10), "failed"),
    ]
    svg = _timeline(attempts, ["extract", "load"])
    assert svg.count("<title>") == 4  # every bar keeps its tooltip, labelled or not
    labels = _labels(svg)
    assert labels, svg
    for row in {y for y, *_ in labels}:
        spans = sorted((a, b) for y, a, b, _ in labels if y == row)
        assert all(b < a2 for (_, b), (a2, _) in itertools.pairwise(spans)), spans
    assert any(inside for *_, inside in labels)  # extract's label: inside its long bar
    assert len([label for label in labels if label[0] == labels[-1][0]]) < 3  # one dropped


def test_a_label_goes_after_its_bar_when_there_is_room() -> None:
    attempts = [
        Attempt("extract", 1, _at(0), _at(1), "done"),
        Attempt("load", 1, _at(1), _at(10), "done"),
    ]
    [(_, first_x, _, first_inside), (_, _, _, second_inside)] = _labels(
        _timeline(attempts, ["extract", "load"])
    )
    assert not first_inside
    assert first_x > 150 + 720 * 0.1  # after the short first bar
    assert second_inside  # the second bar reaches the right edge: its label goes inside
