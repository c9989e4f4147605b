"""Crash safety of --store sqlite: publishers at full speed, `kill -9` of the server at a
random moment, restart on the same file, several rounds. Every acknowledged event must be
there and replay to a subscriber resuming from before it; ids keep increasing; a batch that
was not acknowledged is either wholly there or wholly absent."""
import http.client
import json
import random
import threading
import time

from conftest import Herald, free_port

ROUNDS = 5
PUBLISHERS = 4
BATCH = 3


def publisher(port, round_number, number, stop, acked, unanswered, errors):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    sequence = 0
    while not stop.is_set():
        tag = f"r{round_number}-p{number}-{sequence}"
        body = "\n".join(json.dumps({"data": f"{tag}/{part}"}) for part in range(BATCH)) + "\n"
        try:
            connection.request("POST", "/events?topic=crash", body=body.encode(),
                               headers={"Content-Type": "application/x-ndjson"})
            response = connection.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException):
            unanswered.add(tag)  # sent (perhaps), no answer: the server died
            return
        if response.status == 200:
            acked[tag] = [int(i) for i in json.loads(payload)["ids"]]
        else:
            errors.append((tag, response.status, payload[:200]))
            return
        sequence += 1


def read_stream(port, last_event_id, until_id, timeout=60):
    """Replays topic=crash after last_event_id until the event with until_id; returns
    [(id, data)]."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    connection.request("GET", "/events?topic=crash", headers={
        "Accept": "text/event-stream", "Last-Event-ID": str(last_event_id)})
    response = connection.getresponse()
    assert response.status == 200
    events, current_id, current_type, data = [], None, None, []
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = response.readline()
        assert line, "stream ended early"
        line = line.decode().rstrip("\r\n")
        if line == "":
            if data or current_id is not None:
                assert current_type != "herald.reset", "the history was reset: acknowledged events are gone"
                if current_type is None:
                    events.append((current_id, "\n".join(data)))
                    if current_id == until_id:
                        connection.close()
                        return events
            current_id, current_type, data = None, None, []
        elif line.startswith("id: "):
            current_id = int(line[4:])
        elif line.startswith("event: "):
            current_type = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
    raise AssertionError(f"did not reach id {until_id} within {timeout} s ({len(events)} events)")


def test_kill_minus_9_loses_nothing_acknowledged(tmp_path):
    store = f"sqlite:{tmp_path / 'events.db'}"
    port = free_port()
    acked, unanswered, errors = {}, set(), []
    rng = random.Random()
    for round_number in range(ROUNDS):
        server = Herald("--store", store, "--history", "1000000", port=port).start()
        stop = threading.Event()
        threads = [threading.Thread(target=publisher, args=(port, round_number, n, stop, acked, unanswered, errors))
                   for n in range(PUBLISHERS)]
        for thread in threads:
            thread.start()
        time.sleep(rng.uniform(0.3, 1.5))
        server.process.kill()  # SIGKILL: no shutdown, no flush
        server.process.wait()
        stop.set()
        for thread in threads:
            thread.join(timeout=20)
        server.process = None
        assert not errors, errors
        assert any(tag.startswith(f"r{round_number}-") for tag in acked), f"round {round_number} acknowledged nothing"

    server = Herald("--store", store, "--history", "1000000", port=port).start()
    try:
        sentinel = server.publish("crash", "sentinel")
        first = min(min(ids) for ids in acked.values())
        seen = read_stream(port, first - 1, sentinel)
    finally:
        server.stop()

    ids = [event_id for event_id, _ in seen]
    assert ids == sorted(ids) and len(ids) == len(set(ids)), "replay out of order or duplicated"
    by_data = {data: event_id for event_id, data in seen}
    # Every acknowledged event is there, under the id its publisher was given.
    for tag, tag_ids in acked.items():
        for part, event_id in enumerate(tag_ids):
            assert by_data.get(f"{tag}/{part}") == event_id, f"acknowledged {tag}/{part} (id {event_id}) is missing"
    # Nothing that was not published appears; an unanswered batch is all there or all absent.
    batches = {}
    for event_id, data in seen:
        if data == "sentinel":
            continue
        tag, _, part = data.rpartition("/")
        assert tag in acked or tag in unanswered, f"unexpected event {data!r}"
        batches.setdefault(tag, []).append((int(part), event_id))
    for tag, parts in batches.items():
        assert [part for part, _ in parts] == list(range(BATCH)), f"batch {tag} is half there: {parts}"
        assert [event_id for _, event_id in parts] == list(range(parts[0][1], parts[0][1] + BATCH))
    # Ids keep increasing across restarts: each round's events come after the last round's.
    spans = {}
    for tag, parts in batches.items():
        round_number = int(tag.split("-")[0][1:])
        low, high = spans.get(round_number, (parts[0][1], parts[-1][1]))
        spans[round_number] = (min(low, parts[0][1]), max(high, parts[-1][1]))
    for round_number in range(1, ROUNDS):
        assert spans[round_number - 1][1] < spans[round_number][0], f"round {round_number} reused ids"
    assert sentinel > max(ids[:-1])
    print(f"crash test: {ROUNDS} rounds, {len(acked)} acknowledged batches, "
          f"{len(unanswered)} unanswered ({sum(1 for t in unanswered if t in batches)} of them committed), "
          f"{len(seen)} events replayed")
