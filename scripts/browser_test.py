#!/usr/bin/env python3
"""The web page in headless Chromium, against a running `tandem serve` (scripts/browser-test.sh
starts one and runs this).

    browser_test.py --base http://127.0.0.1:PORT --shared ../shared --docs docs [--only NAME]...

Each check is a function taking the shared `Ctx`; TESTS lists them in the order they run (a
later one may rely on an earlier one's page state only where it says so). To check another
path, add a function and a line in TESTS. Every wait is bounded; any failure exits 1 with what
was expected and what was seen, and leaves a screenshot in target/.
"""

import argparse
import csv
import json
import signal
import sys
import time
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

REPO = Path(__file__).resolve().parent.parent
FAST_MODEL = "mobilenet_v2.onnx"
ACCURATE_MODEL = "efficientnet_lite2.onnx"
DESKTOP = (1280, 800)
PHONE = (360, 740)
# A debug build's accurate model on a busy 2-core machine: generous, but bounded.
REFINED_WAIT_S = 90
SHORT_WAIT_S = 20


class Failure(Exception):
    pass


def check(condition, message):
    if not condition:
        raise Failure(message)


class Ctx:
    def __init__(self, args):
        self.base = args.base.rstrip("/")
        self.shared = Path(args.shared).resolve()
        self.docs = Path(args.docs).resolve()
        self.images = self.shared / "images"
        self.classes = (self.shared / "models" / "imagenet_classes.txt").read_text().splitlines()
        self.golden = {}
        with open(self.images / "golden.csv", newline="") as f:
            for row in csv.DictReader(f):
                self.golden.setdefault(row["file"], {})[row["model"]] = int(row["top1"])
        self.driver = None

    def screenshot(self, path):
        path.parent.mkdir(parents=True, exist_ok=True)
        # Selenium reports a file it cannot write by returning False, not by raising.
        check(self.driver.get_screenshot_as_file(str(path)), f"could not write the screenshot {path}")

    def start_browser(self):
        options = Options()
        options.binary_location = "/usr/bin/chromium"
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                    "--no-first-run", "--disable-extensions", "--force-device-scale-factor=1",
                    f"--window-size={DESKTOP[0]},{DESKTOP[1]}"):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        # Debian's driver, so Selenium Manager never tries to download one.
        self.driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        self.driver.set_page_load_timeout(SHORT_WAIT_S)
        self.driver.set_script_timeout(SHORT_WAIT_S)

    def viewport(self, size, mobile=False):
        width, height = size
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                    {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})

    def open(self, path="/"):
        self.driver.get(self.base + path)

    def wait(self, what, predicate, timeout=SHORT_WAIT_S):
        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.05).until(lambda d: predicate())
        except TimeoutException:
            raise Failure(f"timed out after {timeout} s waiting for {what}") from None

    def js(self, script, *args):
        return self.driver.execute_script(script, *args)

    def el(self, element_id):
        return self.driver.find_element(By.ID, element_id)

    def upload(self, path, input_id="picker"):
        self.el(input_id).send_keys(str(path))

    def label_of(self, index):
        return self.classes[index]

    def console_errors(self):
        """SEVERE console entries since the last call (a CSP violation shows here)."""
        return [e["message"] for e in self.driver.get_log("browser") if e.get("level") == "SEVERE"]

    def no_horizontal_scroll(self, when):
        width, inner = self.js("return [document.scrollingElement.scrollWidth, window.innerWidth]")
        check(width <= inner, f"{when}: the page scrolls sideways (scrollWidth {width} > innerWidth {inner})")
        print(f"  ok: {when}: no horizontal scroll (scrollWidth {width} <= innerWidth {inner})")


def primary(label):
    return label.split(",")[0].strip()


# Records every answer the result panel shows, as it is shown, so that a fast answer replaced
# quickly by the refined one is still seen.
RECORD_ANSWERS = """
window.__answers = [];
const result = document.getElementById('result');
const label = document.getElementById('label');
new MutationObserver(() => {
  const last = window.__answers[window.__answers.length - 1];
  const now = { tier: result.dataset.tier || '', index: result.dataset.classIndex || '',
                label: label.dataset.label || '', text: label.textContent,
                tierText: document.getElementById('tier').textContent,
                visible: !result.hidden && label.getClientRects().length > 0 };
  if (!now.tier || (last && last.tier === now.tier && last.index === now.index)) return;
  window.__answers.push(now);
}).observe(result, { attributes: true, childList: true, subtree: true, characterData: true });
"""


def pick_photo(ctx):
    """A photo whose two tiers disagree in golden.csv (the more telling case), else the first."""
    for name in sorted(ctx.golden):
        tops = ctx.golden[name]
        if FAST_MODEL in tops and ACCURATE_MODEL in tops and tops[FAST_MODEL] != tops[ACCURATE_MODEL]:
            return name
    return sorted(ctx.golden)[0]


def classify_and_check(ctx, photo):
    """Uploads `photo` and checks the fast answer, then the refined one, against golden.csv."""
    tops = ctx.golden[photo]
    fast, accurate = tops[FAST_MODEL], tops[ACCURATE_MODEL]
    ctx.js(RECORD_ANSWERS)
    ctx.upload(ctx.images / photo)
    ctx.wait("the preview", lambda: ctx.js(
        "const p = document.getElementById('preview'); return !p.hidden && p.complete && p.naturalWidth > 0"))
    print(f"  ok: {photo}: the preview shows")

    first = ctx.wait("the fast answer", lambda: (ctx.js("return window.__answers") or [None])[0])
    check(first["tier"] == "fast", f"{photo}: the first answer shown is {first['tier']!r}, not the fast one")
    check(first["visible"], f"{photo}: the fast answer was not visible")
    check(first["tierText"].strip().lower() == "fast", f"{photo}: the fast answer is marked {first['tierText']!r}")
    check(int(first["index"]) == fast and first["label"] == ctx.label_of(fast),
          f"{photo}: fast answer {first['index']} {first['label']!r}, golden.csv says {fast} {ctx.label_of(fast)!r}")
    check(first["text"] == primary(ctx.label_of(fast)), f"{photo}: the fast label reads {first['text']!r}")
    print(f"  ok: {photo}: fast answer shown, marked fast: {first['text']!r} ({fast}, = golden.csv {FAST_MODEL})")

    ctx.wait("the refined answer", lambda: ctx.el("result").get_attribute("data-tier") == "refined"
             or ctx.el("error").is_displayed(), REFINED_WAIT_S)
    check(not ctx.el("error").is_displayed(),
          f"{photo}: an error was shown instead of the refined answer: {ctx.el('error').text!r}")
    result = ctx.el("result")
    index = int(result.get_attribute("data-class-index"))
    label = ctx.el("label")
    check(result.is_displayed() and label.is_displayed(), f"{photo}: the refined answer is not visible")
    check(ctx.el("tier").text.strip().lower() == "refined", f"{photo}: the answer is marked {ctx.el('tier').text!r}")
    check(index == accurate and label.get_attribute("data-label") == ctx.label_of(accurate),
          f"{photo}: refined answer {index} {label.get_attribute('data-label')!r}, "
          f"golden.csv says {accurate} {ctx.label_of(accurate)!r}")
    check(label.text == primary(ctx.label_of(accurate)), f"{photo}: the refined label reads {label.text!r}")
    print(f"  ok: {photo}: refined answer replaced it, marked refined: {label.text!r} ({accurate}, "
          f"= golden.csv {ACCURATE_MODEL})")

    agreement = ctx.el("agreement")
    agrees = fast == accurate
    check(agreement.is_displayed(), f"{photo}: no agreement shown")
    check(agreement.get_attribute("data-agrees") == str(agrees).lower(),
          f"{photo}: agreement shown as {agreement.get_attribute('data-agrees')}, expected {agrees}")
    if not agrees:
        check(primary(ctx.label_of(fast)) in agreement.text,
              f"{photo}: the disagreement does not name the fast answer: {agreement.text!r}")
    print(f"  ok: {photo}: agreement shown as {agrees}: {agreement.text!r}")

    bars = ctx.driver.find_elements(By.CSS_SELECTOR, "#bars .bar")
    check(len(bars) >= 3, f"{photo}: {len(bars)} bars of top classes")
    check(primary(ctx.label_of(accurate)) in bars[0].text, f"{photo}: the first bar is {bars[0].text!r}")
    times = {cell: ctx.el(cell).text for cell in ("ms-fast-model", "ms-fast-client", "ms-refined-model", "ms-refined-client")}
    check(all(t.endswith(" ms") or t.endswith(" s") for t in times.values()), f"{photo}: latencies shown: {times}")
    print(f"  ok: {photo}: {len(bars)} bars; latencies {times}")
    errors = ctx.console_errors()
    check(not errors, f"{photo}: errors in the browser console: {errors}")


# --- The checks, in order.

def test_page_headers(ctx):
    with urllib.request.urlopen(ctx.base + "/", timeout=SHORT_WAIT_S) as response:
        headers = response.headers
        body = response.read().decode()
    check(headers.get("Content-Type", "").startswith("text/html"), f"Content-Type {headers.get('Content-Type')!r}")
    check(headers.get("Cache-Control") == "no-cache", f"Cache-Control {headers.get('Cache-Control')!r}")
    csp = headers.get("Content-Security-Policy", "")
    check("default-src 'none'" in csp and "connect-src 'self'" in csp and "unsafe-inline" not in csp, f"CSP {csp!r}")
    check("<title>Tandem</title>" in body, "the page has no Tandem title")
    print(f"  ok: GET / is text/html, no-cache, CSP {csp[:60]}...")


def test_desktop_refined(ctx):
    ctx.viewport(DESKTOP)
    ctx.open("/")
    ctx.wait("the page", lambda: ctx.el("picker") is not None and ctx.js("return document.readyState") == "complete")
    check(ctx.el("camera").get_attribute("capture") == "environment", "the camera input has no capture=environment")
    check(not ctx.console_errors(), "errors in the console on load")
    photo = pick_photo(ctx)
    classify_and_check(ctx, photo)
    time.sleep(1.3)  # The refined answer's glow fades before the picture is taken.
    ctx.screenshot(ctx.docs / "page-desktop.png")
    print(f"  ok: screenshot {ctx.docs / 'page-desktop.png'} ({DESKTOP[0]}x{DESKTOP[1]})")


def test_bad_inputs(ctx):
    bad = sorted((ctx.images / "bad_inputs").iterdir())
    check(bad, "no files in bad_inputs/")
    for path in bad:
        ctx.js("const e = document.getElementById('error'); e.hidden = true; e.dataset.status = '';")
        ctx.upload(path)
        ctx.wait(f"an error for {path.name}", lambda: ctx.el("error").is_displayed()
                 and ctx.el("error").get_attribute("data-status") not in ("", None))
        status = int(ctx.el("error").get_attribute("data-status"))
        title, detail = ctx.el("error-title").text, ctx.el("error-detail").text
        check(status in (400, 415), f"{path.name}: HTTP {status} shown, expected 400 or 415")
        check("not an image" in title and detail, f"{path.name}: the message reads {title!r} / {detail!r}")
        check(not ctx.el("result").is_displayed(), f"{path.name}: an answer is still shown beside the error")
        print(f"  ok: {path.name}: error shown: {title!r} / {detail!r}")
    # The failed POSTs are logged by the browser as console errors: expected here, so drained.
    ctx.console_errors()


def test_phone(ctx):
    ctx.viewport(PHONE, mobile=True)
    ctx.open("/")
    ctx.wait("the page", lambda: ctx.js("return document.readyState") == "complete")
    ctx.no_horizontal_scroll("phone, before an upload")
    photo = "sample_01.jpg" if "sample_01.jpg" in ctx.golden else sorted(ctx.golden)[0]
    classify_and_check(ctx, photo)
    time.sleep(1.3)
    ctx.no_horizontal_scroll("phone, with the refined answer")
    ctx.screenshot(ctx.docs / "page-phone.png")
    print(f"  ok: screenshot {ctx.docs / 'page-phone.png'} ({PHONE[0]}x{PHONE[1]})")


# `window.fetch` replaced from WebDriver (which CSP does not govern), for the answers a healthy
# server does not give on demand. `kind`: "network" (fetch rejects), "http" (an error status and
# JSON body), "stream" (an event stream sent as [delay_ms, text] chunks). Requests are recorded.
STUB_FETCH = """
const [kind, arg] = arguments;
window.__requests = [];
window.fetch = async (url, init) => {
  window.__requests.push({ url: String(url), headers: init.headers });
  if (kind === 'network') throw new TypeError('Failed to fetch');
  if (kind === 'http') {
    return new Response(JSON.stringify({ error: { code: arg.code, message: arg.message } }),
                        { status: arg.status, headers: { 'Content-Type': 'application/json' } });
  }
  const encoder = new TextEncoder();
  const body = new ReadableStream({ async start(controller) {
    for (const [delay, text] of arg) {
      await new Promise((resolve) => setTimeout(resolve, delay));
      controller.enqueue(encoder.encode(text));
    }
    controller.close();
  } });
  return new Response(body, { status: 200, headers: { 'Content-Type': 'text/event-stream' } });
};
"""


def answer_body(label, index, score, model="mobilenet_v2.onnx"):
    top = [{"label": label, "class_index": index, "score": score},
           {"label": "other", "class_index": index + 1, "score": round(1 - score, 4)}]
    return {"model": model, "label": label, "class_index": index, "score": score, "top_k": top, "inference_ms": 5.0}


JOB_ID = "6f1c4a52-9c53-4a7e-8f0e-3f2b1e0c9d11"
FAST = {"job_id": JOB_ID, "result_sync": "tabby, tabby cat", "sync": answer_body("tabby, tabby cat", 281, 0.61),
        "status_url": f"/job/{JOB_ID}"}


def job_body(status, **extra):
    return {"job_id": JOB_ID, "prediction": "", "status": status, "sync": FAST["sync"], "attempts": 1,
            "created_at": "2026-01-01T00:00:00.000Z", **extra}


def sse(event, body, event_id=None):
    head = f"event: {event}\n" + (f"id: {event_id}\n" if event_id else "")
    return head + f"data: {json.dumps(body)}\n\n"


def test_failure_paths(ctx):
    """Every way an answer can fail is shown, never silence (fetch stubbed; the real page)."""
    ctx.viewport(DESKTOP)
    photo = ctx.images / "sample_01.jpg"
    fast_then = [[0, sse("fast", FAST)], [0, sse("queued", job_body("queued"), "queued-0")]]
    completed = job_body("completed", prediction="tiger cat", result=answer_body("tiger cat", 282, 0.7,
                         "efficientnet_lite2.onnx"), agrees_with_sync=False, inference_ms=80.0)
    # The completed event with CRLF line ends, a comment, and cut into 7-byte chunks.
    crlf = (": keep-alive\r\n\r\n" + sse("completed", completed, "completed-1")).replace("\n", "\r\n")
    chunked = fast_then + [[5, crlf[i:i + 7]] for i in range(0, len(crlf), 7)]
    cases = [
        ("HTTP 413", "http", {"status": 413, "code": "body_too_large", "message": "request body is larger than 10 bytes"},
         "error", "too large"),
        ("HTTP 415", "http", {"status": 415, "code": "unsupported_media_type", "message": "unsupported content type"},
         "error", "not an image"),
        ("HTTP 429", "http", {"status": 429, "code": "overloaded", "message": "too many requests in flight"},
         "error", "busy"),
        ("HTTP 401", "http", {"status": 401, "code": "unauthorized", "message": "missing or wrong API key"},
         "error", "API key"),
        ("network error", "network", None, "error", "Network error"),
        ("failed event", "stream", fast_then + [[50, sse("failed", job_body("failed", error="the model crashed"),
                                                        "failed-1")]], "error", "failed"),
        ("canceled event", "stream", fast_then + [[50, sse("canceled", job_body("canceled"), "canceled-1")]],
         "error", "canceled"),
        ("error event", "stream", [[0, sse("fast", FAST)], [50, sse("error", {"error": {
            "code": "too_many_watchers", "message": "too many clients waiting for jobs (1)"}})]], "error", "followed"),
        ("async_error", "stream", [[0, sse("fast", {**FAST, "job_id": None, "status_url": None,
                                                    "async_error": "the job queue is full (1000 jobs)"})]],
         "notice", "queue is full"),
        ("stream cut short", "stream", fast_then + [[1500, ""]], "notice", "ended before"),
        ("CRLF, chunked", "stream", chunked, "refined", "tiger cat"),
    ]
    ctx.open("/")
    for name, kind, arg, where, expected in cases:
        ctx.js(STUB_FETCH, kind, arg)
        ctx.js("for (const id of ['error', 'notice', 'result']) document.getElementById(id).hidden = true;")
        ctx.upload(photo)
        if name == "stream cut short":
            # While the job is pending the fast answer shows with its state.
            ctx.wait("the queued state", lambda: ctx.el("result").get_attribute("data-state") == "queued"
                     and ctx.el("state").is_displayed())
            check(ctx.el("tier").text.strip().lower() == "fast", f"{name}: marked {ctx.el('tier').text!r}")
            check("Queued" in ctx.el("state").text, f"{name}: the state reads {ctx.el('state').text!r}")
            # For a person to look at; the stubbed answer does not belong in docs/.
            ctx.screenshot(REPO / "target" / "page-queued.png")
            print(f"  ok: {name}: fast answer and {ctx.el('state').text!r} shown while waiting")
        if where == "refined":
            ctx.wait(f"{name}: the refined answer", lambda: ctx.el("result").get_attribute("data-tier") == "refined")
            text = ctx.el("label").text
            check(text == expected, f"{name}: refined label {text!r}")
            check(ctx.el("agreement").get_attribute("data-agrees") == "false", f"{name}: agreement not shown as false")
            print(f"  ok: {name}: parsed, refined {text!r}")
            continue
        target = "error" if where == "error" else "notice"
        ctx.wait(f"{name}: a visible {target}", lambda: ctx.el(target).is_displayed())
        text = ctx.el(target).text
        check(expected.lower() in text.lower(), f"{name}: the {target} reads {text!r}, expected {expected!r} in it")
        if kind == "stream":
            check(ctx.el("result").is_displayed() and ctx.el("label").text == "tabby",
                  f"{name}: the fast answer is not kept beside the {target}")
        print(f"  ok: {name}: {target} shown: {' / '.join(text.splitlines())!r}")
        if name == "HTTP 429":
            check(ctx.el("retry").is_displayed(), "HTTP 429: no Try again button")
        if name == "HTTP 401":
            check(ctx.el("key-panel").get_attribute("open") is not None, "HTTP 401: the API key field was not opened")
            key = ctx.el("api-key")
            key.clear()
            key.send_keys("s3cret-key")
            ctx.js(STUB_FETCH, "stream", [[0, sse("fast", FAST)]])
            ctx.upload(photo)
            ctx.wait("a request with the key", lambda: ctx.js("return window.__requests.length") > 0)
            sent = ctx.js("return window.__requests[0].headers")
            check(sent.get("Authorization") == "Bearer s3cret-key", f"the key was not sent: headers {sent}")
            check(sent.get("Accept") == "text/event-stream" and sent.get("Content-Type") == "image/jpeg",
                  f"headers sent: {sent}")
            ctx.open("/")
            check(ctx.el("api-key").get_attribute("value") == "s3cret-key", "the key was not kept in localStorage")
            ctx.el("key-panel").find_element(By.TAG_NAME, "summary").click()
            ctx.el("key-clear").click()
            check(ctx.js("return localStorage.getItem('tandem.apiKey')") is None, "Forget did not remove the key")
            print("  ok: API key: sent as Authorization: Bearer, kept across a reload, forgotten on Forget")
    check(not ctx.console_errors(), f"errors in the console: {ctx.console_errors()}")


def test_swagger_ui(ctx):
    """`/docs` renders the API document in Swagger UI from files tandem serves: nothing else loaded."""
    ctx.viewport(DESKTOP)
    ctx.console_errors()
    ctx.open("/docs")
    ctx.wait("Swagger UI's title", lambda: "Tandem" in ctx.js(
        "const t = document.querySelector('.swagger-ui .info .title'); return t ? t.textContent : ''"))
    operations = ctx.wait("the operations", lambda: ctx.js("return document.querySelectorAll('.opblock').length") or None)
    check(operations >= 12, f"Swagger UI shows {operations} operations, expected every route's")
    loaded = ctx.js("return performance.getEntriesByType('resource').map(e => e.name)")
    foreign = [url for url in loaded if not url.startswith(ctx.base)]
    check(not foreign, f"/docs loaded from elsewhere: {foreign}")
    check(any(url.endswith("/openapi.json") for url in loaded), f"/docs did not read /openapi.json: {loaded}")
    check(not ctx.console_errors(), f"errors in the console on /docs: {ctx.console_errors()}")
    print(f"  ok: /docs renders {operations} operations from {len(loaded)} files, all from tandem itself")


TESTS = [
    ("headers", test_page_headers),
    ("desktop", test_desktop_refined),
    ("bad-inputs", test_bad_inputs),
    ("phone", test_phone),
    ("failure-paths", test_failure_paths),
    ("swagger-ui", test_swagger_ui),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the running service, e.g. http://127.0.0.1:8000")
    parser.add_argument("--shared", required=True, help="the directory with models/ and images/")
    parser.add_argument("--docs", required=True, help="where the screenshots go")
    parser.add_argument("--only", action="append", choices=[name for name, _ in TESTS], help="run only these")
    args = parser.parse_args()
    # A SIGTERM (the caller's timeout) unwinds through `finally`, so the browser is quit.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("browser_test: FAIL: stopped by SIGTERM (timed out?)"))
    ctx = Ctx(args)
    chosen = [(n, f) for n, f in TESTS if not args.only or n in args.only]
    started = time.monotonic()
    try:
        ctx.start_browser()
    except WebDriverException as err:
        print(f"browser_test: FAIL: cannot start headless Chromium: {err.msg}", file=sys.stderr)
        return 1
    try:
        for name, test in chosen:
            print(f"{name}:")
            try:
                test(ctx)
            except (Failure, WebDriverException) as err:
                message = err.msg if isinstance(err, WebDriverException) else str(err)
                shot = REPO / "target" / f"browser-failure-{name}.png"
                try:
                    ctx.driver.get_screenshot_as_file(str(shot))
                    print(f"  (screenshot of the failure: {shot})", file=sys.stderr)
                except WebDriverException:
                    pass
                print(f"browser_test: FAIL in {name}: {message}", file=sys.stderr)
                return 1
    finally:
        ctx.driver.quit()
    print(f"browser_test: took {time.monotonic() - started:.1f} s")
    print(f"browser_test: {len(chosen)} passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
