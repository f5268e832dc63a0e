"""The built website in a real (headless) browser: two chapter pages render their figures and their math.

Skipped unless the book has been built (``make book`` -> ``_build/html``; or set ``XREG_EDU_HTML`` to another
build's ``html`` folder) and a Chromium is installed (``apt-get install -y chromium``).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HTML = Path(os.environ.get("XREG_EDU_HTML", ROOT / "_build" / "html"))
PAGES = ["book/01_why_groupwise.html", "book/02_mutual_information.html"]
BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)

pytestmark = [
    pytest.mark.skipif(not (HTML / "index.html").is_file(),
                       reason=f"no built website at {HTML} (run `make book` first)"),
    pytest.mark.skipif(BROWSER is None, reason="no chromium in PATH (apt-get install -y chromium)"),
]


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs).get("src", ""))


def _browser(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--hide-scrollbars", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("page", PAGES)
def test_page_figures_and_math_in_browser(page, tmp_path):
    path = HTML / page
    if not path.is_file():
        pytest.skip(f"{page} is not part of this build")
    url = path.as_uri()

    # 1. the DOM after the browser has run the page's scripts
    dom = _browser("--virtual-time-budget=5000", "--dump-dom", url).stdout
    assert "<html" in dom.lower(), f"{page}: the browser returned no DOM"
    parser = _Images()
    parser.feed(dom)
    figures = [s for s in parser.srcs if "_images/" in s or s.startswith("data:image")]
    assert len(figures) >= 3, f"{page}: only {len(figures)} figure images in the rendered page"
    for src in figures:
        if src.startswith("data:image"):
            assert len(src) > 1000, f"{page}: an inline image is empty"
            continue
        target = (path.parent / src.split("#")[0].split("?")[0]).resolve()
        assert target.is_file() and target.stat().st_size > 1000, f"{page}: figure {src} is missing or empty"

    # math: MathJax is loaded and the equations are in the page (rendered if the MathJax CDN was reachable)
    assert re.search(r"<script[^>]+mathjax", dom, re.I), f"{page}: MathJax is not loaded"
    assert "mjx-container" in dom or re.search(r"\\\[|\\\(|\$\$", dom), f"{page}: no math in the page"
    assert 'id="equation-eq-' in dom or "eq-" in dom, f"{page}: numbered equations are missing"

    # 2. a screenshot: a real rendering that is not blank
    shot = tmp_path / (Path(page).stem + ".png")
    _browser(f"--screenshot={shot}", "--window-size=1280,2400", "--virtual-time-budget=5000", url)
    assert shot.is_file() and shot.stat().st_size > 20_000, f"{page}: screenshot missing or nearly empty"
    from PIL import Image

    img = Image.open(shot).convert("L")
    lo, hi = img.getextrema()
    assert hi - lo > 100, f"{page}: the screenshot is blank"
    keep = os.environ.get("XREG_EDU_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / shot.name)
