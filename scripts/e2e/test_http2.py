"""HTTP/2 (SPEC §13) against the real binary: h2c with prior knowledge on the cleartext port
and h2 over TLS (ALPN), with a raw client from the `h2` package: 120 event streams on one
connection, a stream that stops reading is reset without stalling its siblings, a reset by the
client frees its stream at once, no connection-specific headers, garbage after the preface
cut off alone; and curl --http2 / --http2-prior-knowledge."""
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request

import pytest

h2 = pytest.importorskip("h2")
import h2.config  # noqa: E402
import h2.connection  # noqa: E402
import h2.events  # noqa: E402
import h2.exceptions  # noqa: E402

from conftest import Herald, herald_binary  # noqa: E402


class Client:
    """One HTTP/2 connection; collects what each stream receives."""

    def __init__(self, port, tls_context=None, acknowledge=True):
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock = tls_context.wrap_socket(raw, server_hostname="127.0.0.1") if tls_context else raw
        self.scheme = "https" if tls_context else "http"
        self.authority = f"127.0.0.1:{port}"
        self.conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.flush()
        self.headers, self.data, self.ended, self.reset = {}, {}, set(), set()
        self.terminated = False
        self.unacknowledged = set()  # streams whose window is never given back
        self.acknowledge = acknowledge
        # As browsers do: wait for the server's SETTINGS (and acknowledge them) before opening
        # streams, so its stream limit (--h2-max-streams) is in force on both sides.
        self.settings = None
        deadline = time.time() + 10
        while self.settings is None and time.time() < deadline:
            self.pump()
        assert self.settings is not None, "no SETTINGS from the server"

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, path, method="GET", headers=(), body=None):
        stream = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream, [(":method", method), (":path", path), (":scheme", self.scheme),
                                        (":authority", self.authority), *headers], end_stream=body is None)
        if body is not None:
            self.conn.send_data(stream, body, end_stream=True)
        self.flush()
        self.data[stream] = b""
        return stream

    def pump(self, seconds=0.2):
        self.sock.settimeout(seconds)
        try:
            chunk = self.sock.recv(1 << 20)
        except (socket.timeout, ssl.SSLWantReadError):
            return
        if not chunk:
            self.terminated = True
            return
        for event in self.conn.receive_data(chunk):
            if isinstance(event, h2.events.ResponseReceived):
                self.headers[event.stream_id] = dict(event.headers)
                self.headers[event.stream_id]["__list__"] = [name for name, _ in event.headers]
            elif isinstance(event, h2.events.DataReceived):
                self.data[event.stream_id] = self.data.get(event.stream_id, b"") + event.data
                if event.stream_id not in self.unacknowledged:
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif event.flow_controlled_length:
                    # A stream that stops reading: its own window is never given back, the
                    # connection's is (as a browser tab that stops consuming one EventSource).
                    self.conn.increment_flow_control_window(event.flow_controlled_length)
            elif isinstance(event, h2.events.StreamEnded):
                self.ended.add(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                self.reset.add(event.stream_id)
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                self.settings = {int(k): v.new_value for k, v in event.changed_settings.items()}
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.terminated = True
        self.flush()

    def until(self, condition, timeout=10, what="condition"):
        deadline = time.time() + timeout
        while not condition():
            assert time.time() < deadline, f"timed out waiting for {what}"
            assert not self.terminated, "the server closed the connection"
            self.pump()

    def close(self):
        try:
            self.conn.close_connection()
            self.flush()
        except Exception:
            pass
        self.sock.close()


def publish(herald, topic, data):
    request = urllib.request.Request(f"{herald.url}/events?topic={topic}", data=data.encode(), method="POST",
                                     headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["ids"][0]


def metric(herald, name):
    with urllib.request.urlopen(f"{herald.url}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


@pytest.fixture
def h2c():
    herald = Herald("--h2-max-streams", "150", "--keepalive", "1").start()
    yield herald
    herald.stop()


def test_120_event_streams_on_one_connection(h2c):
    client = Client(h2c.port)
    assert client.settings.get(3) == 150  # SETTINGS_MAX_CONCURRENT_STREAMS from --h2-max-streams
    streams = [client.request(f"/events?topic=many&client=h2stream{i:04d}", headers=[("accept", "text/event-stream")])
               for i in range(120)]
    client.until(lambda: all(b"herald.hello" in client.data[s] for s in streams), what="120 hellos")
    assert all(client.headers[s][":status"] == "200" for s in streams)
    listed = json.loads(urllib.request.urlopen(f"{h2c.url}/clients", timeout=10).read())
    assert listed["count"] == 120 and all(c["connections"] == 1 for c in listed["clients"])
    event_id = publish(h2c, "many", "to all 120")
    client.until(lambda: all(f"id: {event_id}".encode() in client.data[s] for s in streams), what="the event on every stream")
    # No connection-specific header on HTTP/2 (RFC 9113 §8.2.2).
    names = set(client.headers[streams[0]]["__list__"])
    assert not names & {"connection", "transfer-encoding", "keep-alive"}
    assert client.headers[streams[0]]["content-type"].startswith("text/event-stream")
    # Keep-alive comments arrive per stream (--keepalive 1).
    before = {s: len(client.data[s]) for s in streams[:5]}
    client.until(lambda: all(b"\n:" in client.data[s][before[s]:] for s in streams[:5]), timeout=5, what="keep-alives")
    client.close()


def test_requests_and_publishing_over_h2c(h2c):
    client = Client(h2c.port)
    health = client.request("/health")
    page = client.request("/")
    posted = client.request("/events?topic=p", method="POST", headers=[("content-type", "text/plain")], body=b"via h2")
    missing = client.request("/events?topic=p", headers=[("accept", "application/json")])
    client.until(lambda: {health, page, posted, missing} <= client.ended, what="four answers")
    assert json.loads(client.data[health]) == {"status": "ok"}
    assert client.headers[page][":status"] == "200" and b"<html" in client.data[page].lower()
    assert client.headers[posted][":status"] == "200" and json.loads(client.data[posted])["ids"]
    assert client.headers[missing][":status"] == "406"
    assert client.headers[missing]["content-type"] == "application/problem+json"
    client.close()


def test_a_stream_that_stops_reading_is_reset_without_stalling_its_siblings():
    herald = Herald("--max-queued-bytes", "65536").start()
    try:
        client = Client(herald.port)
        stuck = client.request("/events?topic=flood", headers=[("accept", "text/event-stream")])
        reader = client.request("/events?topic=flood", headers=[("accept", "text/event-stream")])
        client.unacknowledged.add(stuck)  # its window is never given back: it stops reading
        client.until(lambda: b"herald.hello" in client.data[stuck] and b"herald.hello" in client.data[reader], what="hellos")
        payload = "x" * 2000
        last = None
        for _ in range(150):
            last = publish(herald, "flood", payload)
            client.pump(0.01)
        client.until(lambda: f"id: {last}".encode() in client.data[reader], timeout=15, what="the reading stream to get everything")
        client.until(lambda: stuck in client.reset or stuck in client.ended, timeout=15, what="the stuck stream to be cut")
        assert client.data[reader].count(b"data: " + payload.encode()) == 150
        assert metric(herald, "herald_slow_consumer_disconnects_total") >= 1
        client.close()
    finally:
        herald.stop()


def test_a_reset_by_the_client_frees_the_stream_at_once(h2c):
    client = Client(h2c.port)
    stream = client.request("/events?topic=r&client=resetme001", headers=[("accept", "text/event-stream")])
    client.until(lambda: b"herald.hello" in client.data[stream], what="hello")
    assert metric(h2c, "herald_streams_open") == 1
    client.conn.reset_stream(stream)
    client.flush()
    deadline = time.time() + 5
    while time.time() < deadline and metric(h2c, "herald_streams_open") != 0:
        time.sleep(0.05)
    assert metric(h2c, "herald_streams_open") == 0
    try:
        urllib.request.urlopen(f"{h2c.url}/clients/resetme001", timeout=10)
        listed = True
    except urllib.error.HTTPError as error:
        listed = error.code != 404
    assert not listed
    client.close()


def test_garbage_after_the_preface_is_cut_off_alone(h2c):
    bad = socket.create_connection(("127.0.0.1", h2c.port), timeout=10)
    bad.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + os.urandom(2048))
    closed = False
    deadline = time.time() + 11
    try:
        while time.time() < deadline:
            if not bad.recv(65536):
                closed = True
                break
    except (ConnectionResetError, socket.timeout):
        closed = True
    assert closed
    good = Client(h2c.port)
    health = good.request("/health")
    good.until(lambda: health in good.ended, what="a sibling connection's answer")
    good.close()


def test_h2_over_tls_with_alpn_and_curl():
    folder = tempfile.mkdtemp(prefix="herald-h2-")
    cert, key = os.path.join(folder, "c.pem"), os.path.join(folder, "k.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "2",
                    "-subj", "/CN=h2", "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=60)
    herald = Herald("--tls-cert", cert, "--tls-key", key)
    herald.url = herald.url.replace("http://", "https://")
    process = subprocess.Popen([herald_binary(), "--host", "127.0.0.1", "--port", str(herald.port), "--tls-cert", cert,
                                "--tls-key", key, "--log-level", "warning"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout.readline().startswith("listening on https://")
        ctx = ssl.create_default_context(cafile=cert)
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        client = Client(herald.port, tls_context=ctx)
        assert client.sock.selected_alpn_protocol() == "h2"
        stream = client.request("/events?topic=tls2", headers=[("accept", "text/event-stream")])
        client.until(lambda: b"herald.hello" in client.data[stream], what="hello over h2+TLS")
        posted = client.request("/events?topic=tls2", method="POST", headers=[("content-type", "text/plain")], body=b"secret")
        client.until(lambda: b"data: secret" in client.data[stream], what="the event over h2+TLS")
        assert client.headers[posted][":status"] == "200"
        client.close()
        if shutil.which("curl"):
            out = subprocess.run(["curl", "-s", "--http2", "--cacert", cert, "-o", "/dev/null", "-w", "%{http_version}",
                                  f"https://127.0.0.1:{herald.port}/health"], capture_output=True, text=True, timeout=30)
            assert out.stdout == "2"
            out = subprocess.run(["curl", "-s", "--http1.1", "--cacert", cert, "-o", "/dev/null", "-w", "%{http_version}",
                                  f"https://127.0.0.1:{herald.port}/health"], capture_output=True, text=True, timeout=30)
            assert out.stdout == "1.1"
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


def test_curl_with_prior_knowledge(h2c):
    if not shutil.which("curl"):
        pytest.skip("curl missing")
    out = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
                          f"{h2c.url}/health"], capture_output=True, text=True, timeout=30)
    assert out.stdout == "2 200"
    # The same port still speaks HTTP/1.1.
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_version} %{http_code}", f"{h2c.url}/health"],
                         capture_output=True, text=True, timeout=30)
    assert out.stdout == "1.1 200"


def test_graceful_shutdown_sends_goaway_then_ends_the_streams():
    herald = Herald("--shutdown-grace", "1").start()
    try:
        client = Client(herald.port)
        streams = [client.request(f"/events?topic=bye{i}", headers=[("accept", "text/event-stream")]) for i in range(3)]
        client.until(lambda: all(b"herald.hello" in client.data[s] for s in streams), what="hellos")
        goaways = []
        original = client.conn.receive_data

        def spy(data):
            events = original(data)
            goaways.extend(e for e in events if isinstance(e, h2.events.ConnectionTerminated))
            return events

        client.conn.receive_data = spy
        herald.process.terminate()
        deadline = time.time() + 8
        while time.time() < deadline and not (goaways and all(s in client.ended or s in client.reset for s in streams)):
            if client.terminated:
                break
            try:
                client.pump()
            except h2.exceptions.ProtocolError:
                break
        assert goaways and goaways[0].error_code == 0, goaways
        assert herald.process.wait(timeout=10) == 0
        client.close()
    finally:
        herald.stop()


def test_an_idle_connection_is_closed_but_one_with_a_stream_is_not(h2c):
    idle = Client(h2c.port)       # preface and SETTINGS, then nothing
    busy = Client(h2c.port)
    stream = busy.request("/events?topic=idle", headers=[("accept", "text/event-stream")])
    busy.until(lambda: b"herald.hello" in busy.data[stream], what="hello")
    start = time.time()
    while time.time() - start < 13 and not idle.terminated:
        idle.pump(0.5)
        busy.pump(0.01)
    assert idle.terminated, "an HTTP/2 connection without streams was not closed"
    assert 9 <= time.time() - start <= 13
    event_id = publish(h2c, "idle", "still here")
    busy.until(lambda: f"id: {event_id}".encode() in busy.data[stream], what="the event on the long-lived stream")
    idle.close()
    busy.close()


def test_a_large_static_file_over_h2c(tmp_path):
    """Files over 1 MiB are streamed from disk in slices, paced by HTTP/2 flow control."""
    public = tmp_path / "public"
    public.mkdir()
    payload = os.urandom(3 * 1024 * 1024 + 123)
    (public / "big.bin").write_bytes(payload)
    (public / "index.html").write_text("<html></html>")
    herald = Herald("--public", str(public)).start()
    try:
        client = Client(herald.port)
        stream = client.request("/big.bin")
        head = client.request("/big.bin", method="HEAD")
        client.until(lambda: {stream, head} <= client.ended, timeout=20, what="the file and the HEAD answer")
        assert client.headers[stream][":status"] == "200"
        assert client.headers[stream]["content-length"] == str(len(payload))
        assert client.data[stream] == payload
        assert client.headers[head]["content-length"] == str(len(payload)) and client.data[head] == b""
        client.close()
    finally:
        herald.stop()
