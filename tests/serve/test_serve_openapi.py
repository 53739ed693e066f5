"""The HTTP schema says what the server answers (issue 20, defect 6): every path and status that
``/openapi.json`` documents is triggered for real, and the answer validates against the documented schema;
routes follow the artifact's kind; ``k`` has the bounds the server enforces; the docs page needs no network."""

from __future__ import annotations

import re
import warnings

import pytest

from genrec.serve.app import create_app
from genrec.serve.batcher import BatchSettings

jsonschema = pytest.importorskip("jsonschema", reason="validating answers against the schema needs jsonschema")

with warnings.catch_warnings():  # newer Starlette asks for `httpx2`; the plain httpx client works the same here
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    from fastapi.testclient import TestClient

MAX_BODY = 2000  # small enough for a 413, large enough for every other request below
BIG = {"history": ["i1"] * 500}  # about 3.5 kB

# (path, method, status) -> requests that trigger it: (client, json body or None). "live" serves; "cold" has not
# started its batcher (as while the server starts or drains), so it answers 503 where the model is needed.
RETRIEVER = {
    ("/recommend", "post", "200"): [("live", {"history": ["i1", "i2"], "k": 3}),
                                    ("live", {"history": ["i1", "ghost"], "k": 60, "exclude_history": False})],
    ("/recommend", "post", "400"): [("live", {"history": ["i1", "ghost"], "unknown_items": "reject"}),
                                    ("live", {"history": []}), ("live", b'{"history": ['),
                                    ("live", {"history": ["i1", "i2"], "timestamps": [1]})],
    ("/recommend", "post", "413"): [("live", BIG)],
    ("/recommend", "post", "422"): [("live", {"history": ["i1"], "k": 0}), ("live", {"history": ["i1"], "k": 61}),
                                    ("live", {"history": ["i1"], "k": "5"}), ("live", {"surprise": 1})],
    ("/recommend", "post", "503"): [("cold", {"history": ["i1"]})],
    ("/health", "get", "200"): [("live", None)],
    ("/health", "get", "503"): [("cold", None)],
    ("/metadata", "get", "200"): [("live", None), ("cold", None)],
}
RANKER = {
    ("/score", "post", "200"): [("live", {"history": ["i1", "i2"], "candidates": ["i3", "i9", "ghost"]})],
    ("/score", "post", "400"): [("live", {"history": ["i1"], "candidates": []}),
                                ("live", {"history": ["i1"], "candidates": ["ghost"], "unknown_items": "reject"})],
    ("/score", "post", "413"): [("live", {**BIG, "candidates": ["i2"]})],
    ("/score", "post", "422"): [("live", {"history": ["i1"]})],
    ("/score", "post", "503"): [("cold", {"history": ["i1"], "candidates": ["i2"]})],
    ("/health", "get", "200"): [("live", None)],
    ("/health", "get", "503"): [("cold", None)],
    ("/metadata", "get", "200"): [("live", None)],
}


def _send(client, path: str, method: str, body):
    if method == "get":
        return client.get(path)
    if isinstance(body, bytes):
        return client.post(path, content=body)
    return client.post(path, json=body)


def _validator(spec: dict, schema: dict):
    """A JSON-Schema validator for one documented schema, its ``$ref``s resolved in the spec's components."""
    return jsonschema.Draft202012Validator({**schema, "components": spec["components"]})


def _walk(artifact, triggers) -> dict:
    """Send every trigger, check each answer against the documented response; return the spec."""
    app = create_app(artifact, BatchSettings(max_batch_size=4, max_wait_ms=1), max_body_bytes=MAX_BODY)
    cold = TestClient(create_app(artifact, max_body_bytes=MAX_BODY))  # outside `with`: no lifespan, no batcher
    with TestClient(app) as live:
        spec = live.get("/openapi.json").json()
        documented = {(p, m, s) for p, ops in spec["paths"].items() for m, op in ops.items()
                      for s in op["responses"]}
        assert documented == set(triggers), "documented responses without a trigger / triggers not documented"
        for (path, method, status), requests in triggers.items():
            doc = spec["paths"][path][method]["responses"][status]
            schema = doc["content"]["application/json"]["schema"]
            for which, body in requests:
                r = _send(live if which == "live" else cold, path, method, body)
                assert str(r.status_code) == status, (path, body, r.status_code, r.text)
                errors = sorted(_validator(spec, schema).iter_errors(r.json()), key=str)
                assert not errors, (path, status, body, r.json(), [e.message for e in errors])
                for header in doc.get("headers", {}):
                    assert header.lower() in r.headers, (path, status, header)
    return spec


def test_every_documented_retriever_response_is_what_the_server_sends(art):
    spec = _walk(art, RETRIEVER)
    assert "/score" not in spec["paths"]  # a retriever would answer it 400 whatever the request


def test_every_documented_ranker_response_is_what_the_server_sends(ranker_art):
    spec = _walk(ranker_art, RANKER)
    assert "/recommend" not in spec["paths"]


def test_unlisted_routes_answer_404_saying_why(art, ranker_art):
    with TestClient(create_app(art)) as c:
        r = c.post("/score", json={"history": ["i1"], "candidates": ["i2"]})
        assert r.status_code == 404 and "model 'hstu' is not a ranker (kinds: retriever)" in r.json()["detail"]
    with TestClient(create_app(ranker_art)) as c:
        r = c.post("/recommend", json={"history": ["i1"]})
        assert r.status_code == 404 and "use POST /score" in r.json()["detail"]


def test_k_bounds_are_documented_and_enforced(art):
    with TestClient(create_app(art)) as c:
        spec = c.get("/openapi.json").json()
        k = spec["components"]["schemas"]["RecommendRequest"]["properties"]["k"]
        assert (k["minimum"], k["maximum"]) == (1, art.num_items)
        assert c.post("/recommend", json={"history": ["i1"], "k": art.num_items}).status_code == 200
        for bad in (0, art.num_items + 1, 10**40):
            r = c.post("/recommend", json={"history": ["i1"], "k": bad})
            assert r.status_code == 422 and r.json()["detail"].startswith("invalid request: k:"), r.text


@pytest.mark.parametrize("kind", ["retriever", "ranker"])
def test_request_examples_are_documented_and_answered(kind, art, ranker_art):
    artifact = art if kind == "retriever" else ranker_art
    with TestClient(create_app(artifact)) as c:
        spec = c.get("/openapi.json").json()
        posts = [(p, ops["post"]) for p, ops in spec["paths"].items() if "post" in ops]
        assert posts
        for path, op in posts:
            content = op["requestBody"]["content"]["application/json"]
            examples = content.get("examples") or {}
            assert examples, f"{path}: no request example"
            for name, ex in examples.items():
                assert not list(_validator(spec, content["schema"]).iter_errors(ex["value"])), (path, name)
                r = c.post(path, json=ex["value"])
                assert r.status_code == 200, (path, name, r.text)


def test_docs_page_works_without_network(art):
    with TestClient(create_app(art)) as c:
        r = c.get("/docs")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        page = r.text
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "the page loads something remote"
        for path in c.get("/openapi.json").json()["paths"]:
            assert path in page
        assert c.get("/redoc").status_code == 404  # the ReDoc page loads its script from a CDN: not served
