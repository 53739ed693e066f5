"""The HTTP service in process: answers equal the Python API and evaluation, bad requests get clear 4xx,
overload gets 503 + Retry-After, and nothing a client sends crashes the app."""

from __future__ import annotations

import asyncio
import copy
import time
import warnings

import httpx
import numpy as np
import pytest

from genrec.data.splits import EvalSamples
from genrec.eval.retrieval import rank_targets
from genrec.serve.app import create_app
from genrec.serve.batcher import BatchSettings

with warnings.catch_warnings():  # newer Starlette asks for `httpx2`; the plain httpx client works the same here
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def client(art):
    # raise_server_exceptions (the default) turns any 500 into a test failure
    with TestClient(create_app(art, BatchSettings(max_batch_size=4, max_wait_ms=1))) as c:
        yield c


def post(client, body=None, **kw):
    return client.post("/recommend", json=body, **kw) if body is not None else client.post("/recommend", **kw)


def test_health_metadata_docs(client, art):
    assert client.get("/health").json()["status"] == "ok"
    meta = client.get("/metadata").json()
    for key in ("model", "kinds", "num_items", "max_len", "data_fingerprint", "genrec_version", "batching"):
        assert key in meta
    assert meta["num_items"] == art.num_items and meta["batching"]["max_batch_size"] == 4
    assert client.get("/docs").status_code == 200
    assert "/recommend" in client.get("/openapi.json").json()["paths"]


def test_answers_equal_python_api_and_evaluation(client, art, run, user_history):
    rows = [1, 5, 9, 30]
    ranks = rank_targets(run.model, run.seqs, EvalSamples(np.array(rows), np.array([run.seqs.lengths[r] - 1
                                                                                   for r in rows])))
    for row, want in zip(rows, ranks):
        hist, times, target, qt = user_history(row)
        r = post(client, {"history": hist, "timestamps": times, "query_time": qt, "k": art.num_items})
        assert r.status_code == 200, r.text
        got = r.json()
        py = art.recommend(hist, k=art.num_items, timestamps=times, query_time=qt)
        assert [(x["item"], x["score"]) for x in got["items"]] == list(py)
        assert [x["item"] for x in got["items"]].index(target) == want
        assert got["items"][0]["title"] == art.title(got["items"][0]["item"])
        assert got["history_used"] == min(len(hist), art.max_len) and got["truncated"] == (len(hist) > art.max_len)


def test_unknown_items_ignored_or_rejected(client):
    r = post(client, {"history": ["i1", "ghost", 12345, "i2"], "k": 3})
    assert r.status_code == 200 and r.json()["ignored_unknown"] == ["ghost", "12345"]
    r = post(client, {"history": ["i1", "ghost"], "unknown_items": "reject"})
    assert r.status_code == 400 and "ghost" in r.json()["detail"] and r.json()["unknown_items"] == ["ghost"]
    r = post(client, {"history": ["ghost"]})
    assert r.status_code == 400 and "no known item id" in r.json()["detail"]


def test_optional_fields_are_accepted(client):
    body = {"history": ["i1", 2, "i3"], "timestamps": [1_400_000_000, 1_400_000_060, 1_400_000_120],
            "behaviors": ["click", "buy", 0], "query_time": 1_400_000_200, "k": 4, "exclude_history": False}
    r = post(client, body)
    assert r.status_code == 200 and len(r.json()["items"]) == 4 and r.json()["ignored_unknown"] == ["2"]


def test_long_history_is_truncated(client, art):
    hist = [f"i{1 + j % 60}" for j in range(100_000)]
    r = post(client, {"history": hist, "k": 5, "exclude_history": False})
    assert r.status_code == 200
    assert r.json()["truncated"] is True and r.json()["history_used"] == art.max_len


@pytest.mark.parametrize("body,status,needle", [
    ({"history": []}, 400, "empty history"),
    ({"history": ["i1"], "k": 0}, 422, "k: Input should be greater than or equal to 1"),
    ({"history": ["i1"], "k": 61}, 422, "k: Input should be less than or equal to 60"),
    ({"history": ["i1"], "k": 10**40}, 422, "k: Input should be less than or equal to 60"),
    ({"history": ["i1"], "k": "5"}, 422, "k"),
    ({"history": ["i1"], "k": 2.5}, 422, "k"),
    ({"history": ["i1", "i2"], "timestamps": [1]}, 400, "timestamps has 1 entries but history has 2"),
    ({"history": ["i1", "i2"], "timestamps": [1, 2.5]}, 422, "timestamps.1"),
    ({"history": ["i1", "i2"], "timestamps": ["1", "2"]}, 422, "timestamps.0"),
    ({"history": ["i1", "i2"], "timestamps": [1, -5]}, 400, "timestamps[1]"),
    ({"history": ["i1", "i2"], "behaviors": ["click"]}, 400, "behaviors has 1 entries"),
    ({"history": ["i1"], "unknown_items": "maybe"}, 422, "unknown_items"),
    ({"history": ["i1"], "exclude_history": "yes"}, 422, "exclude_history"),
    ({"history": ["i1"], "surprise": 1}, 422, "surprise"),
    ({"history": "i1"}, 422, "history"),
    ({"history": [{"a": [1, {"b": None}]}]}, 422, "history.0"),
    ({"history": [None, True]}, 422, "history"),
    ({}, 422, "history"),
    ([1, 2, 3], 422, "body"),
])
def test_bad_requests_say_what_is_wrong(client, body, status, needle):
    r = post(client, body)
    assert r.status_code == status, r.text
    assert needle in r.json()["detail"]


@pytest.mark.parametrize("content,needle", [
    (b'{"history": ["i1"]', "malformed JSON"),
    (b'{"history": ["\xff\xfe"]}', "not valid UTF-8"),
    (b"\xff\xfe\x00{", "not valid UTF-8"),
    (b'{"history": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "malformed JSON"),
    (b'{"history": [' + b"7" * 5000 + b"]}", "malformed JSON"),
    (b"history=i1", "malformed JSON"),
])
def test_adversarial_bodies_get_400(client, content, needle):
    r = post(client, content=content, headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400, r.text
    assert needle in r.json()["detail"]
    assert client.get("/health").status_code == 200


def test_empty_body_oversized_body_and_wrong_method(art):
    with TestClient(create_app(art, max_body_bytes=1000)) as c:
        assert c.post("/recommend", content=b"").status_code == 422
        r = c.post("/recommend", json={"history": ["i1"] * 500})
        assert r.status_code == 413 and "limit of 1000" in r.json()["detail"]
        assert c.get("/recommend").status_code == 405
        assert c.get("/nowhere").status_code == 404
        assert c.post("/recommend", json={"history": ["i1"]}).status_code == 200


def test_score_refuses_retrievers(client):
    r = client.post("/score", json={"history": ["i1"], "candidates": ["i2", "i3"]})
    assert r.status_code == 404 and "model 'hstu' is not a ranker" in r.json()["detail"]


def _slow(art, delay: float):
    slow = copy.copy(art)

    def run(queries):
        time.sleep(delay)
        return art.run(queries)

    slow.run = run
    return slow


async def _burst(app, n: int, body: dict):
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            answers = await asyncio.gather(*[c.post("/recommend", json=body) for _ in range(n)])
            after = await c.post("/recommend", json=body)
            health = await c.get("/health")
            meta = (await c.get("/metadata")).json()
    return answers, after, health, meta


def test_burst_beyond_the_queue_gets_503_with_retry_after(art):
    app = create_app(_slow(art, 0.3), BatchSettings(max_batch_size=1, max_wait_ms=0, queue_size=1))
    answers, after, health, meta = asyncio.run(_burst(app, 12, {"history": ["i1", "i2"], "k": 3}))
    codes = [a.status_code for a in answers]
    assert set(codes) <= {200, 503} and codes.count(503) >= 6 and codes.count(200) >= 1, codes
    for a in answers:
        if a.status_code == 503:
            assert a.headers["retry-after"].isdigit() and int(a.headers["retry-after"]) >= 1
            assert "overloaded" in a.json()["detail"]
    assert after.status_code == 200 and health.status_code == 200
    assert meta["batching"]["stats"]["rejected"] == codes.count(503)


def test_concurrent_http_requests_are_micro_batched(art):
    app = create_app(_slow(art, 0.05), BatchSettings(max_batch_size=16, max_wait_ms=20, queue_size=64))
    answers, _, _, meta = asyncio.run(_burst(app, 16, {"history": ["i4", "i8"], "k": 5}))
    assert all(a.status_code == 200 for a in answers)
    assert len({tuple(x["item"] for x in a.json()["items"]) for a in answers}) == 1
    assert meta["batching"]["stats"]["max_batch_size_seen"] > 1
