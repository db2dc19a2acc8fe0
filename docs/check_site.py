"""Open every page of the built site in headless Chromium and check what a reader would hit.

    python docs/check_site.py docs/_build/html

For each ``.html`` page: it loads; no console error, uncaught exception or browser log error;
no request leaves the site (only ``file:``, ``data:`` and ``about:`` URLs); every internal
link, stylesheet, script, image and frame points at a file that exists, and every ``#anchor``
at an id in that file; every image has loaded, has a size, and is not blank where it is drawn
(a screenshot of its box holds more than one colour); every frame has loaded its page (the
tutorial shows the report in one); each page shows something in the window. Links to other
sites are allowed (the theme's credits) but never requested. Exits 1 and lists every problem.

One Chromium process visits all pages, through the DevTools pipe client in tests/_chromium.py.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import _chromium  # a stdlib-only client, shared with the report's browser tests

LOCAL_SCHEMES = ("file", "data", "about", "blob")

# Evaluated on each page after load: every reference the page makes, and its images' boxes.
_PAGE_FACTS = """
(function(){
  var refs=[];
  document.querySelectorAll('a[href],link[href],img[src],script[src],iframe[src],source[src]')
    .forEach(function(e){refs.push(e.href||e.src);});
  var images=[];
  var frames=[];
  document.querySelectorAll('iframe').forEach(function(f){frames.push(f.src);});
  document.querySelectorAll('img').forEach(function(i){
    var r=i.getBoundingClientRect();
    images.push({src:i.currentSrc||i.src,complete:i.complete,width:i.naturalWidth,
      x:r.left+window.scrollX,y:r.top+window.scrollY,w:r.width,h:r.height,
      shown:r.width>0&&r.height>0});
  });
  return {refs:refs,images:images,frames:frames};
})()
"""


class _Ids(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("id", "name") and value:
                self.ids.add(value)


def anchors(page: Path) -> set[str]:
    parser = _Ids()
    parser.feed(page.read_text(encoding="utf-8", errors="replace"))
    return parser.ids


@dataclass
class Report:
    pages: int = 0
    links: int = 0
    images: int = 0
    problems: list[str] = field(default_factory=list)


def blank(png: bytes, least: float = 0.002) -> str | None:
    """Why a screenshot looks empty, or None when something is drawn: one flat colour, or
    fewer than ``least`` of its pixels differ from the most common colour."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20) or []
    if len(colours) <= 1:
        return "one flat colour"
    top = max(count for count, _ in colours)
    drawn = 1 - top / (image.width * image.height)
    if drawn < least:
        return f"only {drawn:.2%} of its pixels differ from the background"
    return None


def _check_ref(url: str, site: Path, ids: dict[Path, set[str]], where: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme != "file":
        return None  # data:, about:, and links to other sites (never requested: see below)
    target = Path(unquote(parts.path))
    try:
        target.relative_to(site)
    except ValueError:
        return f"{where}: {url} points outside the site"
    if not target.exists():
        return f"{where}: broken link {url}"
    if target.is_dir():
        target = target / "index.html"
        if not target.exists():
            return f"{where}: link to a folder without index.html: {url}"
    fragment = unquote(parts.fragment)
    if fragment and target.suffix == ".html":
        known = ids.get(target)
        if known is None:  # not setdefault: that would parse the page again for every link
            known = ids[target] = anchors(target)
        if fragment not in known:
            return f"{where}: {url} has no #{fragment} in {target.name}"
    return None


class _Browser:
    """One headless Chromium, one tab, driven over the DevTools pipe."""

    def __init__(self, timeout: float) -> None:
        binary = _chromium.chromium()
        if binary is None:
            raise FileNotFoundError("chromium is not installed (apt-get install chromium)")
        to_r, self._to_w = os.pipe()
        self._from_r, from_w = os.pipe()
        self._profile = tempfile.mkdtemp(prefix="gradscope-site-")
        command = [
            "bash",
            "-c",
            f'exec "$0" "$@" 3<&{to_r} 4>&{from_w}',
            binary,
            *_chromium.FLAGS,
            f"--user-data-dir={self._profile}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        self._process = subprocess.Popen(
            command,
            pass_fds=(to_r, from_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_r)
        os.close(from_w)
        self.timeout = timeout
        self.pipe = _chromium._Pipe(self._to_w, self._from_r, _deadline(timeout))
        target = self.pipe.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.pipe.call("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        for domain in ("Runtime", "Log", "Network", "Page"):
            self.pipe.call(f"{domain}.enable", self.session)

    def visit(self, page: Path) -> tuple[_chromium.PageVisit, dict[str, Any]]:
        self.pipe.deadline = _deadline(self.timeout)
        self.pipe.events.clear()
        self.pipe.call("Page.navigate", self.session, url=page.as_uri())
        visit = _chromium.PageVisit()
        visit.loaded = self.pipe.wait_for("Page.loadEventFired", self.timeout / 2)
        self.pipe.wait_for("gradscope.never", 0.3)  # late console messages, frames
        facts = self.pipe.call(
            "Runtime.evaluate", self.session, expression=_PAGE_FACTS, returnByValue=True
        )
        found: dict[str, Any] = facts.get("result", {}).get("value") or {}
        visit.collect(self.pipe.events)
        return visit, found

    def shot(self, x: float, y: float, width: float, height: float) -> bytes:
        """A picture of one box of the page (document coordinates)."""
        reply = self.pipe.call(
            "Page.captureScreenshot",
            self.session,
            format="png",
            captureBeyondViewport=True,
            clip={"x": x, "y": y, "width": width, "height": height, "scale": 1},
        )
        return base64.b64decode(reply["data"])

    def window_shot(self) -> bytes:
        """What the window shows (the top of the page)."""
        reply = self.pipe.call("Page.captureScreenshot", self.session, format="png")
        return base64.b64decode(reply["data"])

    def frames(self) -> list[str]:
        """URLs of the frames inside the current page that finished navigating."""
        tree = self.pipe.call("Page.getFrameTree", self.session)["frameTree"]
        return [child["frame"]["url"] for child in tree.get("childFrames", [])]

    def close(self) -> None:
        with contextlib.suppress(ConnectionError, TimeoutError, RuntimeError):
            self.pipe.call("Browser.close")
        os.close(self._to_w)
        os.close(self._from_r)
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        shutil.rmtree(self._profile, ignore_errors=True)


def _deadline(seconds: float) -> float:
    import time

    return time.monotonic() + seconds


def pages_of(site: Path) -> Iterator[Path]:
    yield from sorted(p for p in site.rglob("*.html") if ".doctrees" not in p.parts)


def check_site(site: Path, *, timeout: float = 60) -> Report:
    """Visit every page under ``site``; the report lists every problem found."""
    site = site.resolve()
    report = Report()
    ids: dict[Path, set[str]] = {}
    pages = list(pages_of(site))
    if not pages:
        report.problems.append(f"{site}: no .html pages (was the site built?)")
        return report
    browser = _Browser(timeout)
    try:
        for page in pages:
            where = str(page.relative_to(site))
            report.pages += 1
            visit, facts = browser.visit(page)
            if not visit.loaded:
                report.problems.append(f"{where}: did not finish loading")
            report.problems += [f"{where}: {error}" for error in visit.errors]
            outside = [u for u in visit.requests if urlsplit(u).scheme not in LOCAL_SCHEMES]
            report.problems += [f"{where}: requested {u} (outside the site)" for u in outside]
            for url in facts.get("refs", []):
                report.links += 1
                problem = _check_ref(url, site, ids, where)
                if problem:
                    report.problems.append(problem)
            for image in facts.get("images", []):
                report.images += 1
                name = image["src"].rsplit("/", 1)[-1]
                if not image["complete"] or not image["width"]:
                    report.problems.append(f"{where}: image {name} did not load")
                    continue
                if not image["shown"]:
                    continue  # hidden on purpose (a theme's icon for another colour scheme)
                png = browser.shot(image["x"], image["y"], image["w"], image["h"])
                why = blank(png)
                if why:
                    report.problems.append(f"{where}: image {name} looks blank: {why}")
            loaded = browser.frames()
            for url in facts.get("frames", []):
                if url not in loaded:
                    report.problems.append(f"{where}: frame {url} did not load")
            why = blank(browser.window_shot(), least=0)  # a short page is not a blank one
            if why:
                report.problems.append(f"{where}: the page looks blank: {why}")
    finally:
        browser.close()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("site", type=Path, help="the built site, e.g. docs/_build/html")
    args = parser.parse_args(argv)
    report = check_site(args.site)
    for problem in report.problems:
        print(f"check_site: {problem}", file=sys.stderr)
    status = "FAILED" if report.problems else "ok"
    print(
        f"check_site: {report.pages} pages, {report.links} links, {report.images} images "
        f"checked in headless Chromium: {status}"
        + (f" ({len(report.problems)} problems)" if report.problems else "")
    )
    return 1 if report.problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
