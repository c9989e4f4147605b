"""HTTPS (SPEC §13, the TLS part): the real binary with a certificate made here by openssl:
endpoints and an event stream over TLS, TLS 1.2/1.3 only, plain HTTP / garbage / a silent
client on the TLS port cut without harming others, SIGHUP reloading the certificate while a
stream stays open, and start-up errors that name the file."""
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request

import pytest

from conftest import free_port, herald_binary

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make certificates")


def make_certificate(folder, name):
    cert, key = os.path.join(folder, f"{name}.crt"), os.path.join(folder, f"{name}.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


class TLSHerald:
    def __init__(self, folder):
        self.folder = folder
        self.cert = os.path.join(folder, "server.crt")
        self.key = os.path.join(folder, "server.key")
        first = make_certificate(folder, "first")
        shutil.copy(first[0], self.cert)
        shutil.copy(first[1], self.key)
        self.port = free_port()
        self.stderr = open(os.path.join(folder, "stderr.log"), "w+")
        self.process = subprocess.Popen(
            [herald_binary(), "--host", "127.0.0.1", "--port", str(self.port), "--tls-cert", self.cert, "--tls-key", self.key,
             "--log-level", "notice", "--keepalive", "1"], stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        line = self.process.stdout.readline()
        assert line.strip() == f"listening on https://127.0.0.1:{self.port}", line

    def context(self, cafile=None):
        ctx = ssl.create_default_context(cafile=cafile or self.cert)
        return ctx

    def request(self, method, path, body=None, headers=None, cafile=None):
        req = urllib.request.Request(f"https://127.0.0.1:{self.port}{path}", data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=10, context=self.context(cafile)) as response:
                return response.status, response.read(), response.headers
        except urllib.error.HTTPError as error:
            return error.code, error.read(), error.headers

    def open_stream(self, path, cafile=None):
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        tls = self.context(cafile).wrap_socket(raw, server_hostname="127.0.0.1")
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode())
        return tls

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.stderr.close()


@pytest.fixture
def server():
    folder = tempfile.mkdtemp(prefix="herald-tls-")
    herald = TLSHerald(folder)
    yield herald
    herald.stop()
    shutil.rmtree(folder, ignore_errors=True)


def read_until(sock, needle, timeout=10):
    sock.settimeout(timeout)
    data = b""
    deadline = time.time() + timeout
    while needle not in data and time.time() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def peer_common_name(port, cafile):
    ctx = ssl.create_default_context(cafile=cafile)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            subject = dict(item[0] for item in tls.getpeercert()["subject"])
            return subject["commonName"]


def test_endpoints_and_a_stream_over_tls(server):
    status, body, _ = server.request("GET", "/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, body, headers = server.request("GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    stream = server.open_stream("/events?topic=secure")
    head = read_until(stream, b"herald.hello")
    assert head.startswith(b"HTTP/1.1 200") and b"herald.hello" in head
    status, body, _ = server.request("POST", "/events?topic=secure", b"over tls", {"Content-Type": "text/plain"})
    assert status == 200
    event_id = json.loads(body)["ids"][0]
    got = read_until(stream, b"over tls")
    assert f"id: {event_id}".encode() in got and b"data: over tls" in got
    # Keep-alive comments flow over TLS too (--keepalive 1).
    assert b"\r\n:" in read_until(stream, b"\r\n:", timeout=4)
    stream.close()


def test_only_tls_1_2_and_1_3_with_alpn_h2_and_http_1_1(server):
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        for offered, chosen in ((["h2", "http/1.1"], "h2"), (["http/1.1"], "http/1.1")):
            ctx = server.context()
            ctx.minimum_version = ctx.maximum_version = version
            ctx.set_alpn_protocols(offered)
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
                with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                    assert tls.version() in ("TLSv1.2", "TLSv1.3")
                    assert tls.selected_alpn_protocol() == chosen
    for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        import warnings
        warnings.simplefilter("ignore", DeprecationWarning)  # asking for TLS 1.0/1.1 on purpose
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        try:
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
            ctx.minimum_version = ctx.maximum_version = version
        except (ValueError, ssl.SSLError):
            continue  # this OpenSSL cannot even offer it
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
            with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
                ctx.wrap_socket(raw, server_hostname="127.0.0.1").do_handshake()


def test_plain_http_garbage_and_a_silent_client_are_cut_without_harm(server):
    plain = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    plain.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    start = time.time()
    answer = b""
    try:
        while True:
            chunk = plain.recv(4096)
            if not chunk:
                break
            answer += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    assert b"HTTP/1.1 200" not in answer and time.time() - start < 5
    garbage = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    garbage.sendall(os.urandom(4096))
    try:
        assert garbage.recv(4096) is not None
    except (ConnectionResetError, socket.timeout):
        pass
    # A client that connects and never says anything: cut by the 10 s head timeout, while
    # everyone else is served.
    silent = socket.create_connection(("127.0.0.1", server.port), timeout=15)
    start = time.time()
    for _ in range(3):
        assert server.request("GET", "/health")[0] == 200
    closed = False
    try:
        while time.time() - start < 14:
            if not silent.recv(4096):
                closed = True
                break
    except (ConnectionResetError, socket.timeout):
        closed = True
    assert closed and time.time() - start < 14
    for sock in (plain, garbage, silent):
        sock.close()


def test_sighup_reloads_the_certificate_and_keeps_open_streams(server):
    assert peer_common_name(server.port, server.cert) == "first"
    stream = server.open_stream("/events?topic=reload")
    read_until(stream, b"herald.hello")
    second = make_certificate(server.folder, "second")
    shutil.copy(second[0], server.cert)
    shutil.copy(second[1], server.key)
    server.process.send_signal(signal.SIGHUP)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            if peer_common_name(server.port, second[0]) == "second":
                break
        except ssl.SSLCertVerificationError:
            pass  # still the first certificate: the signal is handled asynchronously
        time.sleep(0.1)
    assert peer_common_name(server.port, second[0]) == "second"
    # The stream opened under the first certificate is still served.
    status, _, _ = server.request("POST", "/events?topic=reload", b"after reload", {"Content-Type": "text/plain"}, cafile=second[0])
    assert status == 200
    assert b"after reload" in read_until(stream, b"after reload")
    # A broken file on SIGHUP: logged, and the previous certificate stays.
    with open(server.cert, "w") as broken:
        broken.write("not a certificate\n")
    server.process.send_signal(signal.SIGHUP)
    time.sleep(1)
    assert peer_common_name(server.port, second[0]) == "second"
    server.stderr.flush()
    with open(server.stderr.name) as log:
        assert "TLS reload failed" in log.read()
    assert server.process.poll() is None
    stream.close()


def test_start_up_errors_name_the_file(tmp_path):
    cert, key = make_certificate(str(tmp_path), "x")
    cases = [
        (["--tls-cert", str(tmp_path / "missing.crt"), "--tls-key", key], "missing.crt"),
        (["--tls-cert", key, "--tls-key", key], os.path.basename(key)),
        (["--tls-cert", cert, "--tls-key", cert], os.path.basename(cert)),
        (["--tls-cert", cert], "--tls-key"),
    ]
    for flags, named in cases:
        result = subprocess.run([herald_binary(), "--port", "0", *flags], capture_output=True, text=True, timeout=30)
        assert result.returncode != 0, flags
        assert named in result.stderr, (flags, result.stderr)
