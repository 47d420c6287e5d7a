#!/usr/bin/env python3
"""End-to-end tests of cobatch_server over loopback.

    server_e2e.py --server build/examples/server/cobatch_server [--only NAME]

Starts the server (real engine, seeded reference model) on ephemeral ports,
waits for /health, runs the checks, stops it with SIGTERM and requires exit
status 0. The official `openai` client drives completions, streaming,
concurrency and error objects; curl the plain cases; prometheus_client parses
/metrics; raw sockets do the abuse. Every wait and loop is bounded in time
and count. Exit status: 0 when every check passed, 1 otherwise.
"""

import argparse
import concurrent.futures
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback


def ensure_packages():
    """The openai and prometheus_client packages, installed with pip when missing."""
    missing = []
    for name in ("openai", "prometheus_client"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        print(f"installing {' '.join(missing)} with pip", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *missing],
                       check=True, timeout=300)


ensure_packages()
import openai  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

HOST = "127.0.0.1"
MODEL = None  # filled from the server's first line
CONTEXT = None  # the model's context length, from /v1/models
STEP_TIMEOUT = 60  # seconds any single client operation may take


class check_failed(Exception):
    pass


def expect(cond, what):
    if not cond:
        raise check_failed(what)


# --------------------------------------------------------------------------
# The server process


class server:
    def __init__(self, binary, *extra, name="server"):
        self.name = name
        self.log_path = os.path.join(os.environ.get("COBATCH_SERVER_TEST_DIR", "."), f"{name}.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([binary, "--host", HOST, "--port", "0", *extra],
                                     stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self._read_line(60)
        m = re.search(r"listening on http://[^:]+:(\d+) model=(\S+)", line or "")
        if not m:
            self.proc.kill()
            raise check_failed(f"{name}: no 'listening on' line (got {line!r}); see {self.log_path}")
        self.port = int(m.group(1))
        self.model = m.group(2)
        m = re.search(r"context=(\d+)", line)
        self.context = int(m.group(1)) if m else 256
        self.base = f"http://{HOST}:{self.port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status, _, _ = http_request(self.port, "GET", "/health")
            if status == 200:
                break
            time.sleep(0.05)
        else:
            raise check_failed(f"{name}: /health never answered 200")

    def _read_line(self, timeout):
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline() if ready else None

    def client(self, timeout=STEP_TIMEOUT):
        return openai.OpenAI(base_url=self.base + "/v1", api_key="unused", max_retries=0, timeout=timeout)

    def stop(self, sig=signal.SIGTERM, timeout=60):
        """Signals the server and returns its exit status (None if it hung)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            return None
        finally:
            self.log.close()

    def log_text(self):
        try:
            with open(self.log_path) as f:
                return f.read()
        except OSError:
            return ""


# --------------------------------------------------------------------------
# Plain HTTP helpers (raw sockets, so nothing is hidden by a client library)


def connect(port, timeout=STEP_TIMEOUT):
    s = socket.create_connection((HOST, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


_unread = {}  # socket -> bytes received past the last response read


def read_response(sock, deadline_s=STEP_TIMEOUT):
    """Reads one HTTP/1.1 response: (status, headers dict, body bytes), or
    (None, {}, b"") when the server closed the connection first. Bytes past
    the response stay for the next call (pipelining)."""
    sock.settimeout(deadline_s)
    data = _unread.pop(sock, b"")

    def more():
        chunk = sock.recv(65536)
        return chunk

    while b"\r\n\r\n" not in data:
        chunk = more()
        if not chunk:
            return None, {}, data
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        k, v = line.split(":", 1)
        headers[k.strip().lower()] = v.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            while b"\r\n" not in rest:
                chunk = more()
                expect(chunk, "connection closed inside a chunked body")
                rest += chunk
            size_line, rest = rest.split(b"\r\n", 1)
            size = int(size_line, 16)
            while len(rest) < size + 2:
                chunk = more()
                expect(chunk, "connection closed inside a chunk")
                rest += chunk
            body += rest[:size]
            rest = rest[size + 2:]
            if size == 0:
                break
        if rest:
            _unread[sock] = rest
        return status, headers, body
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = more()
        expect(chunk, "connection closed inside a body")
        rest += chunk
    if rest[length:]:
        _unread[sock] = rest[length:]
    return status, headers, rest[:length]


def http_request(port, method, path, body=None, headers=None):
    try:
        with connect(port, timeout=10) as s:
            payload = body.encode() if isinstance(body, str) else (body or b"")
            h = {"Host": f"{HOST}:{port}", "Connection": "close"}
            if body is not None:
                h["Content-Type"] = "application/json"
                h["Content-Length"] = str(len(payload))
            h.update(headers or {})
            req = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
            s.sendall(req.encode() + payload)
            return read_response(s)
    except (ConnectionError, OSError):
        return None, {}, b""


def wait_closed(sock, timeout):
    """True when the peer closes within `timeout` (reads and drops any bytes)."""
    deadline = time.monotonic() + timeout
    got = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return False, got
        except ConnectionError:
            return True, got
        if not chunk:
            return True, got
        got += chunk
    return False, got


def curl(*args):
    r = subprocess.run(["curl", "-sS", "--max-time", str(STEP_TIMEOUT), *args],
                       capture_output=True, text=True, timeout=STEP_TIMEOUT + 10)
    return r


def metrics(port):
    status, _, body = http_request(port, "GET", "/metrics")
    expect(status == 200, f"/metrics answered {status}")
    families = {}
    for f in text_string_to_metric_families(body.decode()):
        families[f.name] = f
    return families


def sample(families, family, name=None, **labels):
    f = families[family]
    for s in f.samples:
        if (name is None or s.name == name) and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise check_failed(f"no sample {name or family} {labels} in /metrics")


def wait_idle(srv, timeout=30):
    """Polls /metrics until nothing is queued, running, in flight or holding
    KV pages; fails with the last figures otherwise."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        m = metrics(srv.port)
        last = {k: sample(m, k) for k in ("cobatch_queue_depth", "cobatch_engine_waiting_requests",
                                          "cobatch_running_requests", "cobatch_in_flight_requests",
                                          "cobatch_kv_pages_in_use")}
        if all(v == 0 for v in last.values()):
            return m
        time.sleep(0.1)
    raise check_failed(f"gauges not back to zero after {timeout} s: {last}")


def long_generation(srv):
    """A max_tokens that takes many steps and still fits the context."""
    return max(16, srv.context - 64)


def completion_body(**kw):
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 8}
    body.update(kw)
    return json.dumps(body)


# --------------------------------------------------------------------------
# Checks on the main server


def check_health_and_models(srv):
    r = curl("-i", srv.base + "/health")
    expect(r.returncode == 0 and "200 OK" in r.stdout and '"status":"ok"' in r.stdout, f"curl /health: {r.stdout!r}")
    r = curl("-I", srv.base + "/health")
    expect("200 OK" in r.stdout and "Content-Length:" in r.stdout, f"HEAD /health: {r.stdout!r}")
    models = srv.client().models.list()
    ids = [m.id for m in models.data]
    expect(ids == [MODEL], f"models: {ids}")
    r = curl(srv.base + "/v1/models")
    card = json.loads(r.stdout)["data"][0]
    expect(card["tokenizer"] == "byte-level", f"tokenizer: {card}")
    expect(card["vocab_size"] >= 256 and card["max_model_len"] > 0, f"model card: {card}")


def check_completion(srv):
    c = srv.client()
    r = c.completions.create(model=MODEL, prompt="The quick brown fox", max_tokens=12, temperature=0, seed=1)
    expect(r.object == "text_completion" and len(r.choices) == 1, f"completion: {r}")
    ch = r.choices[0]
    expect(isinstance(ch.text, str), "text is a string")
    expect(ch.finish_reason in ("length", "stop"), f"finish_reason {ch.finish_reason}")
    expect(r.usage.prompt_tokens >= len("The quick brown fox"), f"usage {r.usage}")
    if ch.finish_reason == "length":
        expect(r.usage.completion_tokens == 12, f"usage {r.usage}")
    # curl, plain JSON
    out = curl("-H", "Content-Type: application/json", "-d",
               completion_body(prompt="The quick brown fox", max_tokens=12, temperature=0, seed=1),
               srv.base + "/v1/completions")
    body = json.loads(out.stdout)
    expect(body["choices"][0]["text"] == ch.text, "curl and openai agree on a greedy completion")


def check_streaming(srv):
    c = srv.client()
    whole = c.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=24, temperature=0)
    parts, reasons = [], []
    for chunk in c.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=24, temperature=0,
                                      stream=True):
        for ch in chunk.choices:
            parts.append(ch.text)
            reasons.append(ch.finish_reason)
    expect("".join(parts) == whole.choices[0].text,
           f"stream {''.join(parts)!r} != whole {whole.choices[0].text!r}")
    expect(reasons[-1] == whole.choices[0].finish_reason and all(r is None for r in reasons[:-1]),
           f"finish reasons {reasons}")
    # The raw stream, as curl sees it: SSE events ending with [DONE].
    out = curl("-N", "-H", "Content-Type: application/json", "-d",
               completion_body(prompt="Once upon a time", max_tokens=24, temperature=0, stream=True,
                               stream_options={"include_usage": True}),
               srv.base + "/v1/completions")
    events = [e for e in out.stdout.split("\n\n") if e.strip()]
    expect(events and events[-1].strip() == "data: [DONE]", f"stream does not end with [DONE]: {events[-2:]}")
    expect(all(e.startswith("data: ") for e in events), "every event is a data: line")
    usage = json.loads(events[-2][len("data: "):])
    expect(usage["choices"] == [] and usage["usage"]["completion_tokens"] >= 1, f"usage chunk {usage}")


def check_stop_sequence(srv):
    c = srv.client()
    tried = []
    for prompt in ("abc", "The stop sequence", "0123456789", "Hello, world", "zzz"):
        base = c.completions.create(model=MODEL, prompt=prompt, max_tokens=32, temperature=0).choices[0].text
        tried.append(base)
        # A stop sequence taken from the greedy text itself (a character the
        # model really produced, not a replacement for invalid bytes) must
        # cut the text where it first appears, streamed or not.
        picks = [i for i in range(1, len(base)) if base[i] != "\ufffd"]
        if not picks:
            continue
        stop = base[picks[0]]
        if picks[0] + 1 < len(base) and base[picks[0] + 1] != "\ufffd":
            stop = base[picks[0]:picks[0] + 2]
        cut = base[: base.find(stop)]
        r = c.completions.create(model=MODEL, prompt=prompt, max_tokens=32, temperature=0, stop=[stop, "\x00never"])
        expect(r.choices[0].text == cut and r.choices[0].finish_reason == "stop",
               f"stop {stop!r}: {r.choices[0].text!r} vs {cut!r}")
        parts = [ch.text for chunk in c.completions.create(model=MODEL, prompt=prompt, max_tokens=32,
                                                           temperature=0, stop=stop, stream=True)
                 for ch in chunk.choices]
        expect("".join(parts) == cut, f"streamed stop: {''.join(parts)!r} vs {cut!r}")
        return
    raise check_failed(f"no greedy text with a valid character to stop on: {tried!r}")


def check_errors(srv):
    c = srv.client()

    def api_error(exc_type, status, param=None, **kw):
        args = dict(model=MODEL, prompt="x", max_tokens=4)
        args.update(kw)
        try:
            c.completions.create(**args)
        except exc_type as e:
            expect(e.status_code == status, f"{kw}: status {e.status_code}")
            err = e.body
            expect(isinstance(err, dict) and isinstance(err.get("message"), str) and err.get("type"),
                   f"{kw}: error object {err}")
            if param is not None:
                expect(err.get("param") == param, f"{kw}: param {err.get('param')} != {param}")
            return err
        raise check_failed(f"{kw}: no {exc_type.__name__}")

    err = api_error(openai.NotFoundError, 404, "model", model="no-such-model")
    expect(err["code"] == "model_not_found", f"404 code {err}")
    api_error(openai.BadRequestError, 400, "max_tokens", max_tokens=0)
    api_error(openai.BadRequestError, 400, "max_tokens", max_tokens=10**7)
    api_error(openai.BadRequestError, 400, "temperature", temperature=5)
    api_error(openai.BadRequestError, 400, "top_p", top_p=0)
    api_error(openai.BadRequestError, 400, "stop", stop=["a", "b", "c", "d", "e"])
    api_error(openai.BadRequestError, 400, "prompt", prompt=[1, -3])
    api_error(openai.BadRequestError, 400, "n", n=3)
    api_error(openai.BadRequestError, 400, "prompt", prompt=[])

    for body, param in ((b"{not json", None), (b"[1,2]", None), (b'{"prompt":"x"}', "model"),
                        (json.dumps({"model": MODEL}).encode(), "prompt"),
                        (json.dumps({"model": MODEL, "prompt": "x", "max_tokens": "3"}).encode(), "max_tokens"),
                        (json.dumps({"model": MODEL, "prompt": "x", "stream": 1}).encode(), "stream"),
                        (json.dumps({"model": MODEL, "prompt": "x", "seed": 1.5}).encode(), "seed")):
        status, _, out = http_request(srv.port, "POST", "/v1/completions", body)
        expect(status == 400, f"{body!r}: status {status}")
        e = json.loads(out)["error"]
        expect(e["param"] == param and e["message"], f"{body!r}: {e}")

    r = curl("-i", srv.base + "/v1/completions")  # GET
    expect(" 405 " in r.stdout.split("\r\n")[0] and "Allow: POST" in r.stdout, f"GET completions: {r.stdout!r}")
    r = curl("-i", "-X", "DELETE", srv.base + "/health")
    expect(" 405 " in r.stdout.split("\r\n")[0], f"DELETE /health: {r.stdout!r}")
    r = curl("-i", srv.base + "/v2/nothing")
    expect(" 404 " in r.stdout.split("\r\n")[0] and '"error"' in r.stdout, f"unknown path: {r.stdout!r}")


def check_concurrent_and_determinism(srv):
    c = srv.client()
    args = dict(model=MODEL, prompt="Determinism", max_tokens=16, temperature=0.9, top_p=0.95, seed=1234)
    alone = c.completions.create(**args).choices[0].text
    again = c.completions.create(**args).choices[0].text
    expect(alone == again, f"same seed, different text alone: {alone!r} vs {again!r}")

    def one(i):
        if i % 4 == 0:
            return ("seeded", c.completions.create(**args).choices[0].text)
        if i % 4 == 1:
            return ("stream", "".join(ch.text for chunk in c.completions.create(
                **args, stream=True) for ch in chunk.choices))
        return ("other", c.completions.create(model=MODEL, prompt=f"Request {i} " * (1 + i % 5),
                                              max_tokens=8 + i % 24, temperature=0.7, seed=i).choices[0].text)

    with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(one, range(64), timeout=STEP_TIMEOUT * 2))
    expect(len(results) == 64, "64 concurrent requests answered")
    for kind, text in results:
        if kind in ("seeded", "stream"):
            expect(text == alone, f"{kind} under load: {text!r} vs alone {alone!r}")


def check_metrics(srv):
    m = wait_idle(srv)
    for fam in ("cobatch_requests", "cobatch_queue_depth", "cobatch_running_requests", "cobatch_kv_pages_in_use",
                "cobatch_tokens_per_second", "cobatch_time_to_first_token_seconds",
                "cobatch_time_per_output_token_seconds", "cobatch_step_time_seconds",
                "cobatch_generated_tokens", "cobatch_open_connections"):
        expect(fam in m, f"/metrics lacks {fam}")
    expect(m["cobatch_time_to_first_token_seconds"].type == "histogram", "ttft is a histogram")
    ok = sample(m, "cobatch_requests", "cobatch_requests_total", outcome="ok")
    expect(ok >= 70, f"ok requests {ok}")
    ttft = sample(m, "cobatch_time_to_first_token_seconds", "cobatch_time_to_first_token_seconds_count")
    expect(ttft >= 70, f"ttft count {ttft}")
    steps = sample(m, "cobatch_step_time_seconds", "cobatch_step_time_seconds_count")
    expect(steps > 0, "step time observed")
    expect(sample(m, "cobatch_generated_tokens") > 0, "tokens counted")
    expect(sample(m, "cobatch_kv_pages_total") > 0, "KV pages total")


# --------------------------------------------------------------------------
# Abuse


def raw_exchange(port, payload, timeout=10):
    with connect(port) as s:
        s.sendall(payload)
        status, headers, body = read_response(s, timeout)
        closed, _ = wait_closed(s, timeout)
        return status, headers, body, closed


def check_malformed(srv):
    cases = [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nBad Header Line\r\n\r\n", 400),
        (b"GET /health HTTP/9.9\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400),
        (b"POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"\x00\x01\x02\x03\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 431),
        (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n", 431),
        (b"POST /v1/completions HTTP/1.1\r\nContent-Length: 10000000\r\n\r\n", 413),
    ]
    for payload, want in cases:
        status, _, body, closed = raw_exchange(srv.port, payload)
        expect(status == want, f"{payload[:40]!r}: status {status}, want {want}")
        expect(closed, f"{payload[:40]!r}: connection left open after {status}")
        expect(json.loads(body)["error"]["message"], f"{payload[:40]!r}: error object")
    # A chunked body that grows past the limit.
    with connect(srv.port) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        status = None
        for _ in range(20):
            try:
                s.sendall(b"10000\r\n" + b"a" * 0x10000 + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            r, _, _ = select.select([s], [], [], 0)
            if r:
                break
        status, _, _ = read_response(s)
        expect(status == 413, f"oversized chunked body: {status}")
    # Pipelined requests on one connection, answered in order.
    with connect(srv.port) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        a = read_response(s)
        b = read_response(s)
        expect(a[0] == 200 and b"ok" in a[2] and b[0] == 200 and b"byte-level" in b[2], "pipelined answers")
    # Keep-alive: many requests on one connection.
    with connect(srv.port) as s:
        for i in range(200):
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            st, h, _ = read_response(s)
            expect(st == 200 and h.get("connection") == "keep-alive", f"keep-alive request {i}: {st} {h}")
    # The server still answers.
    expect(http_request(srv.port, "GET", "/health")[0] == 200, "healthy after malformed input")


def check_truncated_and_slow(srv, body_timeout_s, header_timeout_s):
    # A body cut short by the client's close: no answer is owed, nothing breaks.
    with connect(srv.port) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"model\":")
    # A body cut short with the connection held open: closed after the body timeout.
    with connect(srv.port) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"model\":")
        closed, _ = wait_closed(s, body_timeout_s + 10)
        expect(closed, "truncated body held open: never closed")
    # A slow client dribbling its headers (slowloris): closed after the header timeout.
    with connect(srv.port) as s:
        s.sendall(b"GET /health HTTP/1.1\r\n")
        start = time.monotonic()
        closed = False
        for i in range(int((header_timeout_s + 10) / 0.2)):
            try:
                s.sendall(b"X-Slow-%d: y\r\n" % i)
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            c, _ = wait_closed(s, 0.2)
            if c:
                closed = True
                break
        expect(closed, "slow client never closed")
        expect(time.monotonic() - start >= header_timeout_s * 0.9, "slow client closed before its timeout")
    m = metrics(srv.port)
    expect(sample(m, "cobatch_requests", "cobatch_requests_total", outcome="timeout") >= 2, "timeouts counted")
    expect(http_request(srv.port, "GET", "/health")[0] == 200, "healthy after slow clients")


def stream_then_vanish(port, n_events, max_tokens):
    """Starts a streaming completion, reads `n_events` SSE events, then closes
    the socket abruptly."""
    with connect(port) as s:
        body = completion_body(prompt="Vanishing " * 4, max_tokens=max_tokens, stream=True, temperature=0.8)
        s.sendall((f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n{body}").encode())
        data = b""
        s.settimeout(STEP_TIMEOUT)
        while data.count(b"data: ") < n_events:
            chunk = s.recv(65536)
            expect(chunk, "server closed a stream before the client vanished")
            data += chunk
        expect(data.startswith(b"HTTP/1.1 200"), f"stream head {data[:40]!r}")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST


def check_vanishing_clients(srv):
    before = sample(metrics(srv.port), "cobatch_requests", "cobatch_requests_total", outcome="cancelled")
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda i: stream_then_vanish(srv.port, 1 + i % 3, long_generation(srv)), range(16),
                      timeout=STEP_TIMEOUT * 2))
    # Non-streaming clients that give up while their request runs.
    for _ in range(4):
        with connect(srv.port) as s:
            body = completion_body(max_tokens=long_generation(srv))
            s.sendall((f"POST /v1/completions HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode())
            time.sleep(0.05)
    m = wait_idle(srv)
    after = sample(m, "cobatch_requests", "cobatch_requests_total", outcome="cancelled")
    expect(after - before >= 16, f"cancelled requests counted: {after - before}")


def check_overload(binary):
    """10x more clients than the waiting room holds: 200s and 503s only."""
    srv = server(binary, "--max-queue", "4", "--max-running", "2", "--retry-after-s", "2", name="overload")
    try:
        c = srv.client()

        def one(i):
            try:
                r = c.completions.create(model=srv.model, prompt=f"overload {i}", max_tokens=24, temperature=0)
                return ("ok", r.choices[0].finish_reason)
            except openai.APIStatusError as e:
                return ("status", e.status_code, e.response.headers.get("retry-after"), e.body)

        with concurrent.futures.ThreadPoolExecutor(max_workers=40) as pool:
            results = list(pool.map(one, range(40), timeout=STEP_TIMEOUT * 2))
        ok = [r for r in results if r[0] == "ok"]
        refused = [r for r in results if r[0] == "status"]
        expect(len(ok) + len(refused) == 40, "every client answered")
        expect(ok, "some requests served under overload")
        expect(refused, "some requests refused under overload")
        for r in refused:
            expect(r[1] == 503 and r[2] == "2" and r[3]["code"] == "queue_full", f"refusal {r}")
        m = wait_idle(srv)
        expect(sample(m, "cobatch_requests", "cobatch_requests_total", outcome="overloaded") == len(refused),
               "503s counted")
        # The connection limit.
        srv2 = server(binary, "--max-connections", "8", name="connections")
        try:
            held = [connect(srv2.port) for _ in range(8)]
            time.sleep(0.2)  # let the server accept all eight before the ninth
            status, headers, body, closed = raw_exchange(srv2.port, b"GET /health HTTP/1.1\r\n\r\n")
            expect(status == 503 and closed and "retry-after" in headers, f"ninth connection: {status}")
            for s in held:
                s.close()
            deadline = time.monotonic() + 10
            while http_request(srv2.port, "GET", "/health")[0] != 200:
                expect(time.monotonic() < deadline, "connections freed")
                time.sleep(0.05)
        finally:
            expect(srv2.stop() == 0, "connections server exit status")
    finally:
        code = srv.stop()
    expect(code == 0, f"overload server exit status {code}; see {srv.log_path}")


def check_sigterm_under_load(binary):
    srv = server(binary, "--shutdown-timeout-ms", "3000", name="sigterm")
    results = []
    lock = threading.Lock()

    def streamer(i):
        try:
            with connect(srv.port) as s:
                body = completion_body(model=srv.model, prompt=f"drain {i}", max_tokens=16 if i % 2 else long_generation(srv),
                                       stream=True, temperature=0)
                s.sendall((f"POST /v1/completions HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode())
                status, headers, raw = read_response(s, STEP_TIMEOUT)
                outcome = ("complete", status, raw.rstrip().endswith(b"data: [DONE]"))
        except (check_failed, ConnectionError, OSError) as e:
            outcome = ("closed", str(e))
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=streamer, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while sample(metrics(srv.port), "cobatch_running_requests") < 1:
        expect(time.monotonic() < deadline, "load never started")
        time.sleep(0.02)
    t0 = time.monotonic()
    code = srv.stop(signal.SIGTERM, timeout=30)
    took = time.monotonic() - t0
    for t in threads:
        t.join(timeout=STEP_TIMEOUT)
    expect(code == 0, f"exit status after SIGTERM under load: {code}; see {srv.log_path}")
    expect(took < 3 + 10, f"shutdown took {took:.1f} s (bound 3 s)")
    expect(len(results) == 16, "every client finished")
    for r in results:
        if r[0] == "complete":
            # A stream either completed (status 200, [DONE]) or was refused
            # whole (503 before it started).
            expect((r[1] == 200 and r[2]) or r[1] == 503, f"client outcome {r}")
    try:
        socket.create_connection((HOST, srv.port), timeout=2).close()
        raise check_failed("the port still accepts after shutdown")
    except ConnectionRefusedError:
        pass


def write_safetensors(path, vocab=259, dim=128, layers=2, heads=2, kv_heads=1, ffn=256, seed=7):
    """The reference model's shape (llama_config::tiny) in safetensors form
    (F32, Hugging Face names), with weights from a seed."""
    import random
    import struct
    rng = random.Random(seed)
    hd = 64
    shapes = {"model.embed_tokens.weight": [vocab, dim], "model.norm.weight": [dim], "lm_head.weight": [vocab, dim]}
    for l in range(layers):
        p = f"model.layers.{l}."
        shapes.update({p + "input_layernorm.weight": [dim], p + "post_attention_layernorm.weight": [dim],
                       p + "self_attn.q_proj.weight": [heads * hd, dim], p + "self_attn.k_proj.weight": [kv_heads * hd, dim],
                       p + "self_attn.v_proj.weight": [kv_heads * hd, dim], p + "self_attn.o_proj.weight": [dim, heads * hd],
                       p + "mlp.gate_proj.weight": [ffn, dim], p + "mlp.up_proj.weight": [ffn, dim],
                       p + "mlp.down_proj.weight": [dim, ffn]})
    header, blobs, offset = {}, [], 0
    for name, shape in shapes.items():
        n = 1
        for x in shape:
            n *= x
        values = [1.0] * n if name.endswith("norm.weight") else [rng.gauss(0, 0.3) for _ in range(n)]
        blob = struct.pack(f"<{n}f", *values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    header["__metadata__"] = {"num_attention_heads": str(heads), "num_key_value_heads": str(kv_heads)}
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def check_safetensors(binary):
    folder = os.environ.get("COBATCH_SERVER_TEST_DIR", ".")
    path = os.path.join(folder, "tiny-llama.safetensors")
    write_safetensors(path)
    srv = server(binary, "--model", path, name="safetensors")
    try:
        expect(srv.model == "tiny-llama", f"model id from the file name: {srv.model}")
        c = srv.client()
        a = c.completions.create(model=srv.model, prompt="weights from a file", max_tokens=16, temperature=0)
        b = c.completions.create(model=srv.model, prompt="weights from a file", max_tokens=16, temperature=0)
        expect(a.choices[0].text == b.choices[0].text and a.usage.completion_tokens >= 1, "greedy text repeats")
    finally:
        code = srv.stop()
    expect(code == 0, f"safetensors server exit status {code}")
    # A broken file: the server refuses to start and names the file.
    bad = os.path.join(folder, "broken.safetensors")
    with open(bad, "wb") as f:
        f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    r = subprocess.run([binary, "--port", "0", "--model", bad], capture_output=True, text=True, timeout=60)
    expect(r.returncode != 0 and "broken.safetensors" in r.stderr, f"broken file: {r.returncode} {r.stderr!r}")
    r = subprocess.run([binary, "--port", "0", "--max-queue", "zero"], capture_output=True, text=True, timeout=60)
    expect(r.returncode == 2 and "--max-queue" in r.stderr, f"bad option: {r.returncode} {r.stderr!r}")
    r = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=60)
    expect(r.returncode == 0 and "--max-queue" in r.stdout and "--dcp-ranks" in r.stdout, "--help")


def check_dcp_ranks(binary):
    """Two decode-context-parallel ranks in the process, two micro-batches."""
    srv = server(binary, "--dcp-ranks", "2", "--micro-batches", "2", name="dcp")
    try:
        c = srv.client()
        args = dict(model=srv.model, prompt="split over two ranks", max_tokens=24, temperature=0.8, seed=5)
        alone = c.completions.create(**args)
        expect(alone.usage.completion_tokens >= 1, f"dcp completion {alone}")
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            texts = list(pool.map(lambda i: c.completions.create(**args).choices[0].text, range(8),
                                  timeout=STEP_TIMEOUT))
        expect(all(t == alone.choices[0].text for t in texts), "dcp: same seed, same text under load")
        wait_idle(srv)
    finally:
        code = srv.stop()
    expect(code == 0, f"dcp server exit status {code}")


# --------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--only", action="append")
    args = ap.parse_args()
    binary = os.path.abspath(args.server)

    global MODEL
    failures = []

    def run(name, fn, *a):
        if args.only and name not in args.only:
            return
        t = time.monotonic()
        try:
            fn(*a)
            print(f"ok    {name} ({time.monotonic() - t:.1f} s)", flush=True)
        except Exception as e:  # a failed check or an unexpected error: both fail the run
            failures.append(name)
            print(f"FAIL  {name}: {e}", flush=True)
            traceback.print_exc()

    header_timeout, body_timeout = 1.0, 1.0
    srv = server(binary, "--header-timeout-ms", str(int(header_timeout * 1000)),
                 "--body-timeout-ms", str(int(body_timeout * 1000)), "--max-queue", "256")
    MODEL = srv.model
    try:
        run("health_and_models", check_health_and_models, srv)
        run("completion", check_completion, srv)
        run("streaming", check_streaming, srv)
        run("stop_sequence", check_stop_sequence, srv)
        run("errors", check_errors, srv)
        run("concurrent_and_determinism", check_concurrent_and_determinism, srv)
        run("metrics", check_metrics, srv)
        run("malformed", check_malformed, srv)
        run("truncated_and_slow", check_truncated_and_slow, srv, body_timeout, header_timeout)
        run("vanishing_clients", check_vanishing_clients, srv)
        run("idle_after_abuse", wait_idle, srv)
    finally:
        code = srv.stop()
        if code != 0:
            failures.append("exit_status")
            print(f"FAIL  exit_status: {code}\n{srv.log_text()[-4000:]}", flush=True)
        else:
            print("ok    exit_status (0 after SIGTERM)", flush=True)
    run("safetensors_and_command_line", check_safetensors, binary)
    run("dcp_ranks", check_dcp_ranks, binary)
    run("overload", check_overload, binary)
    run("sigterm_under_load", check_sigterm_under_load, binary)

    if failures:
        print(f"{len(failures)} check(s) failed: {', '.join(failures)}")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
