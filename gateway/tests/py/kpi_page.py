"""Loads the gateway's KPI page in a real browser (Debian's chromium, driven by
Playwright) with a client certificate, checks the charts render and that every figure on
the page is the one the JSON API gives. Without a certificate the page must not load.

usage: kpi_page.py URL CERT KEY EXPECTED_JSON
"""
import json
import os
import sys
from urllib.parse import urlsplit

from playwright.sync_api import Error, sync_playwright

url, cert, key, expected_file = sys.argv[1:5]
expected = json.load(open(expected_file))
parts = urlsplit(url)
origin = f"{parts.scheme}://{parts.netloc}"


def same(text, value):
    if value is None or value == "suppressed":
        return text == "suppressed"
    return float(text) == float(value)


with sync_playwright() as p:
    browser = p.chromium.launch(
        executable_path=os.environ.get("HBS_CHROMIUM", "/usr/bin/chromium"),
        args=["--no-sandbox"],
    )
    # The platform CA is not the browser's: its errors are ignored, the client
    # certificate is what the gateway checks.
    ctx = browser.new_context(
        ignore_https_errors=True,
        client_certificates=[{"origin": origin, "certPath": cert, "keyPath": key}],
    )
    page = ctx.new_page()
    resp = page.goto(url)
    assert resp is not None and resp.status == 200, resp and resp.status
    assert "key performance indicators" in page.title()
    # Charts: every bar is an SVG rectangle laid out by the browser.
    bars = page.locator("svg.chart rect.bar")
    n = bars.count()
    assert n >= 5, f"only {n} bars"
    for i in range(n):
        box = bars.nth(i).bounding_box()
        assert box is not None and box["height"] > 0, f"bar {i} not rendered"
    widths = [bars.nth(i).bounding_box()["width"] for i in range(n)]
    assert any(w > 0 for w in widths), "every bar is empty"
    # Nothing was fetched from anywhere else.
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.reload()
    assert all(r.startswith(origin) for r in requests), requests
    # The figures are the JSON's.
    for ind in expected["indicators"]:
        cell = page.locator(f'td.figure[data-key="{ind["key"]}"]')
        text = cell.inner_text().strip()
        assert same(text, ind["value"]), (ind["key"], text, ind["value"])
    for vendor, value in expected["vendors"].items():
        text = page.locator(f'td.figure[data-key="vendor:{vendor}"]').inner_text().strip()
        assert same(text, value), (vendor, text, value)
    ctx.close()
    # No certificate: the handshake fails, nothing is shown.
    bare = browser.new_context(ignore_https_errors=True)
    try:
        r = bare.new_page().goto(url)
        raise AssertionError(f"loaded without a certificate: {r and r.status}")
    except Error:
        pass
    browser.close()
print(f"ok: {n} bars, {len(expected['indicators'])} figures match")
