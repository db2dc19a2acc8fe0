"""A small stdlib-only DevTools client: open one page in headless Chromium and watch it.

Chromium started with ``--remote-debugging-pipe`` reads protocol commands from fd 3 and writes
replies and events to fd 4, each JSON message ending with a NUL byte. That is all this needs:
no websocket, no third-party package.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--hide-scrollbars",
    "--window-size=1280,1000",
]


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class PageVisit:
    """What happened while one page loaded."""

    loaded: bool = False
    console: list[tuple[str, str]] = field(default_factory=list)  # (level, text)
    exceptions: list[str] = field(default_factory=list)
    log_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    screenshot: bytes = b""
    evaluated: dict[str, Any] = field(default_factory=dict)

    @property
    def errors(self) -> list[str]:
        bad = [f"console.{lvl}: {text}" for lvl, text in self.console if lvl in ("error", "assert")]
        return bad + self.exceptions + self.log_errors

    def collect(self, events: list[dict[str, Any]]) -> None:
        """Sort the DevTools events of the visit into console lines, errors and requests."""
        for event in events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled":
                text = " ".join(
                    str(a.get("value", a.get("description", ""))) for a in params["args"]
                )
                self.console.append((params["type"], text))
            elif method == "Runtime.exceptionThrown":
                self.exceptions.append(str(params["exceptionDetails"]))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                self.log_errors.append(params["entry"]["text"])
            elif method == "Network.requestWillBeSent":
                self.requests.append(params["request"]["url"])


class _Pipe:
    def __init__(self, write_fd: int, read_fd: int, deadline: float) -> None:
        self.write_fd, self.read_fd, self.deadline = write_fd, read_fd, deadline
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def _read_message(self) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("chromium did not answer in time")
            ready, _, _ = select.select([self.read_fd], [], [], left)
            if ready:
                chunk = os.read(self.read_fd, 1 << 20)
                if not chunk:
                    raise ConnectionError("chromium closed the DevTools pipe")
                self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        message: dict[str, Any] = json.loads(raw)
        return message

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read_message()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result
            self.events.append(reply)

    def wait_for(self, method: str, seconds: float) -> bool:
        until = min(self.deadline, time.monotonic() + seconds)
        while True:
            if any(e.get("method") == method for e in self.events):
                return True
            self.deadline, saved = until, self.deadline
            try:
                self.events.append(self._read_message())
            except TimeoutError:
                return False
            finally:
                self.deadline = saved


def visit(
    path: Path, *, expressions: dict[str, str] | None = None, timeout: float = 60
) -> PageVisit:
    """Open ``path`` in headless Chromium; record console output, requests and a screenshot.

    ``expressions`` are JavaScript snippets evaluated after load (their values land in
    ``PageVisit.evaluated``).
    """
    binary = chromium()
    if binary is None:
        raise FileNotFoundError("chromium is not installed")
    url = path.resolve().as_uri()
    to_chrome_r, to_chrome_w = os.pipe()
    from_chrome_r, from_chrome_w = os.pipe()
    profile = tempfile.mkdtemp(prefix="gradscope-chromium-")
    command = [  # bash, not sh: dash cannot redirect from file descriptors above 9
        "bash",
        "-c",
        f'exec "$0" "$@" 3<&{to_chrome_r} 4>&{from_chrome_w}',
        binary,
        *FLAGS,
        f"--user-data-dir={profile}",
        "--remote-debugging-pipe",
        "about:blank",
    ]
    process = subprocess.Popen(
        command,
        pass_fds=(to_chrome_r, from_chrome_w),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(to_chrome_r)
    os.close(from_chrome_w)
    pipe = _Pipe(to_chrome_w, from_chrome_r, time.monotonic() + timeout)
    result = PageVisit()
    try:
        target = pipe.call("Target.createTarget", url="about:blank")["targetId"]
        session = pipe.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            pipe.call(f"{domain}.enable", session)
        pipe.call("Page.navigate", session, url=url)
        result.loaded = pipe.wait_for("Page.loadEventFired", timeout / 2)
        pipe.wait_for("gradscope.never", 0.5)  # let late console messages arrive
        for name, expression in (expressions or {}).items():
            reply = pipe.call(
                "Runtime.evaluate", session, expression=expression, returnByValue=True
            )
            if "exceptionDetails" in reply:
                result.exceptions.append(f"{name}: {reply['exceptionDetails']}")
            result.evaluated[name] = reply.get("result", {}).get("value")
        size = pipe.call("Page.getLayoutMetrics", session)["cssContentSize"]
        shot = pipe.call(
            "Page.captureScreenshot",
            session,
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
        )
        result.screenshot = base64.b64decode(shot["data"])
        result.collect(pipe.events)
        # Chromium may exit before it answers Browser.close; the wait below handles the rest.
        with contextlib.suppress(ConnectionError, TimeoutError):
            pipe.call("Browser.close")
    finally:
        os.close(to_chrome_w)
        os.close(from_chrome_r)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(profile, ignore_errors=True)
    return result
