"""Every page of the built website in a headless Chromium with the network blocked.

Per page: no raw TeX delimiters left in the text, every math element typeset by MathJax (served from the site
itself) without errors, every image loaded, no code cell, output or table clipped (wider than its box without a
scrollbar), no page wider than the window, no request leaving the disk, and figures shown at least at their physical
size (so their >= 9 pt fonts stay >= 9 pt). Driven through the Chrome DevTools protocol over a pipe (no extra
packages). ``make book`` runs it; without a build (``_build/html``, or ``XREG_EDU_HTML``) it is skipped, without a
Chromium it fails unless ``XREG_EDU_NO_BROWSER=1`` says a developer knowingly has none.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HTML = Path(os.environ.get("XREG_EDU_HTML", ROOT / "_build" / "html"))
BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
PAGES = sorted(p.relative_to(HTML).as_posix() for p in HTML.rglob("*.html")
               if not {"_static", "_sources", "_images"} & set(p.relative_to(HTML).parts)
               and p.name not in ("search.html", "genindex.html", "py-modindex.html")
               and 'http-equiv="Refresh"' not in p.read_text()[:2000]) if HTML.is_dir() else []  # not redirects
WIDTH, HEIGHT = 1280, 900

pytestmark = [
    pytest.mark.skipif(not (HTML / "index.html").is_file(), reason=f"no built website at {HTML} (run `make book`)"),
    pytest.mark.skipif(BROWSER is None and os.environ.get("XREG_EDU_NO_BROWSER") == "1",
                       reason="XREG_EDU_NO_BROWSER=1: no chromium on this machine"),
]


class Chrome:
    """Minimal CDP client: one headless browser, messages as NUL-terminated JSON on fds 3 (in) and 4 (out)."""

    def __init__(self):
        if BROWSER is None:
            raise RuntimeError("no chromium in PATH: apt-get install -y chromium (or XREG_EDU_NO_BROWSER=1)")
        self.profile = tempfile.mkdtemp(prefix="xreg_chrome_")
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def fds():
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        self.proc = subprocess.Popen(
            [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--remote-debugging-pipe", f"--user-data-dir={self.profile}", f"--window-size={WIDTH},{HEIGHT}",
             "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9", "--allow-file-access-from-files",
             "about:blank"],
            preexec_fn=fds, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Network"):
            self.call(f"{domain}.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=WIDTH, height=HEIGHT,
                  deviceScaleFactor=1, mobile=False)

    def _read(self, timeout: float) -> dict:
        import select

        while b"\0" not in self._buf:
            ready, _, _ = select.select([self._from_chrome], [], [], timeout)
            if not ready:
                raise TimeoutError("chromium did not answer")
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, session: bool = False, timeout: float = 60, **params) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read(timeout)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self.events):
                if ev.get("method") == method:
                    return self.events.pop(i)
            self.events.append(self._read(max(0.1, deadline - time.monotonic())))
            if time.monotonic() > deadline:
                raise TimeoutError(method)

    def evaluate(self, expression: str, timeout: float = 60):
        res = self.call("Runtime.evaluate", session=True, timeout=timeout, expression=expression,
                        awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in res:
            raise RuntimeError(res["exceptionDetails"])
        return res["result"].get("value")

    def close(self):
        try:
            self.call("Browser.close", timeout=10)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self._to_chrome)
        os.close(self._from_chrome)
        shutil.rmtree(self.profile, ignore_errors=True)


# Runs in the page once MathJax has typeset it; returns everything the assertions need.
CHECK = r"""
(async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
  await Promise.all([...document.images].map(i => i.complete ? 0 : new Promise(r => { i.onload = i.onerror = r; })));
  const clone = document.body.cloneNode(true);
  clone.querySelectorAll('pre, code, script, style, textarea, mjx-container, mjx-assistive-mml, .highlight')
       .forEach(e => e.remove());
  const text = clone.textContent;
  const raw = [];
  for (const d of ['\\(', '\\)', '\\[', '\\]', '$$', '\\begin{', '\\end{']) {
    const k = text.indexOf(d);
    if (k >= 0) raw.push(text.slice(Math.max(0, k - 40), k + 60).replace(/\s+/g, ' '));
  }
  const maths = [...document.querySelectorAll('.math')];
  const untypeset = maths.filter(m => !m.querySelector('mjx-container')).map(m => m.textContent.slice(0, 60));
  const errors = [...document.querySelectorAll('mjx-merror')].map(e => e.textContent.slice(0, 80));
  const images = [...document.images].map(i => ({src: i.getAttribute('src'), w: i.naturalWidth,
      shown: i.getBoundingClientRect().width, visible: i.offsetParent !== null, alt: i.getAttribute('alt')}));
  const scrolls = e => { for (let a = e; a && a !== document.body; a = a.parentElement) {
      const o = getComputedStyle(a).overflowX; if (o === 'auto' || o === 'scroll') return true; } return false; };
  const clipped = [...document.querySelectorAll('.bd-article pre, .bd-article table, .bd-article .cell_output')]
      .filter(e => e.offsetParent !== null && e.scrollWidth > e.clientWidth + 1 && !scrolls(e))
      .map(e => e.tagName + ': ' + e.textContent.trim().slice(0, 50));
  const article = document.querySelector('.bd-article');
  return {raw, maths: maths.length, untypeset, errors, images, clipped,
          pageWidth: document.documentElement.scrollWidth, column: article ? article.clientWidth : null,
          mathjax: !!(window.MathJax && MathJax.version), mathjaxSrc:
            [...document.scripts].map(s => s.src).filter(s => /mathjax/i.test(s))};
})()
"""


@pytest.fixture(scope="module")
def chrome():
    browser = Chrome()
    yield browser
    browser.close()


def _png_dpi(path: Path) -> float | None:
    from PIL import Image

    with Image.open(path) as im:
        dpi = im.info.get("dpi")
    return None if dpi is None else float(dpi[0])


def test_every_page_is_checked():
    assert len(PAGES) >= 13, f"only {len(PAGES)} pages found in {HTML}"


@pytest.mark.parametrize("page", PAGES)
def test_page_offline_in_browser(page, chrome):
    path = HTML / page
    chrome.events.clear()
    chrome.call("Page.navigate", session=True, url=path.as_uri())
    chrome.wait_event("Page.loadEventFired", timeout=90)
    r = chrome.evaluate(CHECK, timeout=120)
    problems = []
    offsite = sorted({ev["params"]["request"]["url"][:100] for ev in chrome.events
                      if ev.get("method") == "Network.requestWillBeSent"
                      and not re.match(r"(file|data|blob|about):", ev["params"]["request"]["url"])})
    if offsite:
        problems.append(f"requests leave the disk: {offsite}")
    if not r["mathjax"] or not all(s.startswith("file:") for s in r["mathjaxSrc"]):
        problems.append(f"MathJax not loaded from the site: {r['mathjaxSrc']}")
    if r["raw"]:
        problems.append(f"raw TeX in the text: {r['raw'][:3]}")
    if r["untypeset"]:
        problems.append(f"{len(r['untypeset'])}/{r['maths']} math elements not typeset: {r['untypeset'][:3]}")
    if r["errors"]:
        problems.append(f"MathJax errors: {r['errors'][:3]}")
    broken = [i["src"] for i in r["images"] if i["w"] == 0]
    if broken:
        problems.append(f"images not loaded: {broken}")
    if r["clipped"]:
        problems.append(f"clipped without a scrollbar: {r['clipped'][:3]}")
    if r["pageWidth"] > WIDTH:
        problems.append(f"page is {r['pageWidth']} px wide at a {WIDTH} px window")
    for img in r["images"]:
        src = img["src"] or ""
        if "_images/" not in src or not img["visible"] or not src.endswith(".png"):
            continue
        target = (path.parent / src).resolve()
        dpi = _png_dpi(target)
        if dpi is None or dpi < 149:
            problems.append(f"{src}: {dpi} dpi (< 150)")
            continue
        # inches on screen (96 CSS px per inch) over inches of the figure: < 1 shrinks its fonts below their size
        scale = (img["shown"] / 96) / (img["w"] / dpi)
        if scale < 0.99:
            problems.append(f"{src}: shown at {scale:.2f}x its size (figure wider than the "
                            f"{r['column']} px column; use xr.plotting.page_figsize)")
        alt = (img["alt"] or "").strip()
        if not alt or alt.endswith(src.rsplit("/", 1)[-1]) or alt.startswith("<Figure"):
            problems.append(f"{src}: no alt text (code cell metadata mystnb.image.alt)")
    assert not problems, f"{page}:\n  " + "\n  ".join(problems)


def test_launch_buttons_point_at_published_copies():
    """The Colab button of every chapter opens its Colab copy (written by the build); Binder builds binder/."""
    import sys

    import yaml

    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    import colab

    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    url = cfg["repository"]["url"].rstrip("/")
    org_repo = url.split("github.com/", 1)[1]
    branch = cfg["sphinx"]["config"]["colab_branch"]
    for path in colab._toc_chapters(ROOT):
        doc = path.relative_to(ROOT).with_suffix("").as_posix()
        page = (HTML / f"{doc}.html").read_text()
        want = f"https://colab.research.google.com/github/{org_repo}/blob/{branch}/{colab.COLAB_DIR}/{doc}.ipynb"
        assert want in page, f"{doc}: no Colab button to {want}"
        assert (HTML / colab.COLAB_DIR / f"{doc}.ipynb").is_file(), f"{doc}: the build wrote no Colab copy"
        assert f"https://mybinder.org/v2/gh/{org_repo}/" in page, f"{doc}: no Binder button"
