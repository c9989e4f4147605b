#!/usr/bin/env python3
"""Soak test driver for a running Herald (scripts/soak.sh starts one).

For DURATION seconds it publishes at a bounded rate over TOPICS topics, keeps LONG streams
open (dropped and resumed with Last-Event-ID all at once every STORM seconds: a reconnect
storm), and runs CHURN clients that subscribe, read for a moment, leave and come back
resuming. Every stream's ids are checked: strictly increasing, no herald.reset, and no
published id of its topic missing between the first and last id it saw. Every 10 s it
samples the server's RSS and open file descriptors from /proc. It prints a table and a JSON
summary and exits non-zero on any error or if RSS grew by more than the allowed share after
warm-up.
"""
import argparse
import asyncio
import json
import os
import random
import sys
import time


def proc_sample(pid):
    rss = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss, fds


class Stats:
    def __init__(self):
        self.published = {}  # topic -> [ids]
        self.publish_errors = 0
        self.delivered = 0
        self.errors = []
        self.connects = 0
        self.resets = 0
        self.streams_open = 0

    def error(self, text):
        if len(self.errors) < 50:
            self.errors.append(text)


async def publisher(host, port, rate, topics, stop, stats):
    reader, writer = await asyncio.open_connection(host, port)
    interval = 0.05
    per_batch = max(1, int(rate * interval))
    sequence = 0
    next_at = time.monotonic()
    while not stop.is_set():
        lines = []
        batch_topics = []
        for _ in range(per_batch):
            topic = f"soak/{random.randrange(topics)}"
            batch_topics.append(topic)
            lines.append(json.dumps({"data": f"{sequence}", "topic": topic}))
            sequence += 1
        body = ("\n".join(lines) + "\n").encode()
        writer.write(b"POST /events HTTP/1.1\r\nHost: soak\r\nContent-Type: application/x-ndjson\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")][0].split(b":")[1])
        payload = await reader.readexactly(length)
        if not head.startswith(b"HTTP/1.1 200"):
            stats.publish_errors += 1
            stats.error(f"publish answered {head[:40]!r} {payload[:100]!r}")
        else:
            for topic, event_id in zip(batch_topics, json.loads(payload)["ids"]):
                stats.published.setdefault(topic, []).append(int(event_id))
        next_at += interval
        delay = next_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            next_at = time.monotonic()
    writer.close()


class Subscriber:
    """One logical client: one topic, a token, the ids it has seen across connections."""

    def __init__(self, topic, token):
        self.topic = topic
        self.token = token
        self.last_id = None
        self.seen = []

    async def session(self, host, port, duration, stats, stop):
        """One connection: subscribe (resuming), read for `duration` s or until `stop`."""
        headers = f"GET /events?topic={self.topic}&client={self.token} HTTP/1.1\r\nHost: soak\r\nAccept: text/event-stream\r\n"
        if self.last_id is not None:
            headers += f"Last-Event-ID: {self.last_id}\r\n"
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as error:
            stats.error(f"connect failed: {error}")
            return
        stats.connects += 1
        stats.streams_open += 1
        try:
            writer.write((headers + "\r\n").encode())
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            if not head.startswith(b"HTTP/1.1 200"):
                stats.error(f"subscribe answered {head[:60]!r}")
                return
            deadline = time.monotonic() + duration
            buffer = b""
            event_id, event_type, has_data = None, None, False
            while time.monotonic() < deadline and not stop.is_set():
                try:
                    chunk = await asyncio.wait_for(reader.read(65536), max(0.05, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    break
                if not chunk:
                    stats.error(f"{self.token}: server closed the stream")
                    return
                buffer += chunk
                # Chunked framing is skipped line-wise: chunk-size lines are hex digits only
                # and never look like SSE fields.
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    line = line.rstrip(b"\r")
                    if line == b"":
                        if has_data and event_type is None and event_id is not None:
                            self.accept(event_id, stats)
                        elif event_type == b"herald.reset":
                            stats.resets += 1
                            stats.error(f"{self.token}: herald.reset after {self.last_id}")
                        event_id, event_type, has_data = None, None, False
                    elif line.startswith(b"id: "):
                        event_id = int(line[4:])
                    elif line.startswith(b"event: "):
                        event_type = line[7:]
                    elif line.startswith(b"data:"):
                        has_data = True
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as error:
            stats.error(f"{self.token}: {type(error).__name__} {error}")
        finally:
            stats.streams_open -= 1
            writer.close()

    def accept(self, event_id, stats):
        if self.last_id is not None and event_id <= self.last_id:
            stats.error(f"{self.token}: id {event_id} after {self.last_id} (duplicate or out of order)")
        self.last_id = event_id
        self.seen.append(event_id)
        stats.delivered += 1


async def long_lived(host, port, subscribers, storm_every, stop, stats):
    while not stop.is_set():
        # All of them connect at once, stay until the next storm, then drop together.
        sessions = [asyncio.create_task(s.session(host, port, storm_every, stats, stop)) for s in subscribers]
        await asyncio.gather(*sessions)


async def churner(host, port, subscriber, stop, stats):
    while not stop.is_set():
        await subscriber.session(host, port, random.uniform(0.2, 3.0), stats, stop)
        await asyncio.sleep(random.uniform(0.0, 1.0))


def check_gaps(subscribers, stats):
    missing = 0
    for subscriber in subscribers:
        if len(subscriber.seen) < 2:
            continue
        seen = set(subscriber.seen)
        first, last = subscriber.seen[0], subscriber.seen[-1]
        for event_id in stats.published.get(subscriber.topic, []):
            if first <= event_id <= last and event_id not in seen:
                missing += 1
                if missing <= 5:
                    stats.error(f"{subscriber.token}: missed id {event_id} of {subscriber.topic}")
    return missing


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--duration", type=float, default=600)
    parser.add_argument("--rate", type=int, default=200, help="events published per second")
    parser.add_argument("--topics", type=int, default=50)
    parser.add_argument("--long", type=int, default=1000, help="long-lived streams")
    parser.add_argument("--churn", type=int, default=200, help="churning clients")
    parser.add_argument("--storm", type=float, default=60, help="seconds between reconnect storms")
    parser.add_argument("--warmup", type=float, default=120)
    parser.add_argument("--max-growth", type=float, default=0.10, help="allowed RSS growth after warm-up")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    host = "127.0.0.1"
    stats = Stats()
    stop = asyncio.Event()
    long_subscribers = [Subscriber(f"soak/{i % args.topics}", f"long_{i:05d}") for i in range(args.long)]
    churn_subscribers = [Subscriber(f"soak/{i % args.topics}", f"churn_{i:05d}") for i in range(args.churn)]
    tasks = [asyncio.create_task(publisher(host, args.port, args.rate, args.topics, stop, stats)),
             asyncio.create_task(long_lived(host, args.port, long_subscribers, args.storm, stop, stats))]
    tasks += [asyncio.create_task(churner(host, args.port, s, stop, stats)) for s in churn_subscribers]
    samples = []
    start = time.monotonic()
    print(f"{'t (s)':>6} {'RSS (MiB)':>10} {'fds':>6} {'streams':>8} {'published':>10} {'delivered':>10} {'connects':>9} {'errors':>7}")
    while time.monotonic() - start < args.duration:
        await asyncio.sleep(min(10, args.duration - (time.monotonic() - start)))
        rss, fds = proc_sample(args.pid)
        elapsed = time.monotonic() - start
        published = sum(len(ids) for ids in stats.published.values())
        samples.append({"t": round(elapsed), "rss": rss, "fds": fds, "streams": stats.streams_open,
                        "published": published, "delivered": stats.delivered, "connects": stats.connects})
        print(f"{elapsed:6.0f} {rss / 2**20:10.1f} {fds:6d} {stats.streams_open:8d} {published:10d} "
              f"{stats.delivered:10d} {stats.connects:9d} {len(stats.errors):7d}", flush=True)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    missing = check_gaps(long_subscribers + churn_subscribers, stats)
    after = [s for s in samples if s["t"] >= args.warmup]
    baseline = after[0]["rss"] if after else samples[0]["rss"]
    peak = max(s["rss"] for s in after) if after else samples[-1]["rss"]
    final = samples[-1]["rss"]
    growth = (final - baseline) / baseline if baseline else 0
    summary = {
        "duration_s": args.duration, "rate": args.rate, "long_streams": args.long, "churn_clients": args.churn,
        "published": sum(len(ids) for ids in stats.published.values()), "delivered": stats.delivered,
        "connects": stats.connects, "missing": missing, "resets": stats.resets, "publish_errors": stats.publish_errors,
        "errors": stats.errors[:20], "rss_after_warmup": baseline, "rss_peak_after_warmup": peak, "rss_final": final,
        "rss_growth_after_warmup": round(growth, 4), "samples": samples,
    }
    if args.json:
        with open(args.json, "w") as out:
            json.dump(summary, out, indent=1)
    print(json.dumps({k: v for k, v in summary.items() if k != "samples"}, indent=1))
    failed = bool(stats.errors) or missing or growth > args.max_growth
    print("soak: FAILED" if failed else "soak: passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
