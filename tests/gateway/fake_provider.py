"""A fake model provider, OpenAI- and Anthropic-shaped, scriptable per request.

Serves `POST /v1/chat/completions` (OpenAI) and `POST /v1/messages` (Anthropic), streaming
and not. By default every request succeeds. A script queues behaviours per upstream model
name; each request for that model takes the next one:

    POST /_script {"model": "m1", "steps": [{"status": 429, "retry_after": "2"}, {}]}

Step keys (all optional):
    status            an error status to answer (429, 500, 502, 503, 400, ...)
    retry_after       a Retry-After header value, as given
    retry_after_date  seconds from now, sent as Retry-After in HTTP-date form
    headers           extra response headers
    body              a raw body to send instead of the default one
    delay             seconds to wait before sending headers (slow headers)
    malformed         answer 200 with a body that is not JSON (or, streaming, a bad event)
    reset             reset the connection (TCP RST) without answering
    cut_after         streaming: send this many events, then drop the connection
    error_after       streaming: send this many events, then the API's in-stream error
    text              the answer's text
    chunk_delay       streaming: seconds between events
    hold              seconds to keep the request in flight after answering headers
    wait_for          a gate's name: hold the request, before anything else, until the gate
                      is opened (`State.open`, or `POST /_open {"gate": NAME}`); at most 30 s

Every request is logged with its time, path, model, headers and body:
`GET /_requests?model=m1`; `POST /_reset` clears scripts and the log and opens every gate.
Run alone: `python fake_provider.py [--port N]` prints `listening on HOST:PORT`.
Stdlib only.
"""

import argparse
import collections
import email.utils
import json
import socket
import struct
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.scripts = collections.defaultdict(collections.deque)
        self.log = []
        self.in_flight = collections.Counter()
        self.max_in_flight = collections.Counter()
        self.gates = {}

    def reset(self):
        with self.lock:
            for gate in self.gates.values():
                gate.set()
            self.gates.clear()
            self.scripts.clear()
            self.log.clear()
            self.in_flight.clear()
            self.max_in_flight.clear()

    def script(self, model, steps):
        with self.lock:
            self.scripts[model].extend(steps)

    def take(self, model):
        with self.lock:
            q = self.scripts.get(model)
            return q.popleft() if q else {}

    def requests(self, model=None):
        with self.lock:
            return [r for r in self.log if model is None or r["model"] == model]

    def gate(self, name):
        with self.lock:
            return self.gates.setdefault(name, threading.Event())

    def open(self, name):
        self.gate(name).set()


def openai_completion(model, text):
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": len(text.split()),
                  "total_tokens": 5 + len(text.split())},
    }


def openai_events(model, text, include_usage):
    base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": model}
    yield None, {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                      "finish_reason": None}]}
    for word in text.split(" "):
        yield None, {**base, "choices": [{"index": 0, "delta": {"content": word + " "},
                                          "finish_reason": None}]}
    yield None, {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    if include_usage:
        n = len(text.split())
        yield None, {**base, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": n,
                                                      "total_tokens": 5 + n}}
    yield None, "[DONE]"


def anthropic_message(model, text):
    return {
        "id": "msg_fake", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
        "stop_sequence": None, "usage": {"input_tokens": 5, "output_tokens": len(text.split())},
    }


def anthropic_events(model, text, _include_usage):
    yield "message_start", {"type": "message_start", "message": {
        "id": "msg_fake", "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": None, "usage": {"input_tokens": 5, "output_tokens": 1}}}
    yield "content_block_start", {"type": "content_block_start", "index": 0,
                                  "content_block": {"type": "text", "text": ""}}
    yield "ping", {"type": "ping"}
    for word in text.split(" "):
        yield "content_block_delta", {"type": "content_block_delta", "index": 0,
                                      "delta": {"type": "text_delta", "text": word + " "}}
    yield "content_block_stop", {"type": "content_block_stop", "index": 0}
    yield "message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                            "usage": {"output_tokens": len(text.split())}}
    yield "message_stop", {"type": "message_stop"}


def error_body(anthropic, status):
    message = f"fake upstream error {status}"
    if anthropic:
        kind = {429: "rate_limit_error", 400: "invalid_request_error"}.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}
    kind = {429: "rate_limit_exceeded", 400: "invalid_request_error"}.get(status, "server_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": kind}}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: State = None  # set by make_server

    def log_message(self, *args):
        pass

    def _json(self, status, obj, headers=None):
        data = obj.encode() if isinstance(obj, str) else json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        if url.path == "/_requests":
            model = urllib.parse.parse_qs(url.query).get("model", [None])[0]
            self._json(200, {"requests": self.state.requests(model),
                             "max_in_flight": dict(self.state.max_in_flight)})
        else:
            self._json(404, {"error": {"message": "not found"}})

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length)
        if self.path == "/_script":
            body = json.loads(raw)
            self.state.script(body["model"], body["steps"])
            return self._json(200, {"ok": True})
        if self.path == "/_reset":
            self.state.reset()
            return self._json(200, {"ok": True})
        if self.path == "/_open":
            self.state.open(json.loads(raw)["gate"])
            return self._json(200, {"ok": True})
        if self.path not in ("/v1/chat/completions", "/v1/messages"):
            return self._json(404, {"error": {"message": "not found"}})
        anthropic = self.path == "/v1/messages"
        try:
            body = json.loads(raw)
        except ValueError:
            return self._json(400, error_body(anthropic, 400))
        model = body.get("model", "")
        step = self.state.take(model)
        with self.state.lock:
            self.state.log.append({
                "t": time.time(), "path": self.path, "model": model,
                "stream": bool(body.get("stream")),
                "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body,
            })
            self.state.in_flight[model] += 1
            self.state.max_in_flight[model] = max(self.state.max_in_flight[model],
                                                  self.state.in_flight[model])
        try:
            self._answer(anthropic, body, model, step)
        finally:
            with self.state.lock:
                self.state.in_flight[model] -= 1

    def _send_event(self, name, data):
        payload = data if isinstance(data, str) else json.dumps(data)
        frame = ((f"event: {name}\n" if name else "") + f"data: {payload}\n\n").encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(frame), frame))
        self.wfile.flush()

    def _reset_connection(self):
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True
        self.wfile = _Sink()

    def _answer(self, anthropic, body, model, step):
        if "wait_for" in step:
            self.state.gate(step["wait_for"]).wait(30)
        time.sleep(step.get("delay", 0))
        if step.get("reset"):
            return self._reset_connection()
        status = step.get("status")
        if status:
            headers = dict(step.get("headers", {}))
            if "retry_after" in step:
                headers["retry-after"] = str(step["retry_after"])
            if "retry_after_date" in step:
                headers["retry-after"] = email.utils.formatdate(
                    time.time() + step["retry_after_date"], usegmt=True)
            return self._json(status, step.get("body") or error_body(anthropic, status), headers)
        text = step.get("text", "Hello from the fake provider")
        if not body.get("stream"):
            if step.get("malformed"):
                return self._json(200, step.get("body", '{"choices": [ {"message": '))
            answer = anthropic_message(model, text) if anthropic else openai_completion(model, text)
            return self._json(200, answer, step.get("headers"))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        for k, v in step.get("headers", {}).items():
            self.send_header(k, v)
        self.end_headers()
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        events = (anthropic_events if anthropic else openai_events)(model, text, include_usage)
        for i, (name, data) in enumerate(events):
            if "cut_after" in step and i >= step["cut_after"]:
                return self._reset_connection()
            if "error_after" in step and i >= step["error_after"]:
                error = {"type": "overloaded_error", "message": "fake overloaded"}
                name, data = ("error", {"type": "error", "error": error}) if anthropic \
                    else (None, {"error": {**error, "code": "overloaded"}})
                self._send_event(name, data)
                break
            if step.get("malformed") and i == 1:
                data = "{this is not json"
            self._send_event(name, data)
            time.sleep(step.get("chunk_delay", 0))
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        time.sleep(step.get("hold", 0))


class _Sink:
    closed = True

    def write(self, _data):
        return 0

    def flush(self):
        pass

    def close(self):
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def handle_error(self, request, client_address):
        # Clients (the gateway) hang up on slow answers on purpose; that is not news.
        pass


def make_server(host="127.0.0.1", port=0):
    state = State()
    handler = type("BoundHandler", (Handler,), {"state": state})
    server = _Server((host, port), handler)
    server.state = state
    return server


def start_in_thread(host="127.0.0.1", port=0):
    server = make_server(host, port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    srv = make_server(args.host, args.port)
    print(f"listening on {srv.server_address[0]}:{srv.server_address[1]}", flush=True)
    srv.serve_forever()
