"""Inference runs off the async runtime: /health stays fast while inference is saturated."""

import statistics
import threading
import time

import requests

from conftest import inference_in_flight, wait_until

LONG = " ".join(["The film drags in places but the performances are consistently strong."] * 30)


def test_health_answers_fast_while_inference_is_saturated(url):
    stop = threading.Event()
    done = []

    def hammer():
        s = requests.Session()
        while not stop.is_set():
            r = s.post(url("/predict"), json={"inputs": [LONG] * 2})
            done.append(r.status_code)

    workers = [threading.Thread(target=hammer) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        # Saturated: predictions come back, and more than one request is admitted and not yet
        # answered, so the model never idles while /health is timed.
        wait_until(lambda: done and (inference_in_flight(url) or 0) >= 2, timeout=60,
                   what="inference to be saturated")
        latencies = []
        s = requests.Session()
        for _ in range(40):
            t = time.perf_counter()
            assert s.get(url("/health"), timeout=5).status_code == 200
            latencies.append((time.perf_counter() - t) * 1000)
            time.sleep(0.05)
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=60)
    assert len(done) >= 4 and set(done) <= {200, 429}, set(done)
    median = statistics.median(latencies)
    print(f"/health under saturation: median {median:.1f} ms, max {max(latencies):.1f} ms, {len(done)} predictions")
    # Generous bounds: an inference on the runtime's threads would block for seconds.
    assert median < 50, latencies
    assert max(latencies) < 500, latencies
