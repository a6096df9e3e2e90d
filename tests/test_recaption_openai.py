"""The openai backend against a real loopback HTTP server: request shape, retries, failures, timeouts, concurrency, key;
and `compclip recaption` against a dead one."""

import base64
import io
import json
import logging
import os
import socket
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lit_compclip.recaption.base import Request
from lit_compclip.recaption.command import main
from lit_compclip.recaption.openai_backend import OpenAIBackend, parse_answer
from lit_compclip.recaption.pipeline import PARTIAL

KEY = "sk-test-0123456789abcdef-SECRET"
IMAGE = b"\xff\xd8\xff\xe0fake-jpeg-bytes"


class Handler(BaseHTTPRequestHandler):
    """The prompt says how to answer: 'ok', 'flaky:N:CODE', 'always:CODE', 'sleep:S', 'hold:N' (answer once N
    requests are in flight together), 'refuse', 'sorry', 'empty'."""

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_POST(self):
        srv = self.server
        with srv.cond:
            srv.in_flight += 1
            srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
            srv.cond.notify_all()
        self.counted = True
        try:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompt = body["messages"][0]["content"][1]["text"]
            with srv.lock:
                srv.seen.append({"path": self.path, "headers": dict(self.headers), "body": body})
                srv.hits[prompt] = srv.hits.get(prompt, 0) + 1
                hits = srv.hits[prompt]
            self.answer(prompt, hits)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)
        finally:
            self.done()

    def done(self):
        """The request leaves the in-flight count once, before its answer is written: counted after it, a client
        that already has the answer can send its next request first (seen on a loaded machine: 3 with a limit of 2)."""
        if self.counted:
            self.counted = False
            with self.server.lock:
                self.server.in_flight -= 1

    def answer(self, prompt: str, hits: int):
        kind, *args = prompt.split(":")
        if kind == "flaky" and hits <= int(args[0]):
            return self.send(int(args[1]), {"error": {"message": "busy"}}, {"Retry-After": args[2]} if args[2:] else {})
        if kind == "always":
            return self.send(int(args[0]), {"error": {"message": f"nope {KEY}", "code": args[1] if args[1:] else ""}})
        if kind == "sleep":
            time.sleep(float(args[0]))
        if kind == "hold":  # a property, not a duration: no answer before N requests have been in flight at once
            with self.server.cond:
                together = self.server.cond.wait_for(lambda: self.server.max_in_flight >= int(args[0]), timeout=60)
            if not together:
                return self.send(500, {"error": {"message": f"never {args[0]} requests in flight at once"}})
        text = {"empty": "  ", "sorry": "I'm sorry, but I can't help with that."}.get(kind, f"a caption for {prompt}")
        finish = "content_filter" if kind == "refuse" else "stop"
        self.send(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": f" {text} "},
                                     "finish_reason": finish}],
                        "usage": {"prompt_tokens": 50, "completion_tokens": 7, "total_tokens": 57}})

    def send(self, code: int, obj: dict, headers: dict | None = None):
        data = json.dumps(obj).encode()
        self.done()
        self.send_response(code)
        for k, v in {"Content-Type": "application/json", "Content-Length": str(len(data)), **(headers or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    srv = Server(("127.0.0.1", 0), Handler)
    srv.lock, srv.in_flight, srv.max_in_flight, srv.seen, srv.hits = threading.Lock(), 0, 0, [], {}
    srv.cond = threading.Condition(srv.lock)
    thread = threading.Thread(target=srv.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    srv.base_url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    yield srv
    srv.shutdown()
    srv.server_close()


def make(server, **options) -> OpenAIBackend:
    backend = OpenAIBackend("test-vlm", base_url=server.base_url, **options)
    backend.backoff_s = 0.01  # keep retries fast; the schedule's shape is what is tested
    return backend


def req(prompt: str, key: str = "000000001", ext: str = "jpg") -> Request:
    return Request(key=key, image=IMAGE, image_ext=ext, prompt=prompt, fields={"alt_text": "x"})


def test_request_is_a_chat_completion_with_model_prompt_and_image_data_url(server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    backend = make(server, max_tokens=77, temperature=0.5, top_p=0.9, seed=3)
    [out] = backend.caption([req("ok")])
    backend.close()
    assert out.text == "a caption for ok" and out.error is None and out.tokens == 7
    [seen] = server.seen
    assert seen["path"] == "/v1/chat/completions"
    assert "Authorization" not in seen["headers"]  # no key set: fine for a local vLLM server
    body = seen["body"]
    assert body["model"] == "test-vlm" and body["max_tokens"] == 77 and body["seed"] == 3
    assert body["temperature"] == 0.5 and body["top_p"] == 0.9
    [message] = body["messages"]
    assert message["role"] == "user"
    image, text = message["content"]
    assert text == {"type": "text", "text": "ok"}
    prefix = "data:image/jpeg;base64,"
    assert image["type"] == "image_url" and image["image_url"]["url"].startswith(prefix)
    assert base64.b64decode(image["image_url"]["url"][len(prefix):]) == IMAGE


def test_outcomes_keep_request_order(server):
    backend = make(server, concurrency=4)
    prompts = ["sleep:0.15", "ok", "sleep:0.05", "empty", "refuse"]
    outs = backend.caption([req(p, key=str(i)) for i, p in enumerate(prompts)])
    backend.close()
    assert [o.text for o in outs] == ["a caption for sleep:0.15", "a caption for ok", "a caption for sleep:0.05",
                                      None, None]
    assert [o.error for o in outs[3:]] == ["empty answer", "refused"]


def test_5xx_and_429_are_retried_until_success(server):
    backend = make(server, retries=4)
    outs = backend.caption([req("flaky:2:500"), req("flaky:3:429:0"), req("flaky:1:503")])
    backend.close()
    assert [o.text for o in outs] == ["a caption for flaky:2:500", "a caption for flaky:3:429:0",
                                      "a caption for flaky:1:503"]
    assert server.hits == {"flaky:2:500": 3, "flaky:3:429:0": 4, "flaky:1:503": 2}


def test_persistent_5xx_becomes_a_failure_record_after_all_tries(server):
    backend = make(server, retries=2)
    [out] = backend.caption([req("always:503")])
    backend.close()
    assert out.text is None and out.error == "HTTP 503 after 3 tries"
    assert server.hits["always:503"] == 3


def test_non_retryable_4xx_fails_at_once_and_content_policy_is_a_refusal(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    backend = make(server, retries=4)
    bad, policy = backend.caption([req("always:400"), req("always:400:content_policy_violation")])
    backend.close()
    assert server.hits == {"always:400": 1, "always:400:content_policy_violation": 1}
    assert bad.text is None and bad.error.startswith("HTTP 400: nope") and KEY not in bad.error
    assert policy.error == "refused"


def test_rejected_key_or_unknown_model_stops_the_run(server):
    backend = make(server)
    with pytest.raises(ValueError, match="HTTP 401"):
        backend.caption([req("always:401"), req("ok")])
    with pytest.raises(ValueError, match="HTTP 404.*model"):
        backend.caption([req("always:404")])
    backend.close()


def test_slow_answer_times_out_after_all_tries(server):
    backend = make(server, timeout=0.2, retries=1)
    start = time.perf_counter()
    [out] = backend.caption([req("sleep:60")])
    backend.close()
    # The outcome says the timeout fired (an answer would have come after 60 s, with text); the bound only rules out a
    # try that waited for it: two timed-out tries take 0.4 s, 30 s leaves a loaded machine 75 times that.
    assert out.text is None and out.error == "timeout after 2 tries"
    assert server.hits["sleep:60"] == 2 and time.perf_counter() - start < 30


def test_retry_after_is_honoured_and_capped(server, monkeypatch):
    import lit_compclip.recaption.openai_backend as openai_backend

    waits, sleep = [], time.sleep
    monkeypatch.setattr(openai_backend.time, "sleep", lambda s: (waits.append(s), sleep(s))[1])
    backend = make(server, retries=1)
    start = time.perf_counter()
    [out] = backend.caption([req("flaky:1:429:0.4")])
    assert out.text is not None and waits == [0.4] and time.perf_counter() - start >= 0.4  # a lower bound holds
    backend.max_wait_s = 0.05  # under load too
    [out] = backend.caption([req("flaky:1:429:30")])
    backend.close()
    assert out.text is not None and waits == [0.4, 0.05]  # the server asked for 30 s; the cap waited 0.05


def test_refusals_and_empty_answers_are_failures():
    def answer(content, finish="stop", **message):
        return {"choices": [{"message": {"content": content, **message}, "finish_reason": finish}]}

    assert parse_answer(answer("Sorry, I can't describe this image.")).error == "refused"
    assert parse_answer(answer("A red circle.", refusal="policy")).error == "refused"
    assert parse_answer(answer("A red circle.", finish="content_filter")).error == "refused"
    assert parse_answer(answer(None)).error == "empty answer"
    assert parse_answer({"choices": []}).error == "no choices in answer"
    assert parse_answer(answer([{"type": "text", "text": "A sorry-looking dog."}])).text == "A sorry-looking dog."


@pytest.mark.parametrize("concurrency", [2, 8])
def test_concurrency_limits_requests_in_flight(server, concurrency):
    # No answer comes before `concurrency` requests have been in flight together, so the limit is reached however
    # slowly a loaded machine starts its threads; exceeding it shows as a maximum above it.
    backend = make(server, concurrency=concurrency)
    outs = backend.caption([req(f"hold:{concurrency}", key=str(i)) for i in range(8)])
    backend.close()
    assert all(o.text for o in outs), [o.error for o in outs]
    assert server.max_in_flight == concurrency


def test_api_key_is_sent_but_never_shown(server, monkeypatch, caplog):
    monkeypatch.setenv("MY_KEY", KEY)
    caplog.set_level(logging.DEBUG, logger="lit_compclip")  # retries are logged at debug level
    backend = make(server, api_key_env="MY_KEY", retries=1)
    outs = backend.caption([req("ok"), req("flaky:1:500"), req("always:400"), req("always:503")])
    assert {s["headers"]["Authorization"] for s in server.seen} == {f"Bearer {KEY}"}
    with pytest.raises(ValueError) as fatal:
        backend.caption([req("always:401")])
    shown = [repr(backend), str(vars(backend)), caplog.text, str(fatal.value), *map(repr, outs)]
    backend.close()
    assert "retry 1/1" in caplog.text  # the retries were logged, so the check below looks at real log lines
    assert not [s for s in shown if KEY in s]


def test_bad_base_url_is_a_one_line_error():
    with pytest.raises(ValueError, match="base_url must be an http"):
        OpenAIBackend("m", base_url="localhost:8000/v1")
    with pytest.raises(ValueError, match="concurrency"):
        OpenAIBackend("m", concurrency=0)


def test_unreachable_server_is_a_connection_error_after_all_tries():
    with socket.socket() as s:  # bound but never listening: connections are refused, and no one else can take it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        backend = OpenAIBackend("m", base_url=f"http://127.0.0.1:{port}/v1", retries=2)
        backend.backoff_s = 0.01
        [out] = backend.caption([req("ok")])
        backend.close()
    assert out.text is None and out.error.startswith("connection error") and out.error.endswith("after 3 tries")


# ---- a dead endpoint through the whole command: it stops early, finishes nothing, and a rerun redoes the shards ----

class DeadHandler(BaseHTTPRequestHandler):
    """Answers every request as server.mode says: 'ok', '500', 'garbage' (HTTP 200, a body that is not JSON) or
    'hang' (no answer until the test ends)."""

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        srv = self.server
        with srv.lock:
            srv.hits += 1
        if srv.mode == "hang":
            srv.release.wait(60)
            return
        code, data = {"500": (500, b'{"error": {"message": "internal"}}'), "garbage": (200, b"<html>busy</html>{")
                      }.get(srv.mode, (200, json.dumps({"choices": [{"message": {"content": "a red square"},
                                                                     "finish_reason": "stop"}]}).encode()))
        try:
            self.send_response(code)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def endpoint(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
                "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    srv = Server(("127.0.0.1", 0), DeadHandler)
    srv.lock, srv.hits, srv.mode, srv.release = threading.Lock(), 0, "ok", threading.Event()
    thread = threading.Thread(target=srv.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def shards(tmp_path):
    """Two shards in the img2dataset layout: 00000.tar with 6 samples, 00001.tar with 20."""
    folder = tmp_path / "web"
    folder.mkdir()
    for name, keys in (("00000.tar", range(6)), ("00001.tar", range(6, 26))):
        with tarfile.open(folder / name, "w") as tar:
            for k in keys:
                for ext, data in (("jpg", IMAGE), ("txt", f"alt text {k}".encode()),
                                  ("json", json.dumps({"key": f"{k:09d}", "caption": "c"}).encode())):
                    info = tarfile.TarInfo(f"{k:09d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return folder


def recaptions(folder):
    """{shard: [recaption or None per sample]} of every finished shard in `folder`."""
    found = {}
    for name in sorted(os.listdir(folder)):
        with tarfile.open(folder / name) as tar:
            metas = [json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.endswith(".json")]
        found[name] = [m.get("recaption") for m in metas]
    return found


COMMON = ["--backend", "openai", "--model", "vlm", "--retries", "0", "--concurrency", "4", "--progress", "lines"]


@pytest.mark.parametrize("mode, reason", [("500", "HTTP 500 after 1 try"), ("garbage", "answer is not JSON"),
                                          ("hang", "timeout after 1 try"), ("refused", "connection error")])
def test_dead_endpoint_stops_early_finishes_nothing_and_the_rerun_redoes_every_shard(endpoint, shards, tmp_path,
                                                                                     capsys, mode, reason):
    out = tmp_path / "recap"
    endpoint.mode = mode
    with socket.socket() as s:  # bound but never listening: connections are refused
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1" if mode == "refused" else endpoint.url
        rc = main([str(shards), str(out), *COMMON, "--base-url", url, "--timeout", "0.3"])
    stdout, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 1 and [line for line in lines if line.startswith("compclip recaption")] == lines[-1:], err
    assert lines[-1].startswith("compclip recaption: error: the openai backend failed all of its first 22 requests")
    assert reason in lines[-1] and "Traceback" not in err and stdout == ""
    # 00000.tar (6 requests) ends over the failure limit and stays partial; in 00001.tar the first call of 16 takes
    # the run to 22 failures and no answer: it stops there, before the other 4 samples are sent, its partial removed
    assert endpoint.hits == (0 if mode == "refused" else 22)
    assert os.listdir(out) == ["00000.tar" + PARTIAL]
    endpoint.mode = "ok"
    rc = main([str(shards), str(out), *COMMON, "--base-url", endpoint.url, "--timeout", "30"])
    stdout, err = capsys.readouterr()
    assert rc == 0 and "26 samples, 26 recaptioned, 0 failed" in stdout and "2 done, 0 already finished" in stdout
    assert recaptions(out) == {"00000.tar": ["a red square"] * 6, "00001.tar": ["a red square"] * 20}


def test_shards_a_dead_endpoint_filled_with_failures_are_redone_not_skipped(endpoint, shards, tmp_path, capsys,
                                                                           caplog):
    out = tmp_path / "recap"
    endpoint.mode = "500"  # --max-failure-rate 1 accepts any failure: no early stop, both shards written
    rc = main([str(shards), str(out), *COMMON, "--base-url", endpoint.url, "--max-failure-rate", "1"])
    stdout, _ = capsys.readouterr()
    assert rc == 0 and "26 failed" in stdout and recaptions(out) == {"00000.tar": [None] * 6, "00001.tar": [None] * 20}
    endpoint.mode = "ok"
    rc = main([str(shards), str(out), *COMMON, "--base-url", endpoint.url])  # the default limit, 0.05
    stdout, _ = capsys.readouterr()
    assert rc == 0 and "2 done, 0 already finished (skipped), 2 redone" in stdout
    assert "00000.tar: 6 of 6 samples failed, over --max-failure-rate 0.05; redoing it" in caplog.text
    assert recaptions(out) == {"00000.tar": ["a red square"] * 6, "00001.tar": ["a red square"] * 20}


def test_a_rejected_key_stops_the_command_with_one_line_leaving_nothing_and_never_showing_the_key(server, shards,
                                                                                                  tmp_path, capsys,
                                                                                                  monkeypatch):
    monkeypatch.setenv("MY_KEY", KEY)
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("always:401")  # the test server answers HTTP 401, with the key in its error message
    rc = main([str(shards), str(tmp_path / "new" / "recap"), "--backend", "openai", "--model", "vlm", "--base-url",
               server.base_url, "--api-key-env", "MY_KEY", "--prompt", str(prompt)])
    stdout, err = capsys.readouterr()
    assert rc == 2 and stdout == "" and err.count("\n") == 1 and "HTTP 401: the API key was rejected (check $MY_KEY)" in err
    assert {s["headers"]["Authorization"] for s in server.seen} == {f"Bearer {KEY}"}  # the key was sent
    assert not (tmp_path / "new").exists()  # no output folder, no empty .partial
    assert KEY not in stdout + err
