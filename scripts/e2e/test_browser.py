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


def test_cross_origin_eventsource_with_subscriber_tokens(herald_factory, other_origin, browser):
    """SPEC §14 in a real browser: a page on another origin subscribes with ?access_token=
    (EventSource cannot send headers) and with the herald_token cookie (withCredentials, for
    an origin listed in --cors-origin); without a token the EventSource is refused."""
    import subprocess
    from conftest import herald_binary
    key = "browser-test-subscriber-key-0123456789abcdef"
    folder, origin = other_origin
    herald = herald_factory("--subscriber-key", key, "--cors-origin", origin, "--cors-origin", "*")

    def mint(*args):
        out = subprocess.run([herald_binary(), "token", "--key", key, "--ttl", "300", *args],
                             capture_output=True, text=True, check=True, timeout=30)
        return out.stdout.strip()

    query_token = mint("--sub", "browser-user-1", "--topic", "secure/*")
    cookie_token = mint("--topic", "secure/cookie")
    with open(f"{folder}/secure.html", "w") as page:
        page.write(f"""<!doctype html><meta charset="utf-8"><title>tokens</title><script>
            window.got = []; window.cookieGot = []; window.refused = false; window.hello = null;
            var source = new EventSource("{herald.url}/events?topic=secure/news&access_token={query_token}");
            source.addEventListener("herald.hello", function (e) {{ window.hello = JSON.parse(e.data); }});
            source.onmessage = function (e) {{ window.got.push(e.data); }};
            // The cookie is set by this page for the host (cookies ignore ports), then sent
            // with the credentialed EventSource to Herald's origin.
            document.cookie = "herald_token={cookie_token}; path=/";
            var withCookie = new EventSource("{herald.url}/events?topic=secure/cookie", {{withCredentials: true}});
            withCookie.onmessage = function (e) {{ window.cookieGot.push(e.data); }};
            var refused = new EventSource("{herald.url}/events?topic=secure/news");
            refused.onerror = function () {{ if (refused.readyState === 2) window.refused = true; }};
        </script>""")
    browser.get(origin + "/secure.html")
    wait_for(lambda: browser.execute_script("return window.hello"), what="herald.hello on the token stream")
    assert browser.execute_script("return window.hello")["client"] == "browser-user-1"
    wait_for(lambda: herald.request("GET", "/clients")[1].count(b'"client"') >= 2, what="both token streams to be listed")
    herald.publish("secure/news", "for token holders")
    herald.publish("secure/cookie", "for cookie holders")
    status, _ = herald.request("POST", "/clients/browser-user-1/events", b"direct", {"Content-Type": "text/plain"})
    assert status == 200
    wait_for(lambda: browser.execute_script("return window.got.length") >= 2, what="the topic event and the direct message")
    assert browser.execute_script("return window.got") == ["for token holders", "direct"]
    wait_for(lambda: browser.execute_script("return window.cookieGot.length") >= 1, what="the cookie stream's event")
    assert browser.execute_script("return window.cookieGot") == ["for cookie holders"]
    # The EventSource without a token got 401 and gave up (readyState CLOSED).
    wait_for(lambda: browser.execute_script("return window.refused"), what="the tokenless EventSource to be refused")


def test_twelve_eventsources_to_one_origin_over_https_and_http2(browser, tmp_path):
    """SPEC §13: over HTTP/1.1 a browser holds at most six connections per origin, so a page
    with twelve EventSources hangs; over HTTPS Chromium speaks HTTP/2 (ALPN) and all twelve
    are live on one connection."""
    import subprocess
    from conftest import free_port, herald_binary
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    public = tmp_path / "public"
    public.mkdir()
    (public / "twelve.html").write_text("""<!doctype html><meta charset="utf-8"><title>twelve</title><script>
        window.opened = 0; window.got = {};
        for (var i = 0; i < 12; i++) (function (i) {
            var source = new EventSource("/events?topic=t" + i);
            source.onopen = function () { window.opened++; };
            source.onmessage = function (e) { window.got[i] = e.data; };
        })(i);
        </script>""")
    port = free_port()
    process = subprocess.Popen([herald_binary(), "--host", "127.0.0.1", "--port", str(port), "--public", str(public),
                                "--tls-cert", str(cert), "--tls-key", str(key), "--log-level", "warning"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout.readline().startswith("listening on https://")
        browser.get(f"https://127.0.0.1:{port}/twelve.html")
        assert browser.execute_script("return performance.getEntriesByType('navigation')[0].nextHopProtocol") == "h2"
        wait_for(lambda: browser.execute_script("return window.opened") == 12, what="twelve open EventSources")
        import ssl
        import urllib.request
        context = ssl.create_default_context(cafile=str(cert))
        for i in range(12):
            request = urllib.request.Request(f"https://127.0.0.1:{port}/events?topic=t{i}", data=f"to {i}".encode(),
                                             method="POST", headers={"Content-Type": "text/plain"})
            with urllib.request.urlopen(request, timeout=10, context=context) as response:
                assert response.status == 200
        got = wait_for(lambda: (lambda g: g if len(g) == 12 else None)(browser.execute_script("return window.got")),
                       what="an event on each of the twelve")
        assert got == {str(i): f"to {i}" for i in range(12)}
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_demo_page_over_https(browser, tmp_path):
    """The demo page works over HTTPS (and HTTP/2): quotes tick."""
    import subprocess
    from conftest import ROOT, free_port, herald_binary
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    port = free_port()
    process = subprocess.Popen([herald_binary(), "--host", "127.0.0.1", "--port", str(port), "--public", f"{ROOT}/public",
                                "--tls-cert", str(cert), "--tls-key", str(key), "--demo", "--log-level", "warning"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout.readline().startswith("listening on https://")
        browser.get(f"https://127.0.0.1:{port}/")
        first = wait_for(lambda: (lambda b: b if len(b) >= 6 else None)(board(browser)), what="the board to fill over https")
        wait_for(lambda: board(browser) != first, timeout=15, what="a price to change over https")
        assert browser.find_element("id", "badge").text.lower().startswith("live")
        assert browser.execute_script("return performance.getEntriesByType('navigation')[0].nextHopProtocol") == "h2"
    finally:
        process.terminate()
        process.wait(timeout=10)
