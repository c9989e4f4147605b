"""The publish fast path against the general path: the same bytes sent to a server that
reads plain publishes by hand (the default) and to one that sends every request through
NIO's HTTP codec (`--publish-path general`) must get the same answers, reach subscribers
the same way, and leave the connection in the same state. Also: what the fast path must
hand over untouched (pipelined, split, unusual requests), on one keep-alive connection."""
import json
import os
import re
import socket
import subprocess
import time

import pytest


def read_response(sock, head_only_method=None, timeout=10):
    """One HTTP/1.1 response from `sock`: (status line, [(name, value)], body, closed)."""
    sock.settimeout(timeout)
    data = b""
    closed = False
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            closed = True
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0]
    headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:] if line]
    length = next((int(v) for n, v in headers if n.lower() == "content-length"), 0)
    while len(rest) < length and not closed:
        chunk = sock.recv(65536)
        if not chunk:
            closed = True
            break
        rest += chunk
    return status, headers, rest[:length], rest[length:], closed


def exchange(port, raw, pause=None):
    """Sends `raw` (bytes, or a list of byte pieces sent `pause` seconds apart) on a fresh
    connection; returns the first response and whether the connection closed after it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        pieces = raw if isinstance(raw, list) else [raw]
        for index, piece in enumerate(pieces):
            if index and pause:
                time.sleep(pause)
            sock.sendall(piece)
        status, headers, body, extra, closed = read_response(sock)
        if not closed:
            sock.settimeout(0.3)
            try:
                closed = sock.recv(1) == b""
            except (socket.timeout, ConnectionResetError):
                pass
        return status, headers, body, closed


def normalized(response):
    status, headers, body, closed = response
    text = re.sub(rb"\d{10,}", b"<id>", body)
    return status, sorted((n.lower(), v) for n, v in headers), text, closed


def post(path, body=b"", headers=(("Host", "127.0.0.1"), ("Content-Type", "text/plain")), version=b"HTTP/1.1", length=True):
    head = b"POST " + path.encode() + b" " + version + b"\r\n"
    for name, value in headers:
        head += name.encode("latin-1") + b": " + value.encode("latin-1") + b"\r\n"
    if length:
        head += b"Content-Length: " + str(len(body)).encode() + b"\r\n"
    return head + b"\r\n" + body


CASES = {
    "plain text": post("/events?topic=a", b"hello"),
    "form body as curl -d sends it": post("/events?topic=a", b"data=hi", (("Host", "127.0.0.1"), ("Content-Type", "application/x-www-form-urlencoded"))),
    "a form without data": post("/events?topic=a", b"x=1", (("Host", "127.0.0.1"), ("Content-Type", "application/x-www-form-urlencoded"))),
    "JSON batch": post("/events", json.dumps([{"topic": "a", "data": "1"}, {"topic": "b", "type": "t", "data": "2"}]).encode(),
                       (("Host", "127.0.0.1"), ("Content-Type", "application/json"))),
    "bad JSON": post("/events", b"[{", (("Host", "127.0.0.1"), ("Content-Type", "application/json"))),
    "event-stream body": post("/events?topic=a", b"data: one\n\nevent: x\ndata: two\n\n", (("Host", "127.0.0.1"), ("Content-Type", "text/event-stream"))),
    "bad escape in the query": post("/events?topic=a%ZZ", b"x"),
    "no topic": post("/events", b"x"),
    "type twice": post("/events?topic=a&type=x&type=y", b"x"),
    "retain=maybe": post("/events?topic=a&retain=maybe", b"x"),
    "retained": post("/events?topic=r&retain=1", b"kept"),
    "empty body": post("/events?topic=a", b""),
    "no Content-Length": post("/events?topic=a", b"", length=False),
    "no Host": post("/events?topic=a", b"x", (("Content-Type", "text/plain"),)),
    "mixed-case names, trailing blanks": post("/events?topic=a", b"x", (("hOsT", "127.0.0.1  "), ("CONTENT-TYPE", "text/plain\t"))),
    "unknown headers": post("/events?topic=a", b"x", (("Host", "127.0.0.1"), ("User-Agent", "t/1"), ("Accept", "*/*"), ("X-Thing", ""))),
    "Connection: keep-alive": post("/events?topic=a", b"x", (("Host", "127.0.0.1"), ("Connection", "keep-alive"))),
    "foreign Origin": post("/events?topic=a", b"x", (("Host", "127.0.0.1"), ("Origin", "https://evil.example"))),
    "foreign Host": post("/events?topic=a", b"x", (("Host", "evil.example"),)),
    "two Hosts": post("/events?topic=a", b"x", (("Host", "127.0.0.1"), ("Host", "localhost"))),
    "cross-site fetch": post("/events?topic=a", b"x", (("Host", "127.0.0.1"), ("Sec-Fetch-Site", "cross-site"))),
    "direct to a client": post("/clients/tok-1/events", b"to you"),
    "direct to a bad token": post("/clients/%20/events", b"x"),
    "event over --max-event-bytes (in several reads)": post("/events?topic=a", b"x" * 3000),
    "body over --max-body-bytes": post("/events?topic=a", b"x" * 9000),
    "too many topics": post("/events?" + "&".join(f"topic=t{i}" for i in range(200)), b"x"),
    "Connection: close": post("/events?topic=a", b"x", (("Host", "127.0.0.1"), ("Connection", "close"))),
    "Proxy-Connection: close": post("/events?topic=a", b"x", (("Host", "127.0.0.1"), ("Proxy-Connection", "close"))),
    "HTTP/1.0": post("/events?topic=a", b"x", version=b"HTTP/1.0"),
    "Idempotency-Key": post("/events?topic=a", b"x", (("Host", "127.0.0.1"), ("Idempotency-Key", "k-1"))),
    "chunked body": b"POST /events?topic=a HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
    "Expect: 100-continue": post("/events?topic=a", b"x", (("Host", "127.0.0.1"), ("Expect", "100-continue"))),
    "obs-fold": b"POST /events?topic=a HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: 1\r\n  folded\r\nContent-Length: 1\r\n\r\nx",
    "obs-text in a value": post("/events?topic=a", b"x", (("Host", "127.0.0.1"), ("X-A", "caf\xe9"))),
    "space before the colon": b"POST /events?topic=a HTTP/1.1\r\nHost : 127.0.0.1\r\nContent-Length: 1\r\n\r\nx",
    "two Content-Lengths": b"POST /events?topic=a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
    "Content-Length with a sign": b"POST /events?topic=a HTTP/1.1\r\nContent-Length: +1\r\n\r\nx",
    "bare LF line ends": b"POST /events?topic=a HTTP/1.1\nHost: 127.0.0.1\nContent-Length: 1\n\nx",
    "a GET": b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "POST to a static path": post("/index.html", b"x"),
    "POST to /poll": post("/poll?topic=a", b"x"),
    "lowercase method": b"post /events?topic=a HTTP/1.1\r\nContent-Length: 1\r\n\r\nx",
}

FLAGS = ("--max-event-bytes", "2048", "--max-body-bytes", "8192")


@pytest.fixture
def servers(herald_factory):
    return herald_factory(*FLAGS), herald_factory(*FLAGS, "--publish-path", "general")


def fast_path_count(server):
    status, body = server.request("GET", "/metrics")
    assert status == 200
    match = re.search(rb"^herald_publish_fast_path_requests_total (\d+)", body, re.M)
    return int(match.group(1)) if match else 0


@pytest.mark.parametrize("name", list(CASES))
def test_fast_and_general_paths_answer_alike(servers, name):
    fast, general = servers
    raw = CASES[name]
    assert normalized(exchange(fast.port, raw)) == normalized(exchange(general.port, raw))
    assert fast_path_count(general) == 0


def test_the_fast_path_takes_plain_publishes_and_nothing_else(servers):
    fast, _ = servers
    taken = {"plain text", "form body as curl -d sends it", "a form without data", "JSON batch", "bad JSON", "event-stream body",
             "bad escape in the query", "no topic", "type twice", "retain=maybe", "retained", "empty body", "no Content-Length",
             "no Host", "mixed-case names, trailing blanks", "unknown headers", "Connection: keep-alive", "direct to a client",
             "direct to a bad token", "event over --max-event-bytes (in several reads)", "too many topics"}
    for name, raw in CASES.items():
        before = fast_path_count(fast)
        exchange(fast.port, raw)
        assert fast_path_count(fast) - before == (1 if name in taken else 0), name


def collect(server, topic, count):
    """Opens a stream on `topic`; returns a function that reads `count` events' data."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(f"GET /events?topic={topic} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode())
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        buffer += sock.recv(65536)

    def data():
        # Every event's data but the stream's opening control event's.
        return [d for d in re.findall(rb"data: ([^\r\n]*)\n", buffer) if not d.startswith(b'{"client"')]

    def read():
        nonlocal buffer
        deadline = time.time() + 10
        while len(data()) < count and time.time() < deadline:
            buffer += sock.recv(65536)
        sock.close()
        return data()
    return read


def test_one_keep_alive_connection_mixing_both_paths(servers):
    """Publishes on the fast path, a request it hands over, then publishes again: every
    answer in order, every event delivered, on both servers alike."""
    results = []
    for server in servers:
        read = collect(server, "mix", 5)
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            statuses = []
            for raw in (post("/events?topic=mix", b"1"), post("/events?topic=mix", b"2"),
                        b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                        post("/events?topic=mix", b"3"),
                        post("/events?topic=mix", b"4", (("Host", "127.0.0.1"), ("Idempotency-Key", "mix-4"))),
                        post("/events?topic=mix", b"5")):
                sock.sendall(raw)
                status, _, _, _, closed = read_response(sock)
                assert not closed
                statuses.append(status)
        results.append((statuses, read()))
    assert results[0] == results[1]
    assert results[0][0] == ["HTTP/1.1 200 OK"] * 6
    assert results[0][1] == [b"1", b"2", b"3", b"4", b"5"]


def test_pipelined_and_split_requests_are_answered_in_order(servers):
    for server in servers:
        read = collect(server, "pipe", 4)
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            # Two requests in one write: answered in order.
            sock.sendall(post("/events?topic=pipe", b"1") + post("/events?topic=pipe", b"2"))
            first = read_response(sock)
            assert first[0] == "HTTP/1.1 200 OK"
            leftover = first[3]
            # The second answer may have arrived with the first.
            if leftover:
                assert leftover.startswith(b"HTTP/1.1 200 OK")
            else:
                assert read_response(sock)[0] == "HTTP/1.1 200 OK"
            # A request split across writes.
            raw = post("/events?topic=pipe", b"3")
            sock.sendall(raw[:20])
            time.sleep(0.1)
            sock.sendall(raw[20:])
            assert read_response(sock)[0] == "HTTP/1.1 200 OK"
            sock.sendall(post("/events?topic=pipe", b"4"))
            assert read_response(sock)[0] == "HTTP/1.1 200 OK"
        assert read() == [b"1", b"2", b"3", b"4"]
    # The fast path took them all: the pipelined pair, the split one, the last one.
    assert [fast_path_count(server) for server in servers] == [4, 0]


def test_a_pipelined_request_it_does_not_take_goes_to_the_general_path_in_order(servers):
    fast, _ = servers
    read = collect(fast, "p2", 3)
    time.sleep(0.2)
    with socket.create_connection(("127.0.0.1", fast.port), timeout=10) as sock:
        sock.sendall(post("/events?topic=p2", b"1") + b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                     + post("/events?topic=p2", b"2") + post("/events?topic=p2", b"3", (("Host", "127.0.0.1"), ("Idempotency-Key", "p2-3"))))
        answers = []
        leftover = b""
        while len(answers) < 4:
            if leftover:
                # The answers can arrive together: parse what is left first.
                status, _, rest = leftover.partition(b"\r\n")[0].decode(), None, None
                head, _, after = leftover.partition(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
                answers.append((status, after[:length]))
                leftover = after[length:]
                continue
            status, headers, body, leftover, closed = read_response(sock)
            assert not closed
            answers.append((status, body))
        assert [status for status, _ in answers] == ["HTTP/1.1 200 OK"] * 4
        assert b'"status":"ok"' in answers[1][1]
    assert read() == [b"1", b"2", b"3"]
    assert fast_path_count(fast) == 1  # the first; from the GET on, the general path


def test_a_publish_key_server_answers_alike_on_both_paths(herald_factory):
    fast = herald_factory(*FLAGS, "--publish-key", "sekrit")
    general = herald_factory(*FLAGS, "--publish-key", "sekrit", "--publish-path", "general")
    for headers in ((("Authorization", "Bearer sekrit"),), (("Authorization", "Bearer wrong"),), (),
                    (("Authorization", "Basic c2Vrcml0"),), (("Host", "evil.example"), ("Authorization", "Bearer sekrit"))):
        raw = post("/events?topic=a", b"x", headers)
        assert normalized(exchange(fast.port, raw)) == normalized(exchange(general.port, raw)), headers
    assert fast_path_count(fast) == 2  # the valid key, twice (once with a foreign Host, allowed with a key)


def test_a_bad_publish_path_value_is_a_usage_error(tmp_path):
    """The hidden --publish-path flag (and its HERALD_PUBLISH_PATH variable) takes 'fast' or
    'general' and nothing else: anything else stops the server before it listens."""
    from conftest import free_port, herald_binary
    port = free_port()
    for args, env in (((["--publish-path", "nope"]), {}), ([], {"HERALD_PUBLISH_PATH": "Fast"})):
        result = subprocess.run([herald_binary(), "--host", "127.0.0.1", "--port", str(port), *args],
                                env={**os.environ, **env}, capture_output=True, timeout=30)
        assert result.returncode != 0
        assert b"--publish-path must be 'fast' or 'general'" in result.stderr, result.stderr
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0


def trickle(sock, raw, pieces, pause=0.02):
    """Sends the first `pieces - 1` bytes of `raw` one write each, `pause` apart (Nagle off,
    so each is its own segment and, with the pause, its own read on the server), then the rest."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for index in range(pieces - 1):
        sock.sendall(raw[index:index + 1])
        time.sleep(pause)
    sock.sendall(raw[pieces - 1:])


@pytest.mark.parametrize("where", ["head", "body"])
def test_a_request_trickled_in_many_pieces_is_handed_to_the_general_path_whole(servers, where):
    """The fast path waits for at most 16 reads of one request; a request trickled in more
    (a head byte by byte, or a body after a whole head) goes to the general path with every
    byte read so far, and is answered and published exactly like on a general-path server.
    The rest of that connection stays on the general path; a request in a few pieces on
    another connection is the fast path's."""
    body = b"trickled-" + b"x" * 40
    raw = post("/events?topic=slow", body)
    head_length = raw.index(b"\r\n\r\n") + 4
    results = []
    for server in servers:
        read = collect(server, "slow", 3)
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            if where == "head":
                trickle(sock, raw, 30)
            else:
                sock.sendall(raw[:head_length])
                time.sleep(0.05)
                trickle(sock, raw[head_length:], 30)
            first = read_response(sock)
            sock.sendall(post("/events?topic=slow", b"after"))
            second = read_response(sock)
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            trickle(sock, post("/events?topic=slow", b"few"), 5)
            third = read_response(sock)
        results.append(([normalized((r[0], r[1], r[2], r[4])) for r in (first, second, third)], read()))
    assert results[0] == results[1]
    statuses = [answer[0] for answer in results[0][0]]
    assert statuses == ["HTTP/1.1 200 OK"] * 3, statuses
    assert results[0][1] == [body, b"after", b"few"]
    # Only the request in 5 pieces was the fast path's.
    assert [fast_path_count(server) for server in servers] == [1, 0]
