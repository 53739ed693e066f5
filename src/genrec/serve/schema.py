"""The HTTP bodies as pydantic models, so that ``/openapi.json`` documents exactly what the service answers.

The request model of ``/recommend`` is built per artifact (:func:`recommend_request`): ``k`` is bounded by
the artifact's catalogue (the range the server enforces) and the request examples use the artifact's own item
ids, so an example copied from the docs page gets an answer. Response models forbid extra keys: a key the
server sends but the schema omits fails ``tests/serve/test_serve_openapi.py``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, create_model

ItemId = StrictStr | StrictInt
UnknownMode = Literal["ignore", "reject"]


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _RecommendFields(_Closed):
    """``/recommend`` without ``k``, whose bounds depend on the catalogue."""

    history: list[ItemId] = Field(description="external item ids, oldest first (strings or integers, "
                                              "compared as strings)")
    timestamps: list[StrictInt] | None = Field(None, description="unix seconds, one per history item")
    behaviors: list[ItemId] | None = Field(None, description="behavior per history item (checked, not used "
                                                             "by current models)")
    query_time: StrictInt | None = Field(None, description="request time in unix seconds (default: the "
                                                           "last timestamp)")
    exclude_history: StrictBool = Field(True, description="never recommend items already in the history")
    unknown_items: UnknownMode = Field(
        "ignore", description="ignore: drop unknown ids and list them; reject: answer 400 listing them")


class ScoreRequest(_Closed):
    history: list[ItemId] = Field(description="external item ids, oldest first")
    candidates: list[ItemId] = Field(description="external item ids to score")
    timestamps: list[StrictInt] | None = Field(None, description="unix seconds, one per history item")
    query_time: StrictInt | None = Field(None, description="request time in unix seconds")
    unknown_items: UnknownMode = Field("ignore", description="ignore or reject unknown ids (400)")


def recommend_request(num_items: int) -> type[BaseModel]:
    """The ``/recommend`` body for a catalogue of ``num_items``: ``k`` in 1..num_items (default 10, or the
    whole catalogue when it is smaller), out of range answers 422."""
    k = Field(min(10, num_items), ge=1, le=num_items, description=f"number of items to return, 1..{num_items}")
    return create_model("RecommendRequest", __base__=_RecommendFields, k=(StrictInt, k))


def request_examples(external_ids: list[str], num_items: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """OpenAPI examples of ``/recommend`` and ``/score`` bodies, made of the artifact's own item ids."""
    ids = external_ids[1:5]  # index 0 is padding
    hist, cands = ids[:2], ids[2:] or ids[:1]
    recommend = {
        "short": {"summary": "a history, top 5", "value": {"history": hist, "k": min(5, num_items)}},
        "timed": {"summary": "with timestamps, history not excluded",
                  "value": {"history": hist, "timestamps": [1_400_000_000, 1_400_003_600][:len(hist)],
                            "k": min(3, num_items), "exclude_history": False}},
    }
    score = {"candidates": {"summary": "score two candidates", "value": {"history": hist, "candidates": cands}}}
    return recommend, score


class ScoredItem(_Closed):
    item: str
    score: float
    title: str | None = Field(None, description="present when the dataset had titles")


class RecommendResponse(_Closed):
    items: list[ScoredItem] = Field(description="best first")
    ignored_unknown: list[str] = Field(description="history (and candidate) ids not in the catalogue, dropped")
    truncated: bool = Field(description="the history was longer than max_len; its most recent items were used")
    history_used: int = Field(description="number of history items the model read")


class HealthResponse(_Closed):
    status: Literal["ok"]
    queue_depth: int = Field(description="requests waiting for the model")


class BatchStats(_Closed):
    requests: int
    rejected: int = Field(description="requests answered 503 because the queue was full")
    batches: int
    mean_batch_size: float
    max_batch_size_seen: int
    batch_size_counts: dict[str, int] = Field(description="batch size -> number of batches")
    queue_depth: int


class Batching(_Closed):
    max_batch_size: int
    max_wait_ms: float
    queue_size: int
    enabled: bool
    stats: BatchStats


class MetadataResponse(_Closed):
    model: str = Field(description="registry name of the model")
    kinds: list[str] = Field(description="retriever, ranker and/or generator")
    num_items: int
    max_len: int
    data_fingerprint: str
    dataset: str | None
    genrec_version: str = Field(description="the genrec that exported the artifact")
    serving_genrec_version: str
    format_version: int
    has_titles: bool
    behaviors: list[str] | None
    test_metrics: dict[str, Any] | None = Field(description="the run's test metrics, when it was evaluated")
    batching: Batching


class ErrorBody(_Closed):
    detail: str = Field(description="one line saying what is wrong")


class BadRequestBody(ErrorBody):
    unknown_items: list[str] | None = Field(None, description="every unknown id, when unknown ids caused the 400")


class ValidationIssue(_Closed):
    loc: list[str] = Field(description="where: 'body', then the field and list index")
    msg: str
    type: str


class ValidationErrorBody(ErrorBody):
    errors: list[ValidationIssue] = Field(description="the first 20 problems; detail summarises three")


RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The documented error answers of a route, one model per status (the bodies ``app._error`` sends)."""
    table: dict[int, dict[str, Any]] = {
        400: {"model": BadRequestBody, "description": "bad request: malformed JSON or a request the model cannot "
                                                      "answer as asked"},
        413: {"model": ErrorBody, "description": "body larger than the server's limit"},
        422: {"model": ValidationErrorBody, "description": "a field of the wrong type, out of range, missing "
                                                           "or unknown"},
        503: {"model": ErrorBody, "description": "queue full, starting or shutting down; retry after "
                                                 "Retry-After seconds", "headers": RETRY_AFTER},
    }
    return {s: table[s] for s in statuses}
