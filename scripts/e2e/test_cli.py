"""The command-line client (SPEC §15), driven as a process against a real server.

`herald pub`: an id on stdout for DATA given as an argument or read from standard input (one
trailing line break dropped), `--topic` (several topics), `--type`, `--retain`,
`--idempotency-key`, `--key` and HERALD_PUBLISH_KEY, a refused publish (401, 400) exiting
non-zero with the server's problem detail on stderr and nothing on stdout; `pub --ndjson`:
10 000 lines sent in batches of at most 1000 lines (checked on /metrics) with 10 000 ids
printed in order, a batch sent within 50 ms while standard input stays open, lines naming their
own topics, `--idempotency-key K` / `K.n` per batch (a second run prints the same ids).

`herald sub`: `ID TYPE DATA` lines (`-` when untyped, `\\n` for line breaks) read line by line
while it runs, no control events or keep-alives on stdout, `--json`, SIGINT exiting 0,
`--last-event-id`, `--client` direct messages, reconnecting by itself after
`DELETE /clients/{token}` and after a server restart on the same port (sqlite store) with
nothing lost or repeated, herald.reset reported on stderr only, and §14 tokens (`--token`;
401 and 403 end it with the detail on stderr).

Also: `--url` defaults to http://127.0.0.1:8080, HERALD_URL sets it, and `herald --port P`
and `herald serve --port P` still start the server."""
import json
import os
import queue
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.parse

import pytest

from conftest import ROOT, free_port, herald_binary, wait_for

KEY = "subscriber-key-for-the-cli-tests-0123456789"  # >= 32 bytes
PUBLISH_KEY = "publish-key-for-the-cli-tests"


# ---------------------------------------------------------------- helpers

def cli_env(**extra):
    """The test's environment without any HERALD_* variable (HERALD_BIN included), plus extra."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("HERALD_")}
    env.update(extra)
    return env


def cli(*args, input=None, env=None, timeout=30):
    """Runs `herald ARGS` to completion; stdin is `input` (bytes/str) or empty."""
    if isinstance(input, str):
        input = input.encode()
    kwargs = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
    return subprocess.run([herald_binary(), *args], capture_output=True, timeout=timeout,
                          env=env if env is not None else cli_env(), **kwargs)


def printed_ids(result):
    """Asserts a successful run that printed only ids; returns them as ints."""
    assert result.returncode == 0, f"exit {result.returncode}; stderr: {result.stderr.decode(errors='replace')}"
    lines = result.stdout.decode().splitlines()
    assert lines and all(re.fullmatch(r"\d+", line) for line in lines), f"stdout is not ids: {result.stdout[:300]!r}"
    return [int(line) for line in lines]


def one_id(result):
    ids = printed_ids(result)
    assert len(ids) == 1, f"expected one id, got {ids}"
    return ids[0]


def assert_refused(result, detail):
    """Non-zero exit, nothing on stdout, the server's problem detail on stderr."""
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode != 0, f"exit 0 for a refused request; stdout {result.stdout!r}"
    assert result.stdout == b"", f"stdout not empty on an error: {result.stdout!r}"
    assert detail and detail in stderr, f"stderr lacks the server's detail {detail!r}: {stderr!r}"


def problem_detail(status_and_body, expected_status):
    status, body = status_and_body
    assert status == expected_status, (status, body)
    return json.loads(body)["detail"]


def poll(server, query, timeout=0):
    status, body = server.request("GET", f"/poll?{query}&timeout={timeout}")
    assert status == 200, body
    return json.loads(body)


def event_at(server, topic, event_id):
    """The event with this id on this topic, read back through /poll."""
    result = poll(server, f"topic={urllib.parse.quote(topic)}&lastEventId={event_id - 1}")
    assert not result["reset"], result
    matches = [event for event in result["events"] if int(event["id"]) == event_id]
    assert matches, f"event {event_id} not found on {topic!r}: {result}"
    return matches[0]


def poll_all(server, topics, after, count, timeout=20):
    """Every event on these topics after `after`, until `count` of them (/poll may page)."""
    query = "&".join(f"topic={urllib.parse.quote(topic)}" for topic in topics)
    events, last, deadline = [], after, time.time() + timeout
    while len(events) < count and time.time() < deadline:
        result = poll(server, f"{query}&lastEventId={last}")
        assert not result["reset"], result
        if not result["events"]:
            break
        events += result["events"]
        last = int(result["events"][-1]["id"])
    return events


def metric(server, name):
    status, body = server.request("GET", "/metrics")
    assert status == 200
    values = [float(match.group(1)) for match in
              re.finditer(rf"^{name}(?:\{{[^}}]*\}})?\s+(\S+)\s*$", body.decode(), re.MULTILINE)]
    assert values, f"no {name} in /metrics"
    return sum(values)


def publish(server, topic, data, type=None, headers=None):
    query = f"topic={urllib.parse.quote(topic)}" + (f"&type={type}" if type else "")
    status, body = server.request("POST", f"/events?{query}", data.encode(),
                                  {"Content-Type": "text/plain", **(headers or {})})
    assert status == 200, body
    return int(json.loads(body)["ids"][0])


def wait_subscribed(server, topic=None, client=None, timeout=10):
    """Until /clients lists a client on `topic` (or the client token `client`)."""
    def listed():
        if client:
            status, body = server.request("GET", f"/clients/{client}")
            return status == 200 and (topic is None or topic in json.loads(body)["topics"])
        status, body = server.request("GET", "/clients")
        return status == 200 and any(topic in entry["topics"] for entry in json.loads(body)["clients"])
    wait_for(listed, timeout=timeout, what=f"a subscriber on {topic or client}")


class Sub:
    """A running `herald sub`; stdout and stderr are read line by line by threads."""

    def __init__(self, *args, env=None):
        self.args = args
        self.process = subprocess.Popen([herald_binary(), "sub", *args], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        env=env if env is not None else cli_env())
        self.lines = queue.Queue()
        self.stdout, self.stderr = [], []
        self.stdout_closed = threading.Event()
        threading.Thread(target=self._read, args=(self.process.stdout, self.stdout, self.lines), daemon=True).start()
        threading.Thread(target=self._read, args=(self.process.stderr, self.stderr, None), daemon=True).start()

    def _read(self, pipe, into, lines):
        for raw in iter(pipe.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            into.append(line)
            if lines is not None:
                lines.put(line)
        if lines is not None:
            self.stdout_closed.set()

    def stderr_text(self):
        return "\n".join(self.stderr)

    def next_line(self, timeout=2.0):
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"herald sub {' '.join(self.args)}: no line on stdout within {timeout} s "
                                 f"(running: {self.process.poll() is None}; stdout so far {self.stdout}; "
                                 f"stderr {self.stderr_text()!r})") from None

    def expect_quiet(self, seconds):
        try:
            line = self.lines.get(timeout=seconds)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected line on stdout: {line!r} (all: {self.stdout})")

    def interrupt(self, timeout=5):
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"herald sub did not exit within {timeout} s of SIGINT") from None

    def wait_exit(self, timeout=15):
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"herald sub still running after {timeout} s; stderr {self.stderr_text()!r}") from None
        self.stdout_closed.wait(2)
        time.sleep(0.1)  # let the stderr thread drain
        return code

    def close(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def sub():
    started = []

    def start(*args, env=None):
        process = Sub(*args, env=env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()


def line_for(event_id, type, text):
    return f"{event_id} {type or '-'} {text}"


# ---------------------------------------------------------------- herald pub

def test_pub_argument_and_standard_input(herald_factory):
    server = herald_factory()
    event_id = one_id(cli("pub", "--url", server.url, "t", "hello"))
    event = event_at(server, "t", event_id)
    assert (event["data"], event["type"], event["topic"]) == ("hello", None, "t")

    event_id = one_id(cli("pub", "--url", server.url, "t", "héllo wörld  two spaces"))
    assert event_at(server, "t", event_id)["data"] == "héllo wörld  two spaces"

    for stdin, data in (("x\n", "x"), ("a\n\n", "a\n"), ("no newline", "no newline"),
                        ("two\nlines\n", "two\nlines"), ("", "")):
        event_id = one_id(cli("pub", "--url", server.url, "t", input=stdin))
        assert event_at(server, "t", event_id)["data"] == data, f"stdin {stdin!r}"


def test_pub_topics_type_retain(herald_factory):
    server = herald_factory()
    event_id = one_id(cli("pub", "--url", server.url, "--topic", "t2", "--topic", "t3", "t", "fan-out"))
    for topic in ("t", "t2", "t3"):
        assert event_at(server, topic, event_id)["data"] == "fan-out", topic
    assert poll(server, f"topic=t4&lastEventId={event_id - 1}")["events"] == []

    event_id = one_id(cli("pub", "--url", server.url, "--type", "price", "t", "42"))
    assert event_at(server, "t", event_id)["type"] == "price"

    retained = one_id(cli("pub", "--url", server.url, "--retain", "r", "state-1"))
    one_id(cli("pub", "--url", server.url, "r", "not retained"))
    result = poll(server, "topic=r")  # a new subscriber without Last-Event-ID
    assert [(int(event["id"]), event["data"]) for event in result["events"]] == [(retained, "state-1")]
    one_id(cli("pub", "--url", server.url, "plain", "not retained"))
    assert poll(server, "topic=plain")["events"] == [], "an event published without --retain was retained"


def test_pub_idempotency_key(herald_factory):
    server = herald_factory()
    first = one_id(cli("pub", "--url", server.url, "--idempotency-key", "k-1", "t", "once"))
    again = one_id(cli("pub", "--url", server.url, "--idempotency-key", "k-1", "t", "twice?"))
    assert again == first
    assert poll(server, f"topic=t&lastEventId={first}")["events"] == [], "the retry published something"
    other = one_id(cli("pub", "--url", server.url, "--idempotency-key", "k-2", "t", "other"))
    assert other > first


def test_pub_publish_key_and_refusals(herald_factory):
    server = herald_factory("--publish-key", PUBLISH_KEY)
    event_id = one_id(cli("pub", "--url", server.url, "--key", PUBLISH_KEY, "t", "with --key"))
    assert event_at(server, "t", event_id)["data"] == "with --key"
    event_id = one_id(cli("pub", "--url", server.url, "t", "from env", env=cli_env(HERALD_PUBLISH_KEY=PUBLISH_KEY)))
    assert event_at(server, "t", event_id)["data"] == "from env"

    no_key = problem_detail(server.request("POST", "/events?topic=t", b"x", {"Content-Type": "text/plain"}), 401)
    assert_refused(cli("pub", "--url", server.url, "t", "no key"), no_key)
    wrong = problem_detail(server.request("POST", "/events?topic=t", b"x", {
        "Content-Type": "text/plain", "Authorization": "Bearer wrong"}), 401)
    assert_refused(cli("pub", "--url", server.url, "--key", "wrong", "t", "bad key"), wrong)

    star = problem_detail(server.request("POST", "/events?topic=bad%2A", b"x", {
        "Content-Type": "text/plain", "Authorization": f"Bearer {PUBLISH_KEY}"}), 400)
    assert_refused(cli("pub", "--url", server.url, "--key", PUBLISH_KEY, "bad*", "x"), star)

    line = b'{"topic": "bad*", "data": "x"}\n'
    ndjson = problem_detail(server.request("POST", "/events", line, {
        "Content-Type": "application/x-ndjson", "Authorization": f"Bearer {PUBLISH_KEY}"}), 400)
    assert_refused(cli("pub", "--ndjson", "--url", server.url, "--key", PUBLISH_KEY, "t", input=line), ndjson)
    assert poll(server, f"topic=t&lastEventId={event_id}")["events"] == [], "a refused publish published"

    dead = f"http://127.0.0.1:{free_port()}"
    result = cli("pub", "--url", dead, "t", "nobody there")
    assert result.returncode != 0 and result.stdout == b""
    assert dead.split("//")[1] in result.stderr.decode(), result.stderr


# ---------------------------------------------------------------- herald pub --ndjson

def test_pub_ndjson_ten_thousand_lines(herald_factory):
    server = herald_factory("--history", "20000")
    count = 10_000
    lines = [json.dumps({"topic": "nd2", "data": str(i)}) if i % 10 == 3 else json.dumps({"data": str(i)})
             for i in range(count)]
    requests_before = metric(server, "herald_publish_requests_total")
    started = time.time()
    result = cli("pub", "--ndjson", "--url", server.url, "nd1", input="\n".join(lines) + "\n", timeout=60)
    elapsed = time.time() - started
    ids = printed_ids(result)
    assert len(ids) == count
    assert all(a < b for a, b in zip(ids, ids[1:])), "ids not strictly increasing"
    requests = metric(server, "herald_publish_requests_total") - requests_before
    assert 10 <= requests <= 25, f"{requests} publish requests for {count} lines (batches of <= 1000 lines)"
    assert elapsed < 30

    events = poll_all(server, ["nd1", "nd2"], ids[0] - 1, count)
    assert [int(event["id"]) for event in events] == ids
    assert [event["data"] for event in events] == [str(i) for i in range(count)]
    assert [event["topic"] for event in events] == ["nd2" if i % 10 == 3 else "nd1" for i in range(count)]


def test_pub_ndjson_sends_within_50_ms_and_uses_default_topics(herald_factory):
    server = herald_factory()
    marker = publish(server, "u1", "marker")
    process = subprocess.Popen([herald_binary(), "pub", "--ndjson", "--url", server.url, "--topic", "u2", "u1"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env())
    try:
        process.stdin.write(b'{"data": "a"}\n{"type": "k", "data": {"n": 1}}\n{"topic": "own", "data": "c"}\n')
        process.stdin.flush()
        started = time.time()
        result = poll(server, f"topic=u1&lastEventId={marker}", timeout=5)  # stdin is still open
        assert time.time() - started < 2, "the lines were not sent while standard input stayed open"
        deadline = time.time() + 2
        events = result["events"]
        while len(events) < 2 and time.time() < deadline:
            events += poll(server, f"topic=u1&lastEventId={events[-1]['id']}", timeout=1)["events"]
        assert [(event["type"], event["data"]) for event in events] == [(None, "a"), ("k", '{"n":1}')]
        assert process.poll() is None
        out, err = process.communicate(timeout=10)  # closes standard input
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    ids = [int(line) for line in out.decode().split()]
    assert len(ids) == 3 and ids[0] < ids[1] < ids[2]
    assert [int(event["id"]) for event in events] == ids[:2]
    assert [int(e["id"]) for e in poll(server, f"topic=u2&lastEventId={marker}")["events"]] == ids[:2]
    assert [int(e["id"]) for e in poll(server, f"topic=own&lastEventId={marker}")["events"]] == ids[2:]


def test_pub_ndjson_batches_fit_the_default_body_limit(herald_factory):
    """Beyond the letter of §15 (which names 1000 lines / 50 ms): 1000 lines of 2 KB events,
    each far under --max-event-bytes, must not make one body over the default
    --max-body-bytes (1 MiB) that the server refuses with 413."""
    server = herald_factory()
    count = 1500
    body = "".join(json.dumps({"data": "x" * 2000 + str(i)}) + "\n" for i in range(count))
    ids = printed_ids(cli("pub", "--ndjson", "--url", server.url, "big", input=body))
    assert len(ids) == count
    events = poll_all(server, ["big"], ids[0] - 1, count)
    assert [event["data"] for event in events] == ["x" * 2000 + str(i) for i in range(count)]


def test_pub_ndjson_idempotency_key_per_batch(herald_factory):
    server = herald_factory()
    count = 2500
    body = "".join(json.dumps({"topic": "idem", "data": f"d{i}"}) + "\n" for i in range(count))
    first = printed_ids(cli("pub", "--ndjson", "--url", server.url, "--idempotency-key", "K", input=body))
    assert len(first) == count
    second = printed_ids(cli("pub", "--ndjson", "--url", server.url, "--idempotency-key", "K", input=body))
    assert second == first, "the second run with the same --idempotency-key printed other ids"
    assert poll(server, f"topic=idem&lastEventId={first[-1]}")["events"] == [], "the second run published"

    covered, number = [], 1
    while len(covered) < count and number <= 12:  # the batches' keys are K, K.2, K.3, ...
        key = "K" if number == 1 else f"K.{number}"
        status, answer = server.request("POST", "/events?topic=probe", b"probe",
                                        {"Content-Type": "text/plain", "Idempotency-Key": key})
        assert status == 200, answer
        batch = [int(i) for i in json.loads(answer)["ids"]]
        assert 1 <= len(batch) <= 1000 and batch == first[len(covered):len(covered) + len(batch)], \
            f"key {key!r} does not name batch {number}: {batch[:3]}... (printed {first[len(covered):len(covered) + 3]}...)"
        covered += batch
        number += 1
    assert covered == first


# ---------------------------------------------------------------- herald sub

def test_sub_prints_events_line_by_line(herald_factory, sub):
    server = herald_factory("--keepalive", "1")
    before = publish(server, "t", "before the subscriber")
    subscriber = sub("--url", server.url, "t")
    wait_subscribed(server, "t")
    subscriber.expect_quiet(1.5)  # no hello, no replay without Last-Event-ID, no keep-alive comment
    for data, type, shown in (("hello world", None, "hello world"), ("42.5", "price", "42.5"),
                              ("a\nb\r\nc", None, "a\\nb\\nc"), ("", None, "")):
        event_id = publish(server, "t", data, type=type)
        publish(server, "other", "not subscribed")
        assert subscriber.next_line(2.0) == line_for(event_id, type, shown)
    assert subscriber.interrupt(timeout=3) == 0
    assert not any("herald." in line for line in subscriber.stdout)
    assert all(not line.startswith(f"{before} ") for line in subscriber.stdout)


def test_sub_json(herald_factory, sub):
    server = herald_factory()
    odd = "a b&c=d/é+x"  # a topic that needs percent-encoding
    subscriber = sub("--url", server.url, "--json", "t", "q/*", odd)
    wait_subscribed(server, "t")
    sent = [(publish(server, "t", "plain"), None, "plain"),
            (publish(server, "q/a", "x\ny", type="price"), "price", "x\ny"),
            (one_id(cli("pub", "--url", server.url, odd, "odd topic")), None, "odd topic"),
            (publish(server, "t", '{"not": "parsed"}'), None, '{"not": "parsed"}')]
    for event_id, type, data in sent:
        line = subscriber.next_line(2.0)
        obj = json.loads(line)
        assert str(obj["id"]) == str(event_id) and obj["type"] == type and obj["data"] == data, line
    assert subscriber.interrupt(timeout=3) == 0


def test_sub_last_event_id_and_direct_messages(herald_factory, sub):
    server = herald_factory()
    ids = [publish(server, "t", f"old-{n}") for n in range(4)]
    subscriber = sub("--url", server.url, "--last-event-id", str(ids[1]), "--client", "cli-direct-token", "t")
    assert subscriber.next_line(3.0) == line_for(ids[2], None, "old-2")
    assert subscriber.next_line(2.0) == line_for(ids[3], None, "old-3")
    wait_subscribed(server, client="cli-direct-token")
    status, body = server.request("POST", "/clients/cli-direct-token/events?type=note", b"just for you",
                                  {"Content-Type": "text/plain"})
    assert status == 200, body
    direct = int(json.loads(body)["ids"][0])
    assert subscriber.next_line(2.0) == line_for(direct, "note", "just for you")
    live = publish(server, "t", "live")
    assert subscriber.next_line(2.0) == line_for(live, None, "live")
    assert subscriber.interrupt(timeout=3) == 0

    direct_only = sub("--url", server.url, "--client", "cli-direct-only")  # no topic: direct messages only
    wait_subscribed(server, client="cli-direct-only")
    publish(server, "t", "not for it")
    status, body = server.request("POST", "/clients/cli-direct-only/events", b"only", {"Content-Type": "text/plain"})
    assert status == 200, body
    assert direct_only.next_line(2.0) == line_for(int(json.loads(body)["ids"][0]), None, "only")
    assert direct_only.interrupt(timeout=3) == 0


def test_sub_reconnects_after_its_stream_is_closed(herald_factory, sub):
    server = herald_factory("--retry-ms", "200")
    token = "cli-reconnect-token"
    subscriber = sub("--url", server.url, "--client", token, "t")
    wait_subscribed(server, "t", client=token)
    first = publish(server, "t", "e0")
    assert subscriber.next_line(2.0) == line_for(first, None, "e0")
    replays = metric(server, "herald_replays_total")
    status, _ = server.request("DELETE", f"/clients/{token}")
    assert status == 204
    ids = [publish(server, "t", f"e{n}") for n in (1, 2, 3)]
    for n, event_id in enumerate(ids, start=1):
        assert subscriber.next_line(5.0) == line_for(event_id, None, f"e{n}")
    subscriber.expect_quiet(1.0)  # nothing twice
    assert subscriber.process.poll() is None
    assert metric(server, "herald_replays_total") > replays, "it did not reconnect with a Last-Event-ID"
    after = publish(server, "t", "after")
    assert subscriber.next_line(2.0) == line_for(after, None, "after")
    assert subscriber.interrupt(timeout=3) == 0


def test_sub_resumes_across_a_server_restart(herald_factory, sub, tmp_path):
    store = f"sqlite:{tmp_path / 'herald.sqlite'}"
    server = herald_factory("--store", store, "--retry-ms", "200")
    subscriber = sub("--url", server.url, "t")
    wait_subscribed(server, "t")
    first = publish(server, "t", "before")
    assert subscriber.next_line(2.0) == line_for(first, None, "before")
    server.stop()
    time.sleep(0.5)
    assert subscriber.process.poll() is None, f"sub exited while the server was away: {subscriber.stderr_text()!r}"
    server = herald_factory("--store", store, "--retry-ms", "200", port=server.port)
    ids = [publish(server, "t", f"after-{n}") for n in range(3)]
    for n, event_id in enumerate(ids):
        assert subscriber.next_line(15.0) == line_for(event_id, None, f"after-{n}")
    subscriber.expect_quiet(1.0)
    assert subscriber.interrupt(timeout=3) == 0


def test_sub_waits_for_a_server_that_is_not_up_yet(herald_factory, sub):
    port = free_port()
    early = sub("--url", f"http://127.0.0.1:{port}", "t")
    time.sleep(1.0)
    assert early.process.poll() is None, f"sub gave up on a refused connection: {early.stderr_text()!r}"
    assert early.stdout == []
    server = herald_factory("--retry-ms", "200", port=port)
    wait_subscribed(server, "t", timeout=10)
    event_id = publish(server, "t", "finally")
    assert early.next_line(2.0) == line_for(event_id, None, "finally")
    server.stop()
    time.sleep(0.3)
    started = time.time()
    assert early.interrupt(timeout=3) == 0  # also while waiting to reconnect
    assert time.time() - started < 2


def test_sub_exits_when_its_reader_goes_away(herald_factory):
    """`herald sub t | head -n 1` must end: a write to a closed pipe stops it (SIGPIPE or an
    exit), instead of running on forever."""
    server = herald_factory()
    read_end, write_end = os.pipe()
    process = subprocess.Popen([herald_binary(), "sub", "--url", server.url, "t"], stdin=subprocess.DEVNULL,
                               stdout=write_end, stderr=subprocess.DEVNULL, env=cli_env())
    os.close(write_end)
    try:
        wait_subscribed(server, "t")
        publish(server, "t", "first")
        reader = os.fdopen(read_end, "rb")
        assert reader.readline().endswith(b" - first\n")
        reader.close()
        for n in range(5):
            publish(server, "t", f"into the void {n}")
            time.sleep(0.1)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            raise AssertionError("herald sub kept running after its stdout was closed") from None
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_sub_reports_a_reset_on_stderr(herald_factory, sub):
    server = herald_factory("--history", "5", "--retry-ms", "200")
    ids = [publish(server, "t", f"old-{n}") for n in range(20)]
    assert ids[15] - 1 > 1  # so Last-Event-ID 1 is below the history
    subscriber = sub("--url", server.url, "--last-event-id", "1", "--client", "cli-reset-token", "t")
    wait_for(lambda: "herald.reset" in subscriber.stderr_text(), timeout=5, what="herald.reset on stderr")
    wait_subscribed(server, "t")
    subscriber.expect_quiet(0.5)
    live = publish(server, "t", "goes on")
    assert subscriber.next_line(2.0) == line_for(live, None, "goes on")
    assert subscriber.process.poll() is None
    # It resumes from the reset's id (then the live one), not from 1 again: no second reset.
    assert server.request("DELETE", "/clients/cli-reset-token")[0] == 204
    later = publish(server, "t", "later")
    assert subscriber.next_line(5.0) == line_for(later, None, "later")
    assert subscriber.stderr_text().count("herald.reset") == 1, subscriber.stderr_text()
    assert not any("herald." in line for line in subscriber.stdout)
    assert subscriber.interrupt(timeout=3) == 0


def test_sub_with_subscriber_tokens(herald_factory, sub):
    server = herald_factory("--subscriber-key", KEY)
    token = cli("token", "--key", KEY, "--topic", "t", "--ttl", "60")
    assert token.returncode == 0, token.stderr
    token = token.stdout.decode().strip()
    subscriber = sub("--url", server.url, "--token", token, "t")
    wait_subscribed(server, "t")
    event_id = publish(server, "t", "granted")
    assert subscriber.next_line(2.0) == line_for(event_id, None, "granted")
    assert subscriber.interrupt(timeout=3) == 0

    missing = problem_detail(server.request("GET", "/events?topic=t", headers={"Accept": "text/event-stream"}), 401)
    refused = sub("--url", server.url, "t")
    assert refused.wait_exit(15) != 0
    assert refused.stdout == []
    assert missing in refused.stderr_text(), f"no 401 detail {missing!r} in {refused.stderr_text()!r}"

    other = cli("token", "--key", KEY, "--topic", "other", "--ttl", "60").stdout.decode().strip()
    forbidden = problem_detail(server.request("GET", "/events?topic=t", headers={
        "Accept": "text/event-stream", "Authorization": f"Bearer {other}"}), 403)
    refused = sub("--url", server.url, "--token", other, "t")
    assert refused.wait_exit(15) != 0
    assert refused.stdout == []
    assert forbidden in refused.stderr_text(), f"no 403 detail {forbidden!r} in {refused.stderr_text()!r}"


# ---------------------------------------------------------------- --url, HERALD_URL, serve

def port_is_free(port):
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_url_environment_variable(herald_factory, sub):
    server = herald_factory()
    dead = f"http://127.0.0.1:{free_port()}"
    env = cli_env(HERALD_URL=server.url)
    event_id = one_id(cli("pub", "t", "via HERALD_URL", env=env))
    assert event_at(server, "t", event_id)["data"] == "via HERALD_URL"
    event_id = one_id(cli("pub", "--url", server.url, "t", "url flag wins", env=cli_env(HERALD_URL=dead)))
    assert event_at(server, "t", event_id)["data"] == "url flag wins"
    event_id = one_id(cli("pub", "--url", server.url + "/", "t", "trailing slash"))
    assert event_at(server, "t", event_id)["data"] == "trailing slash"
    subscriber = sub("t", env=env)
    wait_subscribed(server, "t")
    event_id = publish(server, "t", "seen")
    assert subscriber.next_line(2.0) == line_for(event_id, None, "seen")
    assert subscriber.interrupt(timeout=3) == 0


def test_url_defaults_to_port_8080(herald_factory):
    if not port_is_free(8080):
        pytest.skip("port 8080 is in use")
    server = herald_factory(port=8080)
    event_id = one_id(cli("pub", "t", "default url"))
    assert event_at(server, "t", event_id)["data"] == "default url"


@pytest.mark.parametrize("subcommand", [[], ["serve"]])
def test_server_still_starts(subcommand):
    port = free_port()
    process = subprocess.Popen([herald_binary(), *subcommand, "--host", "127.0.0.1", "--port", str(port),
                                "--public", os.path.join(ROOT, "public"), "--log-level", "warning"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=cli_env())
    try:
        line = process.stdout.readline().decode()
        assert line.strip() == f"listening on http://127.0.0.1:{port}", line
        result = one_id(cli("pub", "--url", f"http://127.0.0.1:{port}", "t", "served"))
        assert result > 0
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
