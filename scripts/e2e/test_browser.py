"""Real-browser tests: the demo page, a cross-origin EventSource that resumes by itself,
the /poll fallback, and a page that outlives a server restart."""
import json

from conftest import screenshot, wait_for


def board(driver):
    """{symbol: price text} of the quote table."""
    return driver.execute_script("""
        var out = {};
        var rows = document.querySelectorAll('#rows tr[data-symbol]');
        for (var i = 0; i < rows.length; i++) {
            var tds = rows[i].getElementsByTagName('td');
            if (tds[2].textContent) out[rows[i].getAttribute('data-symbol')] = tds[2].textContent;
        }
        return out;""")


def test_demo_page_shows_ticking_quotes(herald_factory, browser):
    herald = herald_factory("--demo")
    browser.get(herald.url + "/")
    first = wait_for(lambda: (lambda b: b if len(b) >= 6 else None)(board(browser)), what="the board to fill")
    wait_for(lambda: board(browser) != first, timeout=15, what="a price to change")
    assert browser.find_element("id", "badge").text.lower().startswith("live")
    assert browser.find_element("id", "transport").text == "EventSource"
    token = browser.find_element("id", "token").text
    assert token.startswith("web-")
    # The page's token is the client the server lists.
    status, body = herald.request("GET", "/clients/" + token)
    assert status == 200, body
    assert json.loads(body)["topics"] == ["quotes/*"]
    # One stream for the whole board.
    assert json.loads(body)["connections"] == 1
    screenshot(browser, "demo.png")


def test_cross_origin_eventsource_resumes_with_every_event_once(herald_factory, other_origin, browser):
    herald = herald_factory("--retry-ms", "500")
    folder, origin = other_origin
    with open(f"{folder}/cross.html", "w") as page:
        page.write(f"""<!doctype html><meta charset="utf-8"><title>cross-origin</title><script>
            window.got = []; window.opens = 0;
            var source = new EventSource("{herald.url}/events?topic=xo&client=crossorigin1");
            source.onopen = function () {{ window.opens++; }};
            source.onmessage = function (e) {{ window.got.push([e.lastEventId, e.data]); }};
        </script>""")
    browser.get(origin + "/cross.html")
    wait_for(lambda: browser.execute_script("return window.opens") >= 1, what="the stream to open")
    wait_for(lambda: herald.request("GET", "/clients/crossorigin1")[0] == 200, what="the client to be listed")
    ids = [herald.publish("xo", f"before {i}") for i in range(5)]
    wait_for(lambda: len(browser.execute_script("return window.got")) >= 5, what="5 live events")
    # Cut the stream, publish while it is down, let EventSource reconnect with Last-Event-ID.
    status, _ = herald.request("DELETE", "/clients/crossorigin1")
    assert status == 204
    ids += [herald.publish("xo", f"while down {i}") for i in range(5)]
    wait_for(lambda: browser.execute_script("return window.opens") >= 2, what="the automatic reconnect")
    ids += [herald.publish("xo", f"after {i}") for i in range(3)]
    got = wait_for(lambda: (lambda g: g if len(g) >= 13 else None)(browser.execute_script("return window.got")),
                   what="all 13 events")
    assert [int(i) for i, _ in got] == ids
    assert [d for _, d in got] == [f"before {i}" for i in range(5)] + [f"while down {i}" for i in range(5)] + \
        [f"after {i}" for i in range(3)]


def test_poll_fallback_without_eventsource(herald_factory, browser):
    herald = herald_factory("--demo")
    browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument",
                            {"source": "try { delete window.EventSource; } catch (e) {} window.EventSource = undefined;"})
    browser.get(herald.url + "/")
    assert browser.execute_script("return typeof window.EventSource") == "undefined"
    wait_for(lambda: "poll" in browser.find_element("id", "transport").text, what="the long-poll transport")
    first = wait_for(lambda: (lambda b: b if len(b) >= 6 else None)(board(browser)), what="the board to fill by polling")
    wait_for(lambda: board(browser) != first, timeout=15, what="a price to change by polling")
    screenshot(browser, "demo-poll.png")


def test_page_survives_a_server_restart(herald_factory, browser):
    herald = herald_factory("--demo", "--retry-ms", "500")
    browser.get(herald.url + "/")
    wait_for(lambda: len(board(browser)) >= 6, what="the board to fill")
    herald.stop()
    wait_for(lambda: "reconnecting" in browser.find_element("id", "badge").text.lower(), what="the reconnecting badge")
    herald.start()
    # The old Last-Event-ID predates the new process: the server answers herald.reset and
    # the page reloads the board from the retained quotes.
    wait_for(lambda: browser.find_element("id", "notice").is_displayed(), what="the reset notice")
    wait_for(lambda: len(board(browser)) >= 6, what="the board to refill")
    assert browser.find_element("id", "badge").text.lower().startswith("live")
    assert int(browser.find_element("id", "reconnects").text) >= 1
