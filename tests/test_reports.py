"""Every report format, from real dumps: valid JSON (against docs/report.schema.json),
JUnit XML with one failure per error finding, Markdown, and a self-contained HTML page."""
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


def test_html_renders_in_headless_chromium(tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no headless Chromium here (Debian: apt-get install chromium)")
    make_run(str(tmp_path), "nudge")
    page = tmp_path / "report.html"
    _report(tmp_path, "html", "--output", str(page))
    shot = tmp_path / "shot.png"
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                           "--window-size=1000,2400", f"file://{page}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and shot.stat().st_size > 20_000, proc.stderr[-2000:]
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", f"file://{page}"],
                         capture_output=True, text=True, timeout=120).stdout
    assert dom.count("<img") >= 3 and "param_divergence" in dom
