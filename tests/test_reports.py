"""Every report format, from real dumps: valid JSON (against docs/report.schema.json),
JUnit XML with one failure per error finding, Markdown, and a self-contained HTML page."""
import html
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from synthetic import make_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _report(run_dir, fmt, *options):
    proc = subprocess.run([sys.executable, "-m", "distcheck", "analyze", str(run_dir), "--format", fmt, *options],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, proc.stdout


def check_every_format(run_dir):
    """Produce each format of ``run_dir``'s report and check it; return the JSON report."""
    import jsonschema

    _, text = _report(run_dir, "json")
    report = json.loads(text)
    with open(os.path.join(ROOT, "docs", "report.schema.json")) as fh:
        jsonschema.validate(report, json.load(fh))
    errors = [f for f in report["findings"] if f["severity"] == "error"]

    _, xml = _report(run_dir, "junit")
    suite = ET.fromstring(xml.split("\n", 1)[1]).find("testsuite")
    failures = suite.findall("testcase/failure")
    assert len(failures) == len(errors) == int(suite.get("failures"))
    assert sorted(f.get("type") for f in failures) == sorted(f["code"] for f in errors)

    _, markdown = _report(run_dir, "markdown")
    assert markdown.startswith("### distcheck: " + ("FAIL" if errors else "PASS"))
    assert all(f"`{f['code']}`" in markdown for f in report["findings"])

    _, page = _report(run_dir, "html")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert not re.search(r"(src|href)=['\"]https?:", page)  # self-contained: nothing from the network
    assert page.count("data:image/png;base64,") >= 3  # agreement map, loss, gradient norm (and update ratio)
    assert all(f["code"] in page for f in report["findings"])

    code, text = _report(run_dir, "text")
    assert text.splitlines()[0].startswith("FAIL" if errors else "PASS")
    assert code == (1 if errors else 0)
    return report


@pytest.mark.parametrize("bug", ["nudge", "none", "stop"])
def test_every_format_from_a_synthetic_run(tmp_path, bug):
    make_run(str(tmp_path), bug)
    report = check_every_format(tmp_path)
    assert bool(report["findings"]) == (bug != "none")


# Appended to a copy of the page: once it has loaded, what the browser made of the plots
# and of the findings table, written into the DOM for --dump-dom.
_RENDER_CHECK = """<script>
window.addEventListener('load', () => {
  const images = [...document.images].map(i => ({alt: i.alt, complete: i.complete, natural: [i.naturalWidth,
    i.naturalHeight], shown: [i.getBoundingClientRect().width, i.getBoundingClientRect().height]}));
  const heading = [...document.querySelectorAll('h2')].find(h => h.textContent === 'Findings');
  const table = heading && heading.nextElementSibling;
  const rows = table ? [...table.querySelectorAll('tr')].slice(1).map(r => [...r.cells].map(c => c.innerText)) : [];
  const out = document.createElement('pre');
  out.id = 'render-check';
  out.textContent = JSON.stringify({images, rows});
  document.body.appendChild(out);
});
</script>"""


def _chromium(browser, profile, *args):
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                           *args], capture_output=True, text=True, timeout=120)


def test_html_renders_in_headless_chromium(tmp_path):
    """The page in a real browser: every plot decoded and shown, the findings table's rows
    those of the JSON report, and a screenshot that is not blank."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("CI must render the HTML report, but there is no chromium (scripts/setup-env installs it "
                        "when CI is set)")
        pytest.skip("no headless Chromium here, so the HTML report is not rendered (Debian: apt-get install chromium)")
    make_run(str(tmp_path), "nudge")
    page = tmp_path / "report.html"
    _report(tmp_path, "html", "--output", str(page))
    findings = json.loads(_report(tmp_path, "json")[1])["findings"]
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", _RENDER_CHECK + "</body>"))
    proc = _chromium(browser, tmp_path / "profile", "--dump-dom", f"file://{probe}")
    found = re.search(r"<pre id=\"render-check\">(.*?)</pre>", proc.stdout, re.S)
    assert found, f"the page did not finish loading in Chromium: {proc.stderr[-2000:]}"
    rendered = json.loads(html.unescape(found.group(1)))

    images = rendered["images"]
    assert len(images) >= 3, images  # agreement map, loss, gradient norm (and update ratio)
    for image in images:
        assert image["complete"] and min(image["natural"]) > 100, image  # the PNG decoded
        assert min(image["shown"]) > 100, image  # and laid out at a visible size
    expected = [[f["severity"], f["code"], "" if f["step"] is None else str(f["step"])] for f in findings]
    assert [row[:3] for row in rendered["rows"]] == expected  # one row a finding, in the report's order
    assert any(row[1] == "param_divergence" for row in rendered["rows"])

    shot = tmp_path / "shot.png"
    proc = _chromium(browser, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1000,2400",
                     f"file://{page}")
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    import matplotlib.image

    pixels = matplotlib.image.imread(str(shot))[..., :3]
    assert (pixels.min(axis=2) < 0.9).mean() > 0.02  # text and plots, not a blank page
