"""Descriptor limits (SPEC §16), against the real binary under a 512 open-file limit: the
default --max-connections keeps a reserve of 256 descriptors for publishers and /health, and
running out of descriptors anyway never makes the server spin and is recovered from."""
import http.client
import os
import re
import resource
import selectors
import signal
import socket
import subprocess
import time

import pytest

from conftest import ROOT, Herald, herald_binary, wait_for

NOFILE = 512
STREAM_REQUEST = b"GET /events?topic=t HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"


class LimitedHerald(Herald):
    """A herald on --port 0 whose soft and hard open-file limits are both NOFILE (the server
    raises its soft limit to the hard one at start)."""

    def start(self):
        self.process = subprocess.Popen(
            [herald_binary(), "--host", "127.0.0.1", "--port", "0", "--public", os.path.join(ROOT, "public"),
             "--log-level", "warning", *self.flags],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE)))
        line = self.process.stdout.readline()
        match = re.match(r"listening on http://([\d.]+):(\d+)", line)
        assert match, f"herald did not start: {line!r}"
        self.port = int(match.group(2))
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def terminate_cleanly(self):
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=20)
        self.process = None
        assert code == 0, f"herald exited with {code} on SIGTERM"


@pytest.fixture
def limited():
    started = []

    def make(*flags):
        server = LimitedHerald(*flags).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()  # only if a test failed before terminate_cleanly


def open_stream(port, timeout=10):
    """Connects, asks for a stream on topic t, reads the response head: (socket, status, head)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(STREAM_REQUEST)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else None
    return sock, status, head


def read_until(sock, needle, timeout=10):
    sock.settimeout(timeout)
    seen, deadline = b"", time.time() + timeout
    while needle not in seen and time.time() < deadline:
        chunk = sock.recv(65536)
        assert chunk, "stream closed early"
        seen += chunk
    assert needle in seen, f"{needle!r} not received within {timeout} s (got {seen[-300:]!r})"


def publish(port, data):
    """Publishes over a new connection, Host 127.0.0.1 (a loopback publisher without a key)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", "/events?topic=t", body=data.encode(),
                           headers={"Content-Type": "text/plain", "Host": "127.0.0.1"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def cpu_ticks(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of the line)


def test_default_max_connections_keeps_a_reserve(limited):
    """Attacks the default --max-connections: 300 streams under a 512 open-file limit must get
    exactly 256 (512 - 256) streams and 503 + Retry-After for the rest, while /health and a
    publisher still get through and the open streams still receive events."""
    server = limited()
    streams, refused = [], []
    try:
        for _ in range(300):
            sock, status, head = open_stream(server.port)
            (streams if status == 200 else refused).append((sock, status, head))
        statuses = sorted({status for _, status, _ in refused})
        assert len(streams) == NOFILE - 256, f"{len(streams)} streams opened, the others got {statuses}"
        assert statuses == [503], statuses
        for _, _, head in refused:
            assert re.search(rb"\r\nretry-after: *\d+\r\n", head, re.IGNORECASE), head
        assert server.request("GET", "/health")[0] == 200
        status, body = publish(server.port, "through-the-reserve")
        assert status == 200, body
        read_until(streams[0][0], b"data: through-the-reserve\n")
        server.terminate_cleanly()
    finally:
        for sock, _, _ in streams + refused:
            sock.close()


def test_out_of_descriptors_never_spins(limited):
    """Attacks accept under EMFILE: ~700 stream requests against a 512-descriptor server with
    --max-connections 100000 leave connections in the backlog that cannot be accepted. The
    server must not spin on them (under 30 % of a core over 3 s), open streams keep flowing,
    and once the connections are gone /health and new streams are served again."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= 1024, "the test itself needs ~750 descriptors"
    server = limited("--max-connections", "100000")
    publisher = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)  # opened while there is room
    publisher.request("GET", "/health")
    first = publisher.getresponse()
    first.read()
    assert first.status == 200
    selector, answered, sockets = selectors.DefaultSelector(), {}, []
    try:
        for _ in range(700):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            sock.sendall(STREAM_REQUEST)
            sock.setblocking(False)
            sockets.append(sock)
            selector.register(sock, selectors.EVENT_READ)
        # Collect the stream heads until no new one has come for 1.5 s: the server is full.
        last_change, deadline = time.time(), time.time() + 30
        while time.time() - last_change < 1.5 and time.time() < deadline:
            for key, _ in selector.select(timeout=0.2):
                chunk = key.fileobj.recv(65536)
                if chunk and key.fileobj not in answered:
                    answered[key.fileobj] = chunk
                    last_change = time.time()
        statuses = {chunk.split(b" ", 2)[1] for chunk in answered.values()}
        assert statuses <= {b"200"}, statuses
        assert 0 < len(answered) < len(sockets), \
            f"{len(answered)} of {len(sockets)} connections answered: descriptors never ran out"
        fds = len(os.listdir(f"/proc/{server.process.pid}/fd"))
        assert fds >= NOFILE - 8, f"herald holds only {fds} descriptors, yet stopped accepting"

        # Open streams keep flowing: publish over the connection opened before the limit.
        publisher.request("POST", "/events?topic=t", body=b"while-full",
                          headers={"Content-Type": "text/plain", "Host": "127.0.0.1"})
        response = publisher.getresponse()
        assert response.status == 200, response.read()
        response.read()
        stream = next(iter(answered))
        stream.setblocking(True)
        read_until(stream, b"data: while-full\n")

        ticks_per_second = os.sysconf("SC_CLK_TCK")
        before = cpu_ticks(server.process.pid)
        time.sleep(3)
        used = (cpu_ticks(server.process.pid) - before) / ticks_per_second / 3
        print(f"out of descriptors: {len(answered)} streams open, {fds} fds, herald used {used:.1%} of a core")
        assert used < 0.30, f"herald used {used:.0%} of a core while out of descriptors: its accept loop spins"
    finally:
        publisher.close()
        selector.close()
        for sock in sockets:
            sock.close()

    def health():
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=1)
        try:
            connection.request("GET", "/health")
            return connection.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            connection.close()
    wait_for(health, timeout=5, what="/health after the descriptors were freed")
    sock, status, head = open_stream(server.port)
    try:
        assert status == 200, head
        server.terminate_cleanly()
    finally:
        sock.close()
