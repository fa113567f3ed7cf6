"""Load report.html in a real headless Chromium and check it the way a reader would see it.

Drives Chromium through the DevTools protocol (a small websocket client from the standard
library, no extra packages) and checks that:

* the page loads without console errors, uncaught exceptions or error log entries;
* nothing is fetched from outside the file (only ``file:`` and ``data:`` URLs);
* every ``<img>`` decodes with ``naturalWidth > 0`` and there is one per figure file;
* every table-of-contents link resolves to an element, and clicking one scrolls there;
* clicking a column header (a real mouse click) sorts the table by that column, ascending,
  and a second click reverses it;

and saves a screenshot of the top of the page.

Usage::

    python benchmarks/report_html_browser_check.py [REPORT_DIR] [--screenshot PNG] [--md MD]

Without REPORT_DIR it runs ``run_report(quick=True)`` into a temporary folder first. Needs a
Chromium binary (``apt-get install chromium``; or set ``CHROMIUM=/path/to/chrome``).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import pathlib
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

BINARIES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_chromium() -> str | None:
    """The Chromium binary: $CHROMIUM, else the first of ``BINARIES`` on PATH (None if none)."""
    env = os.environ.get("CHROMIUM")
    if env:
        return env if shutil.which(env) else None
    for name in BINARIES:
        path = shutil.which(name)
        if path:
            return path
    return None


class WebSocket:
    """A minimal RFC 6455 client: text frames, masking, fragmentation, ping/pong."""

    def __init__(self, url: str, timeout: float = 30.0):
        m = re.match(r"ws://([^/:]+):(\d+)(/.*)", url)
        if not m:
            raise ValueError(f"expected a ws://host:port/path URL, got {url!r}")
        host, port, path = m.group(1), int(m.group(2)), m.group(3)
        self.sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("DevTools closed the connection during the handshake")
            head += chunk
        head, self.buf = head.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise ConnectionError(f"websocket handshake refused: {head[:200]!r}")

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("DevTools closed the connection")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + body)

    def send(self, text: str) -> None:
        self._send_frame(0x1, text.encode())

    def recv(self) -> str:
        message = b""
        while True:
            b0, b1 = self._read(2)
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else None
            payload = self._read(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x9:  # ping
                self._send_frame(0xA, payload)
                continue
            if opcode == 0x8:
                raise ConnectionError("DevTools closed the websocket")
            if opcode in (0x0, 0x1, 0x2):
                message += payload
                if b0 & 0x80:
                    return message.decode()

    def close(self) -> None:
        try:
            self._send_frame(0x8, b"")
        finally:
            self.sock.close()


class DevTools:
    """Commands and events of one page target."""

    def __init__(self, ws: WebSocket):
        self.ws, self.next_id, self.events = ws, 0, []

    def __call__(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method} failed: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_for(self, method: str, timeout: float = 30.0) -> dict:
        end = time.monotonic() + timeout
        for ev in self.events:
            if ev["method"] == method:
                return ev
        while time.monotonic() < end:
            msg = json.loads(self.ws.recv())
            if "method" in msg:
                self.events.append(msg)
                if msg["method"] == method:
                    return msg
        raise TimeoutError(f"no {method} within {timeout} s")

    def js(self, expression: str):
        res = self("Runtime.evaluate", expression=expression, returnByValue=True,
                   awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"page script failed: {res['exceptionDetails']}")
        return res["result"].get("value")

    def click(self, selector_js: str) -> None:
        """A real mouse click (pressed + released) on the centre of the element."""
        rect = self.js(f"(function(){{var e={selector_js};e.scrollIntoView({{block:'center'}});"
                       "var r=e.getBoundingClientRect();return [r.left+r.width/2,r.top+r.height/2];"
                       "})()")
        for kind in ("mousePressed", "mouseReleased"):
            self("Input.dispatchMouseEvent", type=kind, x=rect[0], y=rect[1], button="left",
                 clickCount=1)


def _launch(binary: str, profile: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--no-default-browser-check", "--disable-extensions", "--remote-debugging-port=0",
         f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + 60
    while time.monotonic() < end:
        line = proc.stderr.readline()
        m = re.search(r"DevTools listening on (ws://\S+)", line)
        if m:
            port = re.match(r"ws://[^:]+:(\d+)", m.group(1)).group(1)
            # keep reading its log so a chatty browser never blocks on a full pipe
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, port
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"{binary} did not start a DevTools endpoint")


# The column of a sortable table whose order the check changes: the table with most rows, its
# first numeric column (data-sort values) with at least two distinct values not already sorted.
_PICK_TABLE = """(function(){
var best=null;
document.querySelectorAll('table.sortable').forEach(function(t,ti){
  var rows=t.tBodies[0].rows; if(rows.length<3)return;
  for(var c=0;c<rows[0].cells.length;c++){
    var v=[];for(var r=0;r<rows.length;r++){var k=rows[r].cells[c].getAttribute('data-sort');
      if(k===null||k===''){v=null;break;} v.push(parseFloat(k));}
    if(!v)continue; var s=v.slice().sort(function(a,b){return a-b;});
    if(s[0]===s[s.length-1]||JSON.stringify(s)===JSON.stringify(v))continue;
    if(!best||rows.length>best.n)best={table:ti,col:c,n:rows.length};
    break;}
});
return best;})()"""


def _column(table: int, col: int) -> str:
    return (f"Array.from(document.querySelectorAll('table.sortable')[{table}].tBodies[0].rows)"
            f".map(function(r){{return [r.cells[0].textContent, parseFloat(r.cells[{col}]"
            ".getAttribute('data-sort'))];})")


def check_page(html_path: pathlib.Path, expected_images: int, screenshot: pathlib.Path | None,
               binary: str | None = None, width: int = 1100, height: int = 900) -> dict:
    """Open ``html_path`` in headless Chromium and run the checks; returns what was found.

    The result's ``failures`` list is empty when every check passed.
    """
    binary = binary or find_chromium()
    if binary is None:
        raise FileNotFoundError("no Chromium binary: apt-get install chromium (or set CHROMIUM)")
    html_path = pathlib.Path(html_path).resolve()
    profile = tempfile.mkdtemp(prefix="robustjax-chromium-")
    proc, port = _launch(binary, profile)
    out: dict = {"browser": None, "failures": []}
    try:
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list",
                                                    timeout=30).read())
        page = next(t for t in targets if t["type"] == "page")
        cdp = DevTools(WebSocket(page["webSocketDebuggerUrl"]))
        out["browser"] = cdp("Browser.getVersion")["product"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            cdp(f"{domain}.enable")
        cdp("Emulation.setDeviceMetricsOverride", width=width, height=height,
            deviceScaleFactor=1, mobile=False)
        start = time.perf_counter()
        cdp("Page.navigate", url=html_path.as_uri())
        cdp.wait_for("Page.loadEventFired")
        out["load_seconds"] = round(time.perf_counter() - start, 3)

        decoded = cdp.js("Promise.all(Array.from(document.images).map(function(i){"
                         "return i.decode().then(function(){return true;},"
                         "function(){return false;});}))")
        images = cdp.js("Array.from(document.images).map(function(i){return {alt:i.alt,"
                        "w:i.naturalWidth,h:i.naturalHeight,complete:i.complete};})")
        out["images"] = images
        bad = [im["alt"] for im, ok in zip(images, decoded)
               if not ok or not im["complete"] or im["w"] <= 0 or im["h"] <= 0]
        if bad:
            out["failures"].append(f"images that did not render: {bad}")
        if len(images) != expected_images:
            out["failures"].append(f"{len(images)} <img> on the page, expected {expected_images}")

        links = cdp.js("Array.from(document.querySelectorAll('nav.toc a')).map(function(a){"
                       "var id=a.getAttribute('href').slice(1);"
                       "return [id, document.getElementById(id)!==null];})")
        out["toc_links"] = len(links)
        out["toc_resolved"] = sum(ok for _, ok in links)
        broken = [i for i, ok in links if not ok]
        if not links:
            out["failures"].append("no table-of-contents links")
        if broken:
            out["failures"].append(f"table-of-contents links without a target: {broken}")
        good = [i for i, ok in links if ok]
        if good:
            target = good[len(good) // 2]
            cdp.click(f"document.querySelector('nav.toc a[href=\"#{target}\"]')")
            time.sleep(0.2)
            where = cdp.js(f"[location.hash, window.scrollY, Math.round(document.getElementById("
                           f"'{target}').getBoundingClientRect().top), Math.ceil(window.scrollY"
                           "+window.innerHeight)>=document.documentElement.scrollHeight-1]")
            out["toc_click"] = {"target": target, "hash": where[0], "scrollY": where[1],
                                "target_top_px": where[2], "at_page_end": where[3]}
            # the target is scrolled to the top, or as far as the page goes
            if where[0] != f"#{target}" or where[1] <= 0 or (abs(where[2]) > 5 and not where[3]):
                out["failures"].append(f"clicking the contents link to #{target} did not scroll "
                                       f"there (hash {where[0]!r}, top {where[2]} px)")

        pick = cdp.js(_PICK_TABLE)
        if pick is None:
            out["failures"].append("no sortable table with an unsorted numeric column")
        else:
            t, c = pick["table"], pick["col"]
            header = (f"document.querySelectorAll('table.sortable')[{t}]"
                      f".tHead.rows[0].cells[{c}]")
            before = cdp.js(_column(t, c))
            cdp.click(header)
            asc = cdp.js(_column(t, c))
            cdp.click(header)
            desc = cdp.js(_column(t, c))
            out["sort"] = {"table": t, "column": cdp.js(f"{header}.textContent"),
                           "rows": len(before), "before": [r[0] for r in before],
                           "ascending": [r[0] for r in asc],
                           "aria_sort": cdp.js(f"{header}.getAttribute('aria-sort')")}
            if [r[0] for r in asc] == [r[0] for r in before]:
                out["failures"].append("clicking a header did not change the row order")
            if [v for _, v in asc] != sorted(v for _, v in before):
                out["failures"].append("first click did not sort the column ascending")
            if [v for _, v in desc] != sorted((v for _, v in before), reverse=True):
                out["failures"].append("second click did not sort the column descending")

        time.sleep(0.2)  # let late console messages arrive
        cdp.js("1")
        errors = []
        for ev in cdp.events:
            m, p = ev["method"], ev.get("params", {})
            if m == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                errors.append(d.get("exception", {}).get("description") or d.get("text", ""))
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                errors.append(" ".join(str(a.get("value", a.get("description", "")))
                                       for a in p.get("args", [])))
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                errors.append(p["entry"].get("text", ""))
        out["console_errors"] = errors
        if errors:
            out["failures"].append(f"console errors: {errors}")
        external = sorted({ev["params"]["request"]["url"][:80] for ev in cdp.events
                           if ev["method"] == "Network.requestWillBeSent"
                           and not ev["params"]["request"]["url"].startswith(("file:", "data:"))})
        out["external_requests"] = external
        if external:
            out["failures"].append(f"the page fetched from outside the file: {external}")

        if screenshot is not None:
            cdp.js("window.scrollTo(0,0)")
            shot = cdp("Page.captureScreenshot", format="png",
                       clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 0.7})
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
            out["screenshot"] = str(screenshot)
        cdp.ws.close()
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
    return out


def expected_figures(report: dict, report_dir: pathlib.Path) -> int:
    """How many figures ``write_html`` embeds: the listed ones that exist as image files."""
    from robustjax.report.html import FIGURE_TYPES

    return sum((report_dir / f).is_file() and pathlib.Path(f).suffix.lower() in FIGURE_TYPES
               for sec in report["sections"].values() for f in sec.get("figures", ()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report_dir", nargs="?", type=pathlib.Path)
    parser.add_argument("--screenshot", type=pathlib.Path,
                        default=pathlib.Path(__file__).parent / "results" / "report_html.png")
    parser.add_argument("--md", type=pathlib.Path, default=None,
                        help="also write the findings as Markdown here")
    args = parser.parse_args(argv)
    from robustjax.report.html import write_html

    report_dir = args.report_dir
    if report_dir is None:
        from robustjax.report.run import run_report

        report_dir = pathlib.Path(tempfile.mkdtemp(prefix="robustjax-report-")) / "report"
        report = run_report(report_dir, quick=True, log=lambda *a: print(*a, file=sys.stderr))
    else:
        report = json.loads((report_dir / "report.json").read_text())
    page = write_html(report, report_dir)
    found = check_page(page, expected_figures(report, report_dir), args.screenshot)
    found["html_bytes"] = page.stat().st_size
    print(json.dumps(found, indent=2))
    if args.md:
        lines = ["# report.html in headless Chromium", "",
                 f"`python benchmarks/report_html_browser_check.py` on a `robustjax report "
                 f"--quick` folder ({len(report['sections'])} sections), {found['browser']}.", "",
                 "| check | result |", "|---|---|",
                 f"| page size | {found['html_bytes'] / 1e3:.0f} kB, self-contained |",
                 f"| load | {found['load_seconds']} s |",
                 f"| console errors | {len(found['console_errors'])} |",
                 f"| external requests | {len(found['external_requests'])} |",
                 "| images rendered (naturalWidth > 0) | " + ", ".join(
                     f"{im['w']}x{im['h']}" for im in found["images"]) + " |",
                 f"| contents links resolving | {found['toc_resolved']} of {found['toc_links']} "
                 f"(click -> `{found.get('toc_click', {}).get('hash')}`, target at top "
                 f"{found.get('toc_click', {}).get('target_top_px')} px) |"]
        if "sort" in found:
            s = found["sort"]
            lines.append(f"| sort by `{s['column']}` ({s['rows']} rows) | "
                         f"{' / '.join(s['before'])} -> {' / '.join(s['ascending'])} |")
        lines += [f"| failures | {len(found['failures'])} |", "",
                  f"Screenshot: `{args.screenshot.name}`.", ""]
        args.md.write_text("\n".join(lines))
    if found["failures"]:
        print("FAILED:\n  " + "\n  ".join(found["failures"]), file=sys.stderr)
        return 1
    print("all browser checks passed", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
