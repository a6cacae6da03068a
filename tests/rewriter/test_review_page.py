"""The review page as a reviewer sees it: opened in a real headless browser (Debian's chromium,
driven by playwright), screenshotted and read back.

The browser is the system's ``/usr/bin/chromium`` (playwright's own browser download is not
reachable from these machines); ``.ci/run`` installs it. Without it the test is skipped with the
reason, except under CI (``CI=true``, or 1/yes), where a missing browser is a failure: CI must run it.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from sample_upstream import Sample, change_factor, commit_project

from rewriter.cli import main

CHROMIUM = Path(os.environ.get("PRIMUS_CHROMIUM", "/usr/bin/chromium"))
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def _browser_or_skip() -> None:
    problem = None
    if not CHROMIUM.is_file():
        problem = f"no chromium at {CHROMIUM} (apt-get install chromium, or set PRIMUS_CHROMIUM)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problem = "playwright is not installed (pip install -e .[test])"
    if problem is None:
        return
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(f"CI must run the browser test: {problem}")
    pytest.skip(problem)


@pytest.mark.slow
def test_review_page_in_a_browser(sample: Sample, tmp_path: Path) -> None:
    _browser_or_skip()
    from PIL import Image
    from playwright.sync_api import sync_playwright

    commit_project(sample)
    change_factor(sample, 3, commit=False)
    page_file = tmp_path / "interdiff.html"
    assert main(sample.args("interdiff", "--from-ref", "HEAD", "--html", str(page_file))) == 0

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(page_file.as_uri())
            headings = page.locator("h3.patch-heading").all_inner_texts()
            title = page.locator("h1").inner_text()
            anchors = page.locator("td.anchor")
            anchor_visible = anchors.count() > 0 and anchors.first.is_visible()
            added = page.locator("tr.replace td.r").all_inner_texts()
            shot = page.screenshot(full_page=True)
        finally:
            browser.close()

    assert title.startswith("Interdiff v0.1.0: HEAD (") and title.endswith("-> work tree")
    assert [h.split()[:2] for h in headings] == [["double_output", "changed"]]
    assert anchor_visible
    assert any("y = y * 3" in text for text in added)
    image = Image.open(io.BytesIO(shot)).convert("RGB")
    assert image.width == 1280 and image.height >= 900
    colors = image.getcolors(maxcolors=1 << 20) or []
    assert len(colors) > 20, "the screenshot is (nearly) one colour: nothing was rendered"
    background = max(colors)[0] / (image.width * image.height)
    assert background < 0.97, f"{background:.1%} of the page is background"
