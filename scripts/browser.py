"""Headless Chromium for the UI tests and the docs' screenshots (Debian's `chromium`).

Two ways in: `chromium()` runs it once (`--dump-dom`, `--screenshot`), enough for a page
anyone may see; `Browser` drives one instance over the DevTools protocol on a pipe
(`--remote-debugging-pipe`: no port, no websocket library), for what the command line cannot
do: log in, read a page's HTTP status, then look at the next page as that user.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Without the background-networking flags chromium spends its start on refused connections
# (this network is closed); a fresh profile per run keeps one run from locking or warming
# the next.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars")
TIMEOUT = 60.0
SVG = "http://www.w3.org/2000/svg"


def executable() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "Debian's chromium is needed for the UI tests (./dev test installs it)"
    return exe


def chromium(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    """One headless run with the flags this closed network needs."""
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp)
    return subprocess.run([executable(), *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120)


def dump_dom(page: str, tmp: Path, want: tuple[str, ...]) -> str:
    """The rendered page, which must show every string in `want`.

    The page is rendered on the server; `?refresh=0` drops its reload so chromium dumps the
    document it loaded rather than racing a reload (which once gave an empty dump in CI).
    """
    out = chromium("--dump-dom", page, tmp=tmp)
    assert all(w in out.stdout for w in want), (
        f"{page} does not show {want}: exit {out.returncode}\n"
        f"dom: {out.stdout[:1500]}\nstderr: {out.stderr[-1500:]}")
    return out.stdout


def check_png(path: Path, width: int, min_height: int) -> None:
    """A screenshot that shows something: the width asked for, and not one flat colour."""
    from matplotlib.image import imread

    pixels = imread(path)
    assert pixels.shape[1] == width and pixels.shape[0] >= min_height, pixels.shape
    assert pixels.std() > 0.02, f"{path} is blank"


def chart(dom: str, cls: str) -> ET.Element:
    """The inline SVG of class `cls` in a page as the browser serialised it, parsed as XML."""
    at = dom.index(f'class="{cls}"')
    start, end = dom.rindex("<svg", 0, at), dom.index("</svg>", at) + len("</svg>")
    return ET.fromstring(dom[start:end])


def parts(svg: ET.Element, cls: str) -> list[ET.Element]:
    """The chart's groups of class `cls` (lane, attempt, preemption, cluster, segment...)."""
    return [g for g in svg.iter(f"{{{SVG}}}g") if g.get("class") == cls]


@dataclass(frozen=True)
class Loaded:
    url: str  # where the tab is after any redirect
    status: int  # the document's HTTP status, as the browser got it
    dom: str


# Puts the two pipe ends on fds 3 and 4 and runs chromium: a shell cannot (dash takes one
# digit fds only, and pytest's are often above 9); moved above 9 first, so that neither
# end is overwritten by the other's dup2.
_AS_FD_3_AND_4 = """
import fcntl, os, sys
ours = [fcntl.fcntl(int(fd), fcntl.F_DUPFD, 10) for fd in sys.argv[1:3]]
os.dup2(ours[0], 3)
os.dup2(ours[1], 4)
os.execv(sys.argv[3], sys.argv[3:])
"""


class DevToolsError(RuntimeError):
    """Chromium answered a DevTools command with an error, or not in time."""


class Browser:
    """One headless Chromium and one tab, driven over the DevTools protocol on a pipe.

    Chromium reads commands on its fd 3 and writes answers and events on its fd 4, each a JSON
    message ended by a NUL byte. Use as a context manager.
    """

    def __init__(self, tmp: Path, width: int = 1100, height: int = 700) -> None:
        self.tmp, self.width, self.height = tmp, width, height
        self._buffer, self._events, self._next_id = b"", [], 0
        self._session = ""

    def __enter__(self) -> Browser:
        commands, self._to = os.pipe()  # chromium reads `commands` as its fd 3
        self._answers, answers = os.pipe()  # and writes `answers` as its fd 4
        profile = tempfile.mkdtemp(prefix="chromium-", dir=self.tmp)
        self._log = open(Path(profile) / "chromium.log", "wb")  # closed in __exit__
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _AS_FD_3_AND_4, str(commands), str(answers), executable(),
             *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            pass_fds=(commands, answers), stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
        os.close(commands)
        os.close(answers)
        target = self.send("Target.createTarget", {"url": "about:blank"}, browser=True)
        self._session = self.send("Target.attachToTarget", {"targetId": target["targetId"],
                                                            "flatten": True},
                                  browser=True)["sessionId"]
        self.send("Page.enable")
        self.send("Emulation.setDeviceMetricsOverride", {
            "width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False})
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(DevToolsError, OSError):  # it may close before answering
            self.send("Browser.close", browser=True)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        os.close(self._to)
        os.close(self._answers)
        self._log.close()

    def _read(self, deadline: float) -> dict[str, Any]:
        """The next message from chromium."""
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._answers], [], [], max(left, 0))
            if not ready:
                raise DevToolsError(f"no answer from chromium in {TIMEOUT:.0f} s")
            chunk = os.read(self._answers, 1 << 20)
            if not chunk:
                raise DevToolsError(f"chromium closed the pipe (exit {self.proc.poll()})")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def send(self, method: str, params: dict[str, Any] | None = None, *,
             browser: bool = False) -> dict[str, Any]:
        """Send a command (to the tab unless `browser`) and return its result; events that
        come meanwhile are kept for `wait_for`."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if not browser:
            message["sessionId"] = self._session
        os.write(self._to, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT
        while True:
            answer = self._read(deadline)
            if answer.get("id") != self._next_id:
                self._events.append(answer)
                continue
            if "error" in answer:
                raise DevToolsError(f"{method}: {answer['error']}")
            return answer.get("result", {})

    def wait_for(self, event: str) -> dict[str, Any]:
        """The first kept or coming event of the tab named `event` (and forget it)."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            for i, seen in enumerate(self._events):
                if seen.get("method") == event and seen.get("sessionId") == self._session:
                    return self._events.pop(i).get("params", {})
            self._events.append(self._read(deadline))

    def evaluate(self, expression: str, *, await_promise: bool = False) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": await_promise})
        if "exceptionDetails" in result:
            raise DevToolsError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str) -> Loaded:
        """Load `url` in the tab and wait for its load event: where it ended up, its status
        and its DOM."""
        self._events = [e for e in self._events if e.get("method") != "Page.loadEventFired"]
        nav = self.send("Page.navigate", {"url": url})
        if nav.get("errorText"):
            raise DevToolsError(f"{url}: {nav['errorText']}")
        self.wait_for("Page.loadEventFired")
        status = self.evaluate("performance.getEntriesByType('navigation')[0].responseStatus")
        return Loaded(self.evaluate("location.href"), int(status),
                      self.evaluate("document.documentElement.outerHTML"))

    def login(self, username: str, password: str) -> int:
        """Log in as SimpleAuthManager's login page does, from a page of the same Airflow:
        POST /auth/token with the password, the token into the `_token` cookie (path /).
        Returns the status of the POST."""
        credentials = json.dumps({"username": username, "password": password})
        return self.evaluate(
            "fetch('/auth/token', {method: 'POST', headers: {'Content-Type': 'application/json'},"
            f" body: JSON.stringify({credentials})}})"
            ".then(async r => { if (r.ok) { document.cookie = '_token=' + "
            "(await r.json()).access_token + '; path=/'; } return r.status; })",
            await_promise=True)

    def screenshot(self, path: Path) -> Path:
        """The whole page as a PNG, the window's width wide, down to the end of its body."""
        height = self.evaluate("Math.ceil(document.body.getBoundingClientRect().bottom"
                               " + parseFloat(getComputedStyle(document.body).marginBottom))")
        shot = self.send("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": self.width, "height": max(height, 1), "scale": 1}})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path
