"""The OpenAI-compatible generator against a local HTTP server on 127.0.0.1."""

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from querit_jax.errors import GenerationError
from querit_jax.mining.generators import SamplingConfig
from querit_jax.mining.openai_client import OpenAIChatGenerator

SECRET = "sk-test-do-not-print-0123456789"


class _Server:
    """A chat-completions server whose behaviour each test scripts."""

    def __init__(
        self,
        fail_first: int = 0,
        always_fail: bool = False,
        delay: float = 0.0,
        status: int = 500,
        garbage: bool = False,
        think: bool = False,
    ):
        self.fail_first, self.always_fail, self.delay = fail_first, always_fail, delay
        self.status, self.garbage, self.think, self.bodies = status, garbage, think, []
        self.lock = threading.Lock()
        self.requests, self.in_flight, self.max_in_flight, self.auth = 0, 0, 0, set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.bodies.append(body)
                    server.requests += 1
                    n = server.requests
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    server.auth.add(self.headers.get("Authorization"))
                time.sleep(server.delay)
                with server.lock:
                    server.in_flight -= 1
                if server.always_fail or n <= server.fail_first:
                    self.send_response(server.status)
                    self.send_header("Retry-After", "0")
                    self.end_headers()
                    # Like some proxies, echo the request's credentials in the error body.
                    auth = self.headers.get("Authorization", "")
                    self.wfile.write(f"overloaded; you sent {auth}".encode())
                    return
                if server.garbage:
                    self.send_response(200)
                    self.end_headers()
                    self.wfile.write(b'{"choices": "none"')
                    return
                text = (
                    f"<|begin_of_query|>about {body['messages'][0]['content'][:12]}<|end_of_query|>"
                )
                if server.think:  # a reasoning model that thought first (marked queries included)
                    text = "<think>maybe <|begin_of_query|>x<|end_of_query|></think>" + text
                payload = {"choices": [{"message": {"role": "assistant", "content": text}}]}
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv("QJ_TEST_KEY", SECRET)
    return "QJ_TEST_KEY"


def test_retries_a_500_then_succeeds(key):
    server = _Server(fail_first=1)
    try:
        gen = OpenAIChatGenerator(
            server.url, "m", SamplingConfig(), api_key_env=key, max_retries=2, backoff_s=0.01
        )
        out = gen.generate(["doc one"], [""], [0])
        assert out == ["<|begin_of_query|>about doc one<|end_of_query|>"] and server.requests == 2
        assert server.auth == {f"Bearer {SECRET}"}  # the key is sent, in the header only
    finally:
        server.close()


def test_gives_up_after_the_configured_attempts_without_leaking_the_key(key, caplog, capsys):
    server = _Server(always_fail=True)
    try:
        gen = OpenAIChatGenerator(
            server.url, "m", SamplingConfig(), api_key_env=key, max_retries=2, backoff_s=0.01
        )
        with (
            caplog.at_level(logging.WARNING),
            pytest.raises(
                GenerationError, match=r"giving up after 3 attempt\(s\); last error: HTTP 500"
            ) as err,
        ):
            gen.generate(["doc"], [""], [0])
        assert server.requests == 3
        captured = capsys.readouterr()
        for text in (str(err.value), caplog.text, captured.out, captured.err, repr(gen)):
            assert SECRET not in text
    finally:
        server.close()


def test_respects_the_concurrency_bound(key):
    server = _Server(delay=0.1)
    try:
        gen = OpenAIChatGenerator(server.url, "m", SamplingConfig(), api_key_env=key, concurrency=2)
        out = gen.generate([f"doc {i}" for i in range(8)], [""] * 8, list(range(8)))
        assert len(out) == 8 and out[3].startswith("<|begin_of_query|>about doc 3")
        assert server.max_in_flight == 2
    finally:
        server.close()


def test_unreachable_server_is_a_clear_error():
    gen = OpenAIChatGenerator(
        "http://127.0.0.1:9/v1", "m", SamplingConfig(), max_retries=1, backoff_s=0.01, timeout_s=2
    )
    with pytest.raises(
        GenerationError, match=r"127.0.0.1:9/v1/chat/completions: giving up after 2 attempt"
    ):
        gen.generate(["doc"], [""], [0])


def test_a_dead_server_fails_fast_and_odd_payloads_are_clear_errors(key):
    server = _Server(always_fail=True, status=401, delay=0.05)
    try:
        gen = OpenAIChatGenerator(server.url, "m", SamplingConfig(), api_key_env=key, concurrency=2)
        with pytest.raises(
            GenerationError, match=r"HTTP 401 \(overloaded; you sent Bearer \*\*\*\)"
        ):
            gen.generate([f"doc {i}" for i in range(40)], [""] * 40, list(range(40)))
        assert server.requests <= 4  # 401 is not retried and queued requests are dropped
    finally:
        server.close()
    server = _Server(garbage=True)
    try:
        gen = OpenAIChatGenerator(server.url, "m", SamplingConfig(), api_key_env=key)
        with pytest.raises(GenerationError, match="not a chat completion"):
            gen.generate(["doc"], [""], [0])
    finally:
        server.close()


def test_each_process_uses_its_own_endpoint_with_thinking_switched_off(key):
    servers = [_Server(think=True), _Server(think=True)]
    try:
        urls = [s.url for s in servers]
        for process in (0, 1, 2, 3):
            gen = OpenAIChatGenerator(
                urls, "m", SamplingConfig(top_k=20), api_key_env=key, process_index=process
            )
            assert gen.generate(["doc"], [""], [0]) == [
                "<|begin_of_query|>about doc<|end_of_query|>"
            ]  # the <think> block is gone
        assert [s.requests for s in servers] == [2, 2]  # process i -> endpoint i % 2
        body = servers[1].bodies[0]
        assert body["chat_template_kwargs"] == {"enable_thinking": False} and body["top_k"] == 20
        OpenAIChatGenerator(urls[0], "m", api_key_env=key, enable_thinking=None).generate(
            ["doc"], [""], [0]
        )
        assert "chat_template_kwargs" not in servers[0].bodies[-1]  # servers that reject it
    finally:
        for s in servers:
            s.close()
