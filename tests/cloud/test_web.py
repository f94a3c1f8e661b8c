"""The web page in headless Chromium (Debian's, driven by Playwright) against a real
cloud, collector and edge: sign in, the OOM timeline and a query chart drawn with data,
the node list, the last queries, and nothing loaded from another origin."""

from __future__ import annotations

import io
import re
from typing import Any

from tests.helpers.services import Stack


def coloured_pixels(png: bytes) -> int:
    """Pixels of a screenshot that are neither background white nor the grey of grid and labels."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    count = 0
    for r, g, b in img.get_flattened_data():  # getdata() is deprecated (gone in Pillow 14)
        if max(r, g, b) - min(r, g, b) > 60:  # saturated: a bar, not white, black or grey
            count += 1
    return count


def test_sign_in_timeline_query_chart_and_nodes(stack: Stack, page: Any) -> None:
    requests: list[str] = []
    page.on("request", lambda req: requests.append(req.url))
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    page.goto(stack.url + "/")
    page.fill("#apikey", "pxo_00000000_" + "x" * 43)
    page.click("#signin button[type=submit]")
    page.wait_for_function("document.getElementById('signin-error').textContent.length > 0")
    assert "invalid or revoked" in page.text_content("#signin-error")

    page.fill("#apikey", stack.key)
    page.click("#signin button[type=submit]")
    page.wait_for_selector("#app-view:not([hidden])")
    assert page.text_content("#who") == "admin (admin)"
    assert page.evaluate("sessionStorage.getItem('pxo.key')") == stack.key

    # the OOM timeline: the seeded two kills, drawn as bars
    page.wait_for_function("document.getElementById('timeline').dataset.rendered !== undefined || "
                           "document.getElementById('timeline-error').textContent", timeout=20_000)
    assert page.text_content("#timeline-error") == ""
    assert page.evaluate("document.getElementById('timeline').dataset.rendered") == "2"
    assert page.text_content("#timeline-total").startswith("2 kills")
    assert coloured_pixels(page.locator("#timeline").screenshot()) > 200

    # the node list with probe status
    page.wait_for_selector("#nodes tr:nth-child(2)")
    assert page.locator("#nodes tr:nth-child(2) td").nth(0).text_content() == "node-1"
    assert page.locator("#nodes tr:nth-child(2) td").nth(1).text_content() == "live"
    started = page.locator("#nodes tr:nth-child(2) td").nth(2).text_content() or ""
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", started), started  # when the edge's process started

    # a time-bucketed SQL answer: table and chart
    page.fill("#query", "SELECT time_bucket(INTERVAL '1 minute', time) AS t, comm, count(*) AS kills "
                        "FROM oom_events GROUP BY ALL ORDER BY t")
    page.check("#sql")
    page.click("#run")
    page.wait_for_selector("#answer tr:nth-child(3)")
    assert [th.text_content() for th in page.locator("#answer th").all()] == ["t", "comm", "kills"]
    assert page.is_visible("#answer-chart")
    pixels = page.evaluate("""() => {
        const c = document.getElementById('answer-chart');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4) {
            const mx = Math.max(d[i], d[i+1], d[i+2]), mn = Math.min(d[i], d[i+1], d[i+2]);
            if (d[i+3] > 0 && mx - mn > 60) n++;
        }
        return n;
    }""")
    assert pixels > 200
    assert coloured_pixels(page.locator("#answer-chart").screenshot()) > 200

    # a plain pipe query: a table, no chart; both in the last queries
    page.uncheck("#sql")
    page.fill("#query", "oom_events | last 1h")
    page.click("#run")
    page.wait_for_function("document.getElementById('answer').rows.length === 3 && "
                           "document.getElementById('answer-chart').hidden")
    assert not page.is_visible("#answer-chart")
    assert page.locator("#history button").count() == 2
    assert page.locator("#history button").nth(0).text_content() == "oom_events | last 1h"

    # a bad query shows the message with a caret, and no longer the previous answer
    page.fill("#query", "oom_events | last 1x")
    page.click("#run")
    page.wait_for_function("document.getElementById('query-error').textContent.includes('^')")
    assert page.evaluate("document.getElementById('answer').rows.length") == 0
    assert not page.is_visible("#answer-chart")

    page.screenshot(path=str(stack.root / "page.png"), full_page=True)
    assert all(u.startswith(stack.url) for u in requests), [u for u in requests if not u.startswith(stack.url)]
    assert errors == []

    # signing out forgets the key
    page.click("#signout")
    assert page.evaluate("sessionStorage.getItem('pxo.key')") is None
    assert page.is_visible("#signin-view")


def test_page_is_served_with_a_strict_content_security_policy(stack: Stack) -> None:
    from tests.helpers.services import call

    for path, kind in (("/", "text/html"), ("/app.js", "text/javascript"), ("/app.css", "text/css")):
        status, _, hdrs, raw = call("GET", stack.url + path)
        assert status == 200 and hdrs["content-type"].startswith(kind) and raw
        assert "default-src 'self'" in hdrs["content-security-policy"]
    _, _, _, html = call("GET", stack.url + "/")
    assert b"http://" not in html and b"https://" not in html
