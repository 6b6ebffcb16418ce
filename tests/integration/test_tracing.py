"""Traces: with OTEL_EXPORTER_OTLP_ENDPOINT set, spans for the request, tokenization, queue
wait, batch and inference reach an OTLP/HTTP collector (a small in-test receiver)."""

import http.server
import threading

import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from conftest import CLASSIFIER, MODELS


class Collector(http.server.ThreadingHTTPServer):
    def __init__(self):
        self.spans = []
        self.paths = []
        super().__init__(("127.0.0.1", 0), Handler)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        self.server.paths.append((self.path, self.headers.get("content-type")))
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}.get("service.name")
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    self.server.spans.append((service, span))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_spans_are_exported_over_otlp(start_keel):
    collector = Collector()
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    try:
        k = start_keel({"MODELS": f"{CLASSIFIER}={MODELS / CLASSIFIER}",
                        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.server_address[1]}"}).wait_ready()
        r = requests.post(k.url("/predict"), json={"text": "traced and delightful"}, headers={"x-request-id": "trace-me"})
        assert r.status_code == 200
        assert k.stop() == 0  # shutdown flushes the batch exporter
    finally:
        collector.shutdown()
    assert collector.paths and all(p == ("/v1/traces", "application/x-protobuf") for p in collector.paths)
    names = {span.name for _, span in collector.spans}
    assert {"request", "tokenize", "queue_wait", "inference", "batch"} <= names, names
    assert {service for service, _ in collector.spans} == {"keel"}
    by_name = {}
    for _, span in collector.spans:
        by_name.setdefault(span.name, []).append(span)
    request = next(s for s in by_name["request"] if any(a.value.string_value == "trace-me" for a in s.attributes))
    children = [s for s in collector.spans if s[1].parent_span_id == request.span_id]
    assert {s.name for _, s in children} >= {"tokenize", "queue_wait", "inference"}
