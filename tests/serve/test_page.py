#!/usr/bin/python3
"""The demo page of `carseg serve` in headless Chromium, driven over the DevTools protocol with
the standard library only (a minimal WebSocket client below).

Starts the server with the fixture models and Chromium (/usr/bin/chromium, or $CHROMIUM), opens
GET /, chooses an image through the file input (DOM.setFileInputFiles), types classes, presses
Segment, then checks: the legend lists exactly the classes of the server's JSON for the same
request, the overlay is painted (canvas pixels differ from the plain image where a class is),
hovering a legend row focuses that class's mask, the recurrence and timings are shown, the label
PNG the page would download is byte-equal to the one the API gives, and the page threw no
JavaScript error. Keeps a screenshot: $CARSEG_BUILD_DIR/serve-test/page.png.
Exit 0 = passed (or SKIPPED without Chromium / fixtures), 1 = failed.
"""
import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_serve as T  # noqa: E402  (the server and multipart helpers)

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


class WS:
    """just enough RFC 6455 for the DevTools protocol: text frames, client masking"""

    def __init__(self, url, timeout=60):
        assert url.startswith("ws://")
        hostport, _, path = url[5:].partition("/")
        host, _, port = hostport.partition(":")
        self.s = socket.create_connection((host, int(port)), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.s.sendall(("GET /%s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (path, hostport, key)).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            d = self.s.recv(1)
            if not d:
                raise RuntimeError("websocket handshake: connection closed")
            head += d
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise RuntimeError("websocket handshake refused: %r" % head[:200])
        self.buf = b""

    def send(self, text):
        data = text.encode()
        n = len(data)
        hdr = bytes([0x81])
        if n < 126:
            hdr += bytes([0x80 | n])
        elif n < 65536:
            hdr += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            hdr += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        self.s.sendall(hdr + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def _read(self, n):
        while len(self.buf) < n:
            d = self.s.recv(1 << 20)
            if not d:
                raise RuntimeError("websocket closed")
            self.buf += d
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv(self):
        msg = b""
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            if b1 & 0x80:
                self._read(4)   # servers do not mask; tolerate it anyway (unmasking skipped)
            payload = self._read(n)
            op = b0 & 0x0F
            if op == 8:
                raise RuntimeError("websocket closed by the browser")
            if op in (9, 10):
                continue
            msg += payload
            if b0 & 0x80:
                return msg.decode("utf-8", "replace")


class CDP:
    def __init__(self, ws):
        self.ws, self.id, self.events = ws, 0, []

    def call(self, method, **params):
        self.id += 1
        my = self.id
        self.ws.send(json.dumps({"id": my, "method": method, "params": params}))
        while True:
            m = json.loads(self.ws.recv())
            if m.get("id") == my:
                if "error" in m:
                    raise RuntimeError("%s: %s" % (method, m["error"]))
                return m.get("result", {})
            self.events.append(m)

    def js(self, expr, await_promise=False):
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=await_promise)
        if "exceptionDetails" in r:
            raise RuntimeError("JS %r: %s" % (expr[:80], r["exceptionDetails"].get("text")))
        return r["result"].get("value")

    def wait(self, expr, timeout=120):
        t0 = time.time()
        while time.time() - t0 < timeout:
            try:
                v = self.js(expr)
            except RuntimeError:   # e.g. evaluated before the navigation committed
                v = None
            if v:
                return v
            time.sleep(0.2)
        return None


def sam_page(cdp, img, classes):
    """a server with --sam: the page shows the CaR + SAM controls, sends sam and sam_points, and
    its legend equals the API's answer to the same CaR + SAM request"""
    S = T.Server(["--sam", T.SAMT, "--max-sam-points", "8"])
    try:
        url = "http://127.0.0.1:%d/" % S.port
        cdp.call("Page.navigate", url=url)
        T.check(cdp.wait("location.href === %s && document.readyState === 'complete' && "
                         "!document.getElementById('sam-box').classList.contains('hidden')" % json.dumps(url), 60),
                "--sam: the page shows the CaR + SAM controls")
        T.check(cdp.js("document.getElementById('sam_points').placeholder") == "8", "--sam: the default points shown")
        obj = cdp.call("Runtime.evaluate", expression="document.getElementById('file')")["result"]["objectId"]
        cdp.call("DOM.setFileInputFiles", files=[img], objectId=obj)
        cdp.wait("!document.getElementById('run').disabled && !!window.__carseg.img", 30)
        cdp.js("document.getElementById('classes').value = %s; document.getElementById('crf').checked = false; "
               "document.getElementById('sam_points').value = '4'; document.getElementById('run').click()"
               % json.dumps(classes))
        st = cdp.wait("['done', 'error'].includes(document.body.dataset.state) && document.body.dataset.state", 120)
        sam = cdp.js("window.__carseg.res && window.__carseg.res.sam")
        T.check(st == "done" and isinstance(sam, dict) and sam.get("points_per_side") == 4,
                "--sam: the page's request ran CaR + SAM with its points (%r %r)" % (st, sam))
        code, _, body = S.post("/v1/segment", [("image", ("chelsea.png", open(img, "rb").read(), "image/png")),
                                               ("classes", classes), ("crf", "0"), ("sam", "1"), ("sam_points", "4")])
        api = json.loads(body)
        rows = cdp.js("Array.from(document.querySelectorAll('#legend tr.cls')).map(tr => [+tr.dataset.label, "
                      "tr.children[1].textContent])")
        T.check(code == 200 and rows == [[c["label"], c["name"]] for c in api["classes"]],
                "--sam: the legend = the API's CaR + SAM classes (%r)" % rows)
    finally:
        rc, _ = S.stop()
        T.check(rc == 0, "--sam page server: clean exit (%r)" % rc)


def main():
    if not all(os.path.exists(p) for p in (T.GEN, T.CLS, T.VOCAB, T.PHOTOS)):
        print("test_page: SKIPPED (no ../shared fixtures)")
        return 0
    if not os.access(CHROMIUM, os.X_OK):
        print("test_page: SKIPPED (no %s: `make deps` installs Debian's chromium)" % CHROMIUM)
        return 0
    art = os.path.join(T.BUILD, "serve-test")
    os.makedirs(art, exist_ok=True)
    S = T.Server()
    prof = tempfile.mkdtemp(prefix="carseg-chromium-")
    br = None
    try:
        br = subprocess.Popen([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                               "--no-default-browser-check", "--disable-extensions", "--user-data-dir=" + prof,
                               "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
                               "--window-size=1400,1000", "about:blank"],
                              stdout=subprocess.DEVNULL, stderr=open(os.path.join(art, "chromium.log"), "w"))
        portf = os.path.join(prof, "DevToolsActivePort")
        t0 = time.time()
        while not (os.path.exists(portf) and open(portf).read().count("\n") >= 1):
            if br.poll() is not None or time.time() - t0 > 60:
                T.check(False, "chromium started (see %s/chromium.log)" % art)
                return 1
            time.sleep(0.1)
        dport = int(open(portf).read().split("\n")[0])
        targets = json.load(urllib.request.urlopen("http://127.0.0.1:%d/json/list" % dport, timeout=30))
        page = [t for t in targets if t.get("type") == "page"][0]
        cdp = CDP(WS(page["webSocketDebuggerUrl"]))
        cdp.call("Runtime.enable")
        cdp.call("Page.enable")
        cdp.call("DOM.enable")
        url = "http://127.0.0.1:%d/" % S.port
        cdp.call("Page.navigate", url=url)
        T.check(cdp.wait("location.href === %s && document.readyState === 'complete' && "
                         "document.getElementById('preset').options.length > 0" % json.dumps(url), 60),
                "the page loads and lists the presets from /v1/models")
        img = os.path.join(T.PHOTOS, "chelsea.png")
        obj = cdp.call("Runtime.evaluate", expression="document.getElementById('file')")["result"]["objectId"]
        cdp.call("DOM.setFileInputFiles", files=[img], objectId=obj)
        T.check(cdp.wait("!document.getElementById('run').disabled && !!window.__carseg.img", 30),
                "choosing a file enables Segment and shows the image")
        classes = "cat, grass, wall, sky"
        cdp.js("document.getElementById('classes').value = %s; document.getElementById('crf').checked = false;"
               % json.dumps(classes))
        cdp.js("document.getElementById('run').click()")
        st = cdp.wait("['done', 'error'].includes(document.body.dataset.state) && document.body.dataset.state", 120)
        T.check(st == "done", "the run finishes (%r: %r)" % (st, cdp.js("document.getElementById('status').textContent")))
        # the same request through the API
        data = open(img, "rb").read()
        code, _, body = S.post("/v1/segment", [("image", ("chelsea.png", data, "image/png")), ("classes", classes),
                                               ("crf", "0"), ("label_png", "1")])
        api = json.loads(body)
        rows = cdp.js("Array.from(document.querySelectorAll('#legend tr.cls')).map(tr => "
                      "[+tr.dataset.label, tr.children[1].textContent, tr.children[2].textContent, tr.children[3].textContent,"
                      " getComputedStyle(tr.querySelector('.sw')).backgroundColor])")
        want = [[c["label"], c["name"], "%.3f" % c["score"], "%.1f %%" % (100.0 * c["pixels"] / (api["width"] * api["height"]))]
                for c in api["classes"]]
        T.check(rows is not None and [r[:4] for r in rows] == want and len(want) > 0,
                "legend = the API's classes (name, score, area %%)\n  page %r\n  api  %r" % (rows, want))
        T.check(all(r[4] not in ("", "rgba(0, 0, 0, 0)") for r in rows or []), "legend colour swatches")
        painted = cdp.js("window.__carseg.painted")
        fg = sum(c["pixels"] for c in api["classes"])
        T.check(painted == fg and fg > 0, "overlay painted on every labelled pixel (%r of %r)" % (painted, fg))
        # the canvas really differs from the plain image inside a class
        diff = cdp.js("""(() => { const cv = document.getElementById('canvas'), c2 = document.createElement('canvas');
            c2.width = cv.width; c2.height = cv.height; const x2 = c2.getContext('2d'); x2.drawImage(window.__carseg.img, 0, 0);
            const a = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data, b = x2.getImageData(0, 0, cv.width, cv.height).data;
            let n = 0; for (let i = 0; i < a.length; i += 4) if (a[i] !== b[i] || a[i+1] !== b[i+1] || a[i+2] !== b[i+2]) n++; return n; })()""")
        T.check(diff and diff > 0.5 * fg, "the canvas shows the overlay (%r pixels changed)" % diff)
        # hover a legend row: that class's mask alone
        first = api["classes"][0]["label"]
        cdp.js("document.querySelector('#legend tr.cls').dispatchEvent(new MouseEvent('mouseenter'))")
        T.check(cdp.js("document.getElementById('canvas').dataset.focus") == str(first) and
                cdp.js("window.__carseg.painted") == api["classes"][0]["pixels"],
                "hovering a legend row shows that class's mask")
        cdp.js("document.querySelector('#legend tr.cls').dispatchEvent(new MouseEvent('mouseleave'))")
        n_rounds = cdp.js("document.querySelectorAll('#rounds .round').length")
        T.check(n_rounds == api["rounds"], "one recurrence row per round (%r vs %r)" % (n_rounds, api["rounds"]))
        drops = cdp.js("document.querySelectorAll('#rounds .q.drop').length")
        T.check(drops == sum(r["survived"].count(0) for r in api["recurrence"]), "dropped queries marked (%r)" % drops)
        T.check(cdp.js("document.querySelectorAll('#timings tr').length") == len(api["timings_ms"]), "timings shown")
        T.check(cdp.js("document.getElementById('sam-box').classList.contains('hidden')") is True,
                "no --sam: the page hides the CaR + SAM controls")
        png = cdp.js("btoa(String.fromCharCode.apply(null, window.__carseg.pngBytes))")
        T.check(png is not None and base64.b64decode(png) == base64.b64decode(api["label_png"]),
                "the page's label PNG download = the API's")
        # a bad request shows the server's message
        cdp.js("document.getElementById('theta').value = '5'; document.getElementById('run').click()")
        st = cdp.wait("document.body.dataset.state === 'error' && document.getElementById('status').textContent", 60)
        T.check(st and "theta" in st, "an error answer is shown (%r)" % st)
        cdp.js("document.getElementById('theta').value = ''; document.getElementById('run').click()")
        cdp.wait("document.body.dataset.state === 'done'", 120)
        shot = cdp.call("Page.captureScreenshot", format="png")["data"]
        with open(os.path.join(art, "page.png"), "wb") as f:
            f.write(base64.b64decode(shot))
        T.check(os.path.getsize(os.path.join(art, "page.png")) > 10000, "screenshot saved")
        if os.path.exists(T.SAMT):
            sam_page(cdp, img, classes)
        errs = [e for e in cdp.events if e.get("method") == "Runtime.exceptionThrown"]
        T.check(not errs, "no JavaScript exception (%r)" % errs[:1])
    finally:
        if br and br.poll() is None:
            br.terminate()
            try:
                br.wait(20)
            except subprocess.TimeoutExpired:
                br.kill()
        shutil.rmtree(prof, ignore_errors=True)
        rc, log = S.stop()
        T.check(rc == 0, "page server: clean exit (%r)" % rc)
    print("test_page: %d passed, %d failed (screenshot %s/page.png)" % (T.passed, len(T.failures), art))
    return 1 if T.failures else 0


if __name__ == "__main__":
    sys.exit(main())
