#!/usr/bin/env python3
"""Server CPU per HTTP request at a fixed, low request rate (issue 15).

herald-bench measures whole scenarios (streams, publishes, deliveries). This isolates the
request path: it sends one kind of request at a steady rate over a few keep-alive
connections (one request in flight per connection, no pipelining) and reads the server's
CPU time from /proc before and after a window in the middle of the run. Point it at Herald
and at Nginx+Nchan in turn, with the same rate, to compare what answering costs each.

    scripts/request-cost.py --pid PID[,PID...] --port 8080 --path '/events?topic=t-{n}' \
        --method POST --body '{n} hello' --rate 1000 --seconds 10

{n} in --path and --body is replaced by the request's sequence number (so every publish
goes to its own topic or channel when the path says so). Loopback targets only.
Prints one JSON line: requests answered per second in the window, status counts, and
server CPU (user, system, total) in microseconds per request.
"""
import argparse
import json
import os
import socket
import threading
import time

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids):
    user = system = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        user += int(fields[11])
        system += int(fields[12])
    return user / CLOCK_TICKS, system / CLOCK_TICKS


def read_response(sock, buffer):
    """Reads one response with a Content-Length body; returns (status, rest of buffer)."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a response head")
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside a response body")
        rest += chunk
    return status, rest[length:]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pid", required=True, help="server process ids, comma-separated (all of nginx's)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--method", default="GET")
    parser.add_argument("--path", default="/health")
    parser.add_argument("--body", default=None)
    parser.add_argument("--content-type", default="text/plain")
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=4)
    args = parser.parse_args()
    if not (args.host.startswith("127.") or args.host == "::1"):
        parser.error("loopback targets only")
    if not (1 <= args.rate <= 20000 and 2 <= args.seconds <= 120 and 1 <= args.connections <= 64):
        parser.error("rate 1..20000, seconds 2..120, connections 1..64")
    pids = [int(p) for p in args.pid.split(",") if p]

    sequence = iter(range(10**12))
    sequence_lock = threading.Lock()
    statuses = {}
    answered_at = []
    errors = []
    start = time.monotonic() + 0.5
    end = start + args.seconds
    per_connection = args.rate / args.connections

    def request_bytes(n):
        path = args.path.replace("{n}", str(n))
        head = f"{args.method} {path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n"
        body = b""
        if args.body is not None:
            body = args.body.replace("{n}", str(n)).encode()
            head += f"Content-Type: {args.content_type}\r\nContent-Length: {len(body)}\r\n"
        return (head + "\r\n").encode() + body

    def run(index):
        try:
            sock = socket.create_connection((args.host, args.port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buffer = b""
            due = start + index / args.rate
            while due < end:
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                with sequence_lock:
                    n = next(sequence)
                sock.sendall(request_bytes(n))
                status, buffer = read_response(sock, buffer)
                with sequence_lock:
                    statuses[status] = statuses.get(status, 0) + 1
                    answered_at.append(time.monotonic())
                due += 1 / per_connection
            sock.close()
        except Exception as error:  # reported, never hidden
            errors.append(repr(error))

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(args.connections)]
    for thread in threads:
        thread.start()
    # The window: the middle of the run, away from connecting and the last requests.
    window_start = start + min(2, args.seconds / 4)
    window_end = end - min(1, args.seconds / 8)
    time.sleep(max(0, window_start - time.monotonic()))
    cpu_before = cpu_seconds(pids)
    t0 = time.monotonic()
    time.sleep(max(0, window_end - time.monotonic()))
    cpu_after = cpu_seconds(pids)
    t1 = time.monotonic()
    for thread in threads:
        thread.join(timeout=args.seconds + 10)
    in_window = sum(1 for t in answered_at if t0 <= t < t1)
    user = cpu_after[0] - cpu_before[0]
    system = cpu_after[1] - cpu_before[1]
    per = (lambda s: round(s * 1e6 / in_window, 1)) if in_window else (lambda s: None)
    print(json.dumps({
        "requestsPerSecond": round(in_window / (t1 - t0), 1),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": errors[:3],
        "cpuMicrosecondsPerRequest": {"user": per(user), "system": per(system), "total": per(user + system)},
    }))
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
