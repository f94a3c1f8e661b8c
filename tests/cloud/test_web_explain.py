"""The web page's explanation of a kill, in headless Chromium (Debian's, driven by Playwright)
against a real cloud, collector and edges: a kill picked from the list (with the keyboard) or
from a bar of the timeline (with the mouse) opens GET /api/v1/explain's answer in a panel: the
kill, the verdict, its memory before the kill as charts, who held it, what was not recorded;
a refused target is said plainly; nothing is loaded from another origin."""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

from tests.helpers.seeding import seed_explained_kill, wait_nodes
from tests.helpers.services import Service, Stack, http, start_edge

# saturated pixels of a canvas: a line or a bar, not the white background or the grey grid and labels
COLOURED = """(id) => {
    const c = typeof id === 'string' ? document.getElementById(id) : id;
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 0; i < d.length; i += 4) {
        const mx = Math.max(d[i], d[i+1], d[i+2]), mn = Math.min(d[i], d[i+1], d[i+2]);
        if (d[i+3] > 0 && mx - mn > 60) n++;
    }
    return n;
}"""


def sign_in(stack: Stack, page: Any, kills: int) -> None:
    page.goto(stack.url + "/")
    page.fill("#apikey", stack.key)
    page.click("#signin button[type=submit]")
    page.wait_for_selector("#app-view:not([hidden])")
    page.wait_for_function(f"document.querySelectorAll('#kills tr').length === {kills + 1} || "
                           "document.getElementById('kills-error').textContent", timeout=20_000)
    assert page.text_content("#kills-error") == ""
    page.wait_for_function("document.getElementById('timeline').dataset.rendered !== undefined", timeout=20_000)


def explained(page: Any) -> str:
    page.wait_for_selector("#explain[data-state]", timeout=20_000)
    return str(page.get_attribute("#explain", "data-state"))


def rest(stack: Stack, target: str) -> dict[str, Any]:
    status, body, _ = http("GET", f"{stack.url}/api/v1/explain?target={urllib.parse.quote(target)}", key=stack.key)
    assert status == 200, body
    answer: dict[str, Any] = body
    return answer


def test_a_kill_opens_its_explanation_from_the_list_and_the_timeline(stack: Stack, page: Any) -> None:
    requests: list[str] = []
    page.on("request", lambda req: requests.append(req.url))
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    sign_in(stack, page, kills=2)
    assert not page.is_visible("#explain")

    # with the keyboard: the kill is a button in the list; Enter opens, the focus goes to the panel
    button = page.get_by_role("button", name=re.compile(r"kill of proc101 \(pid 101\) on node-1"))
    button.focus()
    page.keyboard.press("Enter")
    assert explained(page) == "done"
    assert page.evaluate("document.activeElement.id") == "explain-title"
    assert page.text_content("#explain-title").startswith("OOM kill on node node-1 at ")
    facts = page.text_content("#explain-facts")
    assert "proc101 (pid 101)" in facts and "/test/101" in facts
    body = rest(stack, "101")  # what the page asked for: the seeded kill has no oom_id, so its pid
    assert [v["rule"] for v in body["verdicts"]] == ["none"]
    verdicts = [li.text_content() for li in page.locator("#explain-verdicts li").all()]
    assert verdicts == [v["sentence"] for v in body["verdicts"]]
    assert "pxo does not guess" in verdicts[0]
    assert "Not recorded" in page.text_content("#explain-body")
    missing = [li.text_content() for li in page.locator("#explain-missing li").all()]
    assert missing == body["missing"] and "no samples of /test/101" in missing[0]
    assert page.locator("#explain-body canvas").count() == 0  # a seeded kill has no series: no empty charts
    assert page.locator("#explain-body .note").count() == 0  # the pid named the kill picked
    assert page.text_content("#explain-error") == ""

    # Escape closes it, and the focus is back on the kill
    page.keyboard.press("Escape")
    assert not page.is_visible("#explain")
    assert "proc101" in page.evaluate("document.activeElement.getAttribute('aria-label')")

    # with the mouse: a bar segment of the timeline opens that pod's most recent kill in that hour
    hit = page.evaluate("document.getElementById('timeline').hits.find((h) => h.name === '/test/102')")
    size = page.evaluate("(() => { const c = document.getElementById('timeline'); "
                         "return [c.clientWidth / c.width, c.clientHeight / c.height]; })()")
    page.click("#timeline", position={"x": (hit["x"] + hit["w"] / 2) * size[0],
                                      "y": (hit["y"] + hit["h"] / 2) * size[1]})
    assert explained(page) == "done"
    assert "proc102 (pid 102)" in page.text_content("#explain-facts")
    assert page.locator("#kills tr").count() == 2  # the list shows that bar's kill only
    assert "in /test/102" in page.text_content("#kills-filter")
    page.click("#kills-all")
    assert page.locator("#kills tr").count() == 3
    page.click("#explain-close")
    assert not page.is_visible("#explain")

    # a target no edge has: the collector's 404 in the panel, in plain words, and nothing else
    page.evaluate("explainKill({node: 'node-1', time: '2026-01-01T00:00:00Z', ms: 0, comm: 'gone', pid: 999999, "
                  "oomId: null}, document.getElementById('kills-all'))")
    assert explained(page) == "error"
    error = page.text_content("#explain-error")
    assert error.startswith("Not found: no kill matches '999999'"), error
    assert page.text_content("#explain-body") == ""

    page.screenshot(path=str(stack.root / "explain.png"), full_page=True)
    assert [u for u in requests if not u.startswith(stack.url)] == []
    assert any("/api/v1/explain?target=101&window=600" in u for u in requests)
    assert errors == []


def test_the_minutes_before_are_charted_and_the_holders_listed(stack: Stack, services: list[Service],
                                                              page: Any) -> None:
    kill = seed_explained_kill(stack.root / "edge-2")
    start_edge(services, stack.root / "edge-2", stack.collector_addr, "node-2", "--sources", "[]")
    wait_nodes(stack.collector_addr, 2)
    requests: list[str] = []
    page.on("request", lambda req: requests.append(req.url))
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    sign_in(stack, page, kills=3)

    page.get_by_role("button", name=re.compile(r"kill of leaky \(pid 4242\) on node-2")).click()
    assert explained(page) == "done"
    # the kill has an oom_id: that is the target asked for
    assert any(urllib.parse.quote(kill["oom_id"], safe="") in u for u in requests if "/explain?" in u)
    body = rest(stack, kill["oom_id"])
    assert body["kill"]["oom_id"] == kill["oom_id"] and body["node"] == "node-2"
    assert "memory cgroup OOM: /explain/leaky hit its 64.0 MiB limit" in page.text_content("#explain-facts")
    verdicts = [li.text_content() for li in page.locator("#explain-verdicts li").all()]
    assert verdicts == [v["sentence"] for v in body["verdicts"]] and verdicts

    # a chart per unit, every sample drawn: the memory against its limit, and the pressure
    units = sorted({s["unit"] for s in body["series"]})
    charts = page.locator("#explain-body canvas")
    assert sorted(c.get_attribute("data-unit") for c in charts.all()) == units == ["bytes", "percent"]
    samples = {u: sum(1 for s in body["series"] if s["unit"] == u for _, v in s["points"] if v is not None)
               for u in units}
    for c in charts.all():
        assert int(c.get_attribute("data-rendered")) == samples[c.get_attribute("data-unit")] > 100
        assert c.evaluate(COLOURED) > 500
    assert "The 10 min before" in page.text_content("#explain-body")
    legend = page.text_content("#explain-body figure.chart .legend")
    assert all(n in legend for n in ("usage", "limit", "anon", "page_cache", "working_set"))

    # who held the memory: the kernel's candidate table, the victim marked
    rows = page.locator("#explain-holders tr")
    assert rows.count() == 4
    assert [rows.nth(1).locator("td").nth(i).text_content() for i in range(4)] == ["leaky", "4242", "60.0 MiB", "yes"]
    assert "(oom_candidates)" in page.text_content("#explain-body")

    # a shorter window asks again
    page.select_option("#explain-window", "300")
    page.wait_for_function("document.querySelector('#explain[data-state]') && "
                           "document.getElementById('explain-body').textContent.includes('The 5 min before')")

    page.screenshot(path=str(stack.root / "explain-charts.png"), full_page=True)
    assert [u for u in requests if not u.startswith(stack.url)] == []
    assert errors == []
