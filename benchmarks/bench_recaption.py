"""Samples per second of the `scene` backend and of the `openai` backend against a loopback server with a fixed delay.

Usage: python benchmarks/bench_recaption.py [--samples 96] [--delay 0.05] [--concurrency 1 4 16]
The openai rows show that `concurrency` scales throughput while the server's answer time stays fixed: the speed-up
column is each row's samples/s over the concurrency-1 row measured in the same run (ideal: the concurrency itself).
Each backend gets all samples in one caption() call, so this is the backend's own capacity; the pipeline's batch
size caps how many requests it can have in flight (keep batch_size >= concurrency)."""

import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from lit_compclip.cli_args import ScriptParser
from lit_compclip.recaption.base import Request
from lit_compclip.recaption.openai_backend import OpenAIBackend
from lit_compclip.recaption.prompt import DEFAULT_TEMPLATE, render
from lit_compclip.synth.scene_backend import SceneBackend
from lit_compclip.synth.samples import Sample, image_bytes, record
from lit_compclip.synth.world import sample_family

ARGS = {"seed": 0, "image_size": 64}


def synthetic_requests(n: int) -> list[Request]:
    """`n` samples of the synthetic world as the pipeline would hand them to a backend (JPEG, KEY.json, prompt)."""
    requests = []
    for f in range(0, (n + 3) // 4):
        scenes = sample_family(random.Random(f"bench/{f}"), 2, "train", ARGS["image_size"])
        for m, scene in enumerate(scenes):
            sample = Sample(len(requests), f, "base", "train", scene)
            meta = record(sample, ARGS["seed"])
            fields = {"alt_text": meta["alt_text"], "title": ""}
            requests.append(Request(sample.name, image_bytes(sample, ARGS), "jpg", render(DEFAULT_TEMPLATE, fields),
                                    fields, meta))
    return requests[:n]


class DelayServer(ThreadingHTTPServer):
    """Answers every chat-completions POST with a fixed caption after `delay` seconds, like a busy model server."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, delay: float):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.delay = delay


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(self.server.delay)
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": "A red circle left of a blue star."},
                                        "finish_reason": "stop"}], "usage": {"completion_tokens": 9}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def rate(backend, requests: list[Request], repeats: int = 1) -> float:
    """Samples per second of a caption() call over all `requests`, best of `repeats` (after one warm-up request)."""
    backend.caption(requests[:1])
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        outcomes = backend.caption(requests)
        best = min(best, time.perf_counter() - start)
        failed = [o.error for o in outcomes if o.text is None]
        assert not failed, failed[:3]
    return len(requests) / best


def main() -> None:
    parser = ScriptParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=96)
    parser.add_argument("--delay", type=float, default=0.05, help="seconds the loopback server takes per answer")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args()
    requests = synthetic_requests(args.samples)

    rows = [("scene", "-", rate(SceneBackend(), requests, repeats=20), None)]

    server = DelayServer(args.delay)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    base = None
    try:
        for c in args.concurrency:
            backend = OpenAIBackend("bench", base_url=base_url, api_key_env="", concurrency=c, retries=0)
            r = rate(backend, requests)
            backend.close()
            base = base or r  # the first row (concurrency 1 by default) is the reference
            rows.append(("openai", str(c), r, r / base))
    finally:
        server.shutdown()
        server.server_close()

    print(f"{args.samples} synthetic samples; openai server answers after {args.delay * 1000:.0f} ms "
          f"(ceiling at concurrency 1: {1 / args.delay:.0f} samples/s)")
    print(f"{'backend':8} {'concurrency':>11} {'samples/s':>10} {'speed-up':>9}")
    for name, c, r, ratio in rows:
        print(f"{name:8} {c:>11} {r:>10.1f} {'' if ratio is None else f'{ratio:.2f}x':>9}")


if __name__ == "__main__":
    main()
