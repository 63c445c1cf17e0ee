"""``charrnn serve`` through an HTTP client against the real server (uvicorn) on a free loopback port:
every endpoint, every error class, the token rule, the stream's events, cancellation on disconnect.
The expected answers come from the library (``charrnn.load(...).sample`` and ``.score``, which
tests/test_api.py ties to ``charrnn sample`` and ``charrnn eval``), never from pasted numbers."""

from __future__ import annotations

import json
import socket
import threading

import httpx
import numpy as np
import pytest
from serve_util import VOCAB, Served, events, tiny_checkpoint, wait_idle

import charrnn.serve.scheduler as scheduler_module
from charrnn.api import load
from charrnn.cli import cli
from charrnn.describe import describe
from charrnn.recording import record
from charrnn.serve import Limits
from charrnn.serve.limits import is_loopback, token_matches
from charrnn.serve.stops import StopScanner
from charrnn.serve.validate import MAX_TRACE_CHARS, RequestError, ServedModel, score_request, units_request

pytestmark = pytest.mark.usefixtures("one_thread")
LONG = 50_000  # characters: a stream that cannot end by itself while a test looks at it, even on a busy machine


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    return {"lstm": tiny_checkpoint(folder / "lstm.pt"), "gru": tiny_checkpoint(folder / "gru.pt", cell="gru")}


@pytest.fixture(scope="module")
def served(checkpoints):
    server = Served(checkpoints, Limits(max_streams=8, max_length=LONG, max_body_bytes=4096))
    yield server
    server.close()


def generate(served, **body):
    response = served.client.post("/v1/generate", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def stream(served, **body) -> list[tuple[str, dict]]:
    with served.client.stream("POST", "/v1/generate", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return events(response.iter_lines())


def test_healthz_and_models_give_what_inspect_gives(served, checkpoints):
    health = served.client.get("/healthz").json()
    assert health == {"status": "ok", "models": ["lstm", "gru"], "active_streams": 0, "max_streams": 8}
    listed = served.client.get("/v1/models").json()["models"]
    assert [m["name"] for m in listed] == ["lstm", "gru"]
    for info, path in zip(listed, checkpoints.values()):
        want = json.loads(json.dumps(describe(load(path).checkpoint)))
        assert {k: v for k, v in info.items() if k != "name"} == want


@pytest.mark.parametrize(
    "options",
    [
        dict(prime="KING:", length=120, seed=3),
        dict(prime="", length=80, seed=11, temperature=0.5, top_k=5),
        dict(prime="a", length=60, seed=2, argmax=True),
    ],
)
@pytest.mark.parametrize("model", ["lstm", "gru"])
def test_served_alone_gives_charrnn_samples_text(served, checkpoints, options, model):
    answer = generate(served, model=model, **options)
    want = load(checkpoints[model]).sample(**options)
    assert answer["text"] == [want]
    end = answer["samples"][0]
    assert end["reason"] == "length" and end["n_chars"] == options["length"]


def test_num_samples_and_the_same_seed_gives_the_same_samples(served):
    a = generate(served, prime="A", length=40, seed=5, num_samples=3)
    b = generate(served, prime="A", length=40, seed=5, num_samples=3)
    assert a["text"] == b["text"] and len(a["text"]) == 3 and len(set(a["text"])) == 3
    assert all(t.startswith("A") and len(t) == 41 for t in a["text"])
    assert [s["sample"] for s in a["samples"]] == [0, 1, 2]
    c = generate(served, prime="A", length=40, seed=6, num_samples=3)
    assert c["text"] != a["text"]


def test_the_stream_carries_the_text_its_surprisal_and_unit_values(served):
    body = dict(model="lstm", prime="The ", length=150, seed=4, num_samples=2)
    whole = generate(served, **body)
    got = stream(served, **body, surprisal=True, units=[[1, 3], [2, 0]])
    names = [name for name, _ in got]
    assert names[0] == "start" and got[0][1]["prime"] == "The "
    assert names.count("end") == 2 and set(names) == {"start", "text", "end"}
    for sample in range(2):
        texts = [d for name, d in got if name == "text" and d["sample"] == sample]
        end = next(d for name, d in got if name == "end" and d["sample"] == sample)
        text = "".join(d["text"] for d in texts)
        assert "The " + text == whole["text"][sample]
        assert end["reason"] == "length" and end["n_chars"] == 150
        bits = [b for d in texts for b in d["surprisal_bits"]]
        units = [u for d in texts for u in d["units"]]
        top = [t for d in texts for t in d["top"]]
        # Against an independent computation: the whole text scored and traced by /v1/score.
        scored = served.client.post(
            "/v1/score", json={"model": "lstm", "text": "The " + text, "units": [[1, 3], [2, 0]]}
        )
        scored = scored.json()
        np.testing.assert_allclose(bits, scored["surprisal_bits"][4:], atol=1e-3)
        np.testing.assert_allclose(units, scored["units"][4:], atol=1e-4)
        assert np.isclose(end["bits"], np.mean(bits), atol=1e-6)
        assert all(len(t) == 5 and all(ch in VOCAB for ch, _ in t) for t in top)


def test_a_stop_string_ends_a_sample_and_is_never_sent(served):
    free = generate(served, prime="A", length=200, seed=9)["text"][0][1:]
    stop = free[60:62]
    cut = free.index(stop)
    answer = generate(served, prime="A", length=200, seed=9, stop=[stop, "never there"])
    assert answer["text"] == ["A" + free[:cut]]
    assert answer["samples"][0]["reason"] == "stop" and answer["samples"][0]["n_chars"] == cut
    got = stream(served, prime="A", length=200, seed=9, stop=stop)
    texts = [d["text"] for name, d in got if name == "text"]
    assert "".join(texts) == free[:cut] and all(stop not in t for t in texts)
    assert got[-1] == ("end", {**got[-1][1], "reason": "stop"})


def test_score_gives_what_model_score_gives(served, checkpoints):
    text = "KING:\nthe cat sees the mat."
    got = served.client.post("/v1/score", json={"model": "gru", "text": text}).json()
    want = load(checkpoints["gru"]).score(text)
    assert got["n_chars"] == want.n_chars == len(text) - 1
    assert np.isclose(got["nats"], want.nats) and np.isclose(got["bits"], want.bits)
    assert got["surprisal_bits"][0] is None
    np.testing.assert_allclose(got["surprisal_bits"][1:], want.surprisal_bits[1:])


@pytest.mark.slow  # ranks on 1500 characters of the model's own writing
def test_units_ranks_as_visualize_find_does(served, checkpoints):
    text = 'He said "yes" and she said "no, not (that)" twice.\n' * 6
    got = served.client.post("/v1/units", json={"model": "lstm", "feature": "quote", "text": text, "top": 4}).json()
    found = record(load(checkpoints["lstm"]).module, load(checkpoints["lstm"]).vocab, text, find="quote", top=4).found
    assert [(u["layer"], u["unit"]) for u in got["units"]] == [(f.layer + 1, f.unit) for f in found]
    np.testing.assert_allclose([u["r"] for u in got["units"]], [f.r for f in found])
    own = served.client.post("/v1/units", json={"model": "lstm", "feature": "line-position", "top": 3}).json()
    assert own["source"] == "sample" and len(own["units"]) == 3


BAD = [
    (b"{bad", 400, None),
    (b"[1, 2]", 400, None),
    (b"\xff\xfe", 400, None),
    ({"lenght": 5}, 422, "lenght"),
    ({"length": 0}, 422, "length"),
    ({"length": LONG + 1}, 422, "length"),
    ({"length": "5"}, 422, "length"),
    ({"temperature": 0}, 422, "temperature"),
    ({"temperature": "hot"}, 422, "temperature"),
    ({"top_k": 0}, 422, "top_k"),
    ({"top_k": len(VOCAB) + 1}, 422, "top_k"),
    ({"seed": True}, 422, "seed"),
    ({"seed": 2**64}, 422, "seed"),
    ({"stop": [""]}, 422, "stop"),
    ({"stop": 5}, 422, "stop"),
    ({"num_samples": 0}, 422, "num_samples"),
    ({"num_samples": 9}, 422, "num_samples"),
    ({"stream": "yes"}, 422, "stream"),
    ({"units": [[3, 0]]}, 422, "units"),
    ({"units": [[1, 32]]}, 422, "units"),
    ({"units": "1,2"}, 422, "units"),
    ({"what": "gate:reset"}, 422, "what"),
    ({"prime": "caf\u00e9 ~"}, 422, "prime"),
    ({"model": "nope"}, 404, "model"),
    ({"prime": "a" * 5000}, 413, None),
]


@pytest.mark.parametrize("body, status, field", BAD)
def test_every_bad_request_is_a_4xx_with_a_one_line_json_error(served, body, status, field):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = served.client.post("/v1/generate", content=content, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] == field
    assert error["message"] and "\n" not in error["message"] and "Traceback" not in error["message"]


@pytest.mark.parametrize(
    "path, body, field",
    [
        ("/v1/score", {"text": "a"}, "text"),
        ("/v1/score", {}, "text"),
        ("/v1/score", {"text": "ab~"}, "text"),
        ("/v1/units", {"feature": "colour"}, "feature"),
        ("/v1/units", {"feature": "quote", "text": "no quotes here"}, "text"),
        ("/v1/units", {"top": 0}, "top"),
    ],
)
def test_score_and_units_refuse_bad_bodies(served, path, body, field):
    response = served.client.post(path, json=body)
    assert response.status_code == 422 and response.json()["error"]["field"] == field


def test_unknown_routes_and_methods_are_json_errors(served):
    assert served.client.get("/v2/nothing").status_code == 404
    assert "error" in served.client.get("/v2/nothing").json()
    response = served.client.get("/v1/generate")
    assert response.status_code == 405 and "error" in response.json()


def test_a_client_that_disconnects_frees_its_stream(served):
    with served.client.stream("POST", "/v1/generate", json={"length": LONG, "stream": True, "num_samples": 2}) as r:
        # Hold on to the iterator: httpx closes the connection as soon as an unfinished one is dropped (here, on
        # ``break``), and the server would rightly be freeing the stream while /healthz is asked.
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("event: text"):
                break
        assert served.client.get("/healthz").json()["active_streams"] == 2
    # Leaving the block closes the response half read: the client goes away.
    assert wait_idle(served) == 0
    # A non-streamed request whose client gives up is freed too.
    with pytest.raises(httpx.TimeoutException):
        served.client.post("/v1/generate", json={"length": LONG, "temperature": 5.0}, timeout=0.2)
    assert wait_idle(served) == 0


def test_streams_over_the_cap_get_429_with_retry_after(served):
    with served.client.stream("POST", "/v1/generate", json={"length": LONG, "stream": True, "num_samples": 8}) as r:
        lines = r.iter_lines()  # kept, not dropped: dropping it would disconnect (see the test above)
        next(lines)
        busy = served.client.post("/v1/generate", json={"length": 5})
        assert busy.status_code == 429 and busy.headers["retry-after"].isdigit()
        assert "--max-streams" in busy.json()["error"]["message"]
    assert wait_idle(served) == 0
    assert served.client.post("/v1/generate", json={"length": 5}).status_code == 200


def test_healthz_counts_a_stream_while_its_prime_is_read(checkpoints, monkeypatch):
    # The scheduler takes a stream off its queue before it reads the prime; a client told "nothing in flight"
    # then must not get a 429 for places that stream still holds (CI saw exactly this once).
    reading, release = threading.Event(), threading.Event()
    real_run_prime = scheduler_module.run_prime

    def slow_run_prime(*args, **kwargs):
        reading.set()
        assert release.wait(10), "the test never let the prime be read"
        return real_run_prime(*args, **kwargs)

    monkeypatch.setattr(scheduler_module, "run_prime", slow_run_prime)
    server = Served({"m": checkpoints["lstm"]}, Limits(max_streams=2, max_length=LONG))
    try:
        with server.client.stream("POST", "/v1/generate", json={"length": 5, "stream": True, "num_samples": 2}) as r:
            lines = r.iter_lines()
            next(lines)
            assert reading.wait(10), "the scheduler never started reading the prime"
            assert server.client.get("/healthz").json()["active_streams"] == 2
            assert server.client.post("/v1/generate", json={"length": 5}).status_code == 429
            release.set()
            assert [name for name, _ in events(lines)].count("end") == 2
        assert wait_idle(server) == 0
        assert server.client.post("/v1/generate", json={"length": 5}).status_code == 200
    finally:
        release.set()
        server.close()


def test_a_request_past_its_deadline_ends_with_deadline(checkpoints):
    server = Served({"m": checkpoints["lstm"]}, Limits(deadline_s=0.3, max_length=LONG))
    try:
        got = server.client.post("/v1/generate", json={"length": LONG}).json()
        assert got["samples"][0]["reason"] == "deadline" and 0 < got["samples"][0]["n_chars"] < LONG
        assert wait_idle(server) == 0
    finally:
        server.close()


def test_with_a_token_every_v1_request_must_carry_it(checkpoints):
    server = Served({"m": checkpoints["lstm"]}, Limits(token="s3cret-token"))
    try:
        assert server.client.get("/v1/models").status_code == 401
        wrong = server.client.get("/v1/models", headers={"Authorization": "Bearer s3cret-tokeN"})
        assert wrong.status_code == 401 and wrong.json()["error"]["message"]
        assert server.client.post("/v1/generate", json={"length": 3}).status_code == 401
        ok = server.client.post("/v1/generate", json={"length": 3}, headers={"Authorization": "Bearer s3cret-token"})
        assert ok.status_code == 200
        assert server.client.get("/healthz").status_code == 200  # status only: no token needed
    finally:
        server.close()


def test_loopback_and_token_helpers():
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "[::1]", "127.1.2.3"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.2", "example.com"))
    assert token_matches("Bearer abc", "abc") and token_matches("bearer abc", "abc")
    assert not any(token_matches(h, "abc") for h in (None, "", "abc", "Bearer abd", "Basic abc", "Bearer abcd"))


def test_stop_scanner_holds_back_what_may_become_a_stop_string():
    scanner = StopScanner(["\n\n", "END"])
    assert scanner.safe("hello E") == 6 and scanner.safe("hello EN") == 6 and scanner.safe("hello\n") == 5
    assert scanner.safe("hello") == 5 and scanner.stopped("hello") is None
    assert scanner.stopped("a\n\n") == 1 and scanner.stopped("xEND") == 1


def test_serve_refuses_a_public_address_without_a_token(runner, checkpoints, monkeypatch):
    monkeypatch.delenv("CHARRNN_TOKEN", raising=False)
    result = runner.invoke(cli, ["serve", str(checkpoints["lstm"]), "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "--token or CHARRNN_TOKEN" in result.stderr and "Traceback" not in result.stderr


def test_serve_names_a_taken_port(runner, checkpoints):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(cli, ["serve", str(checkpoints["lstm"]), "--port", str(port)])
    assert result.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_serve_refuses_a_missing_checkpoint(runner, tmp_path):
    result = runner.invoke(cli, ["serve", str(tmp_path / "nope.pt"), "--port", "0"])
    assert result.exit_code == 3 and "Traceback" not in result.stderr


def test_unit_traces_and_rankings_are_capped_in_length(checkpoints):
    model = load(checkpoints["lstm"])
    models = {"m": ServedModel("m", model.config, model.vocab)}
    long_text = "the cat. " * (MAX_TRACE_CHARS // 9 + 1)
    assert score_request({"text": long_text}, models).units == []  # plain scoring has no such cap
    for check, body in ((score_request, {"text": long_text, "units": [[1, 0]]}), (units_request, {"text": long_text})):
        with pytest.raises(RequestError) as caught:
            check(body, models)
        assert caught.value.field == "text" and caught.value.status == 422
