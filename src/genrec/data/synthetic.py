"""A seeded generator of realistic-looking interaction logs.

Tests, examples and quick starts need data that is small, free to redistribute and still has the
structure that separates model families: a long-tailed popularity (so popularity is a real
baseline), users with a few stable interests (so user modelling helps), strong item-to-item
transitions inside sessions (so sequence models clearly beat popularity), bursty sessions
(minutes apart inside, hours to days between) and rarer high-value behaviors.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import numpy as np
import pyarrow as pa

from genrec.data.prepare import RawLog

BEHAVIORS = ["view", "like", "cart", "buy"]
TOPICS = [
    ("Audio", "Headphones", ("Wireless", "Studio", "Sport")),
    ("Books", "Novel", ("Fantasy", "Mystery", "History")),
    ("Garden", "Planter", ("Indoor", "Outdoor", "Hanging")),
    ("Kitchen", "Skillet", ("Cast Iron", "Nonstick", "Steel")),
    ("Coffee", "Grinder", ("Burr", "Manual", "Electric")),
    ("Outdoor", "Tent", ("Backpacking", "Family", "Ultralight")),
    ("Fitness", "Dumbbell", ("Adjustable", "Fixed", "Kettlebell")),
    ("Beauty", "Serum", ("Face", "Hair", "Eye")),
    ("Toys", "Puzzle", ("Jigsaw", "3D", "Wooden")),
    ("Office", "Notebook", ("Dotted", "Lined", "Sketch")),
    ("Pets", "Leash", ("Dog", "Cat", "Reflective")),
    ("Tools", "Drill", ("Cordless", "Hammer", "Impact")),
    ("Games", "Controller", ("Console", "PC", "Retro")),
    ("Music", "Guitar", ("Acoustic", "Electric", "Bass")),
    ("Baby", "Stroller", ("Jogging", "Compact", "Double")),
    ("Art", "Brush", ("Watercolor", "Oil", "Acrylic")),
    ("Travel", "Suitcase", ("Carry-on", "Checked", "Hardshell")),
    ("Cycling", "Helmet", ("Road", "Mountain", "Commuter")),
    ("Tea", "Kettle", ("Electric", "Stovetop", "Glass")),
    ("Lighting", "Lamp", ("Desk", "Floor", "Smart")),
    ("Shoes", "Sneaker", ("Running", "Trail", "Court")),
    ("Camera", "Lens", ("Prime", "Zoom", "Macro")),
    ("Bath", "Towel", ("Cotton", "Linen", "Microfiber")),
    ("Watches", "Watch", ("Diver", "Dress", "Smart")),
]
ADJECTIVES = [
    "Classic", "Compact", "Deluxe", "Essential", "Premium", "Rugged", "Sleek", "Smart", "Vintage", "Pro",
    "Eco", "Ultra", "Mini", "Modern", "Bold", "Quiet", "Swift", "Cozy", "Bright", "Nordic",
]  # fmt: skip
_START = 1672531200  # 2023-01-01 UTC


@dataclass
class _Catalogue:
    """The item side of the world, drawn once per log: topics, popularity, successors, samplers."""

    topic: np.ndarray  # (I,) topic index of each item
    subtopic: np.ndarray  # (I,) 0..2, the category leaf inside the topic
    succ1: list[int]  # (I,) first fixed successor of each item, inside its topic
    succ2: list[int]  # (I,) second fixed successor
    topic_cum: list[list[float]]  # per topic: running sums of its members' popularity
    topic_items: list[list[int]]  # per topic: its members (0-based item ids)
    global_cum: list[float]  # (I,) running sums of every item's popularity
    all_items: list[int]  # (I,) 0..I-1
    topic_weight: np.ndarray  # (T,) how likely each topic is to become a user's interest


def generate(
    num_users: int = 1000,
    num_items: int = 500,
    seed: int = 0,
    *,
    num_topics: int = 20,
    min_events: int = 20,
    max_events: int = 200,
    median_events: float = 40.0,
    successor_prob: float = 0.6,
    explore_prob: float = 0.1,
    zipf_alpha: float = 1.0,
    mean_session_len: float = 6.0,
    behavior_probs: tuple[float, ...] = (0.78, 0.12, 0.07, 0.03),
) -> RawLog:
    """A deterministic (per ``seed``) multi-behavior log with item text, as a :class:`RawLog`.

    Inside a session the next item is, with ``successor_prob``, a fixed successor of the previous
    one in its topic; otherwise a popular item from one of the user's 2-4 interests, or (with
    ``explore_prob``) from anywhere.
    """
    if num_users < 1 or num_items < 2:
        raise ValueError("need num_users >= 1 and num_items >= 2")
    num_topics = max(1, min(num_topics, len(TOPICS), num_items))
    # every step below draws from the two generators in a fixed order, so the log is a function of the seed
    rng = np.random.default_rng(seed)
    prng = random.Random(int(rng.integers(2**63)))
    cat = _catalogue(rng, num_items, num_topics, zipf_alpha)
    lengths = np.clip(
        np.round(rng.lognormal(np.log(median_events), 0.6, size=num_users)), min_events, max_events
    ).astype(np.int64)  # (U,) events per user
    p_end = 1.0 / max(mean_session_len, 1.0)
    users: list[int] = []
    items: list[int] = []
    times: list[int] = []
    for u in range(num_users):
        u_items, u_times = _user_walk(rng, prng, cat, int(lengths[u]), p_end, successor_prob, explore_prob)
        users.extend([u + 1] * len(u_items))
        items.extend(i + 1 for i in u_items)
        times.extend(u_times)
    probs = np.asarray(behavior_probs, dtype=np.float64)
    behavior = rng.choice(len(BEHAVIORS), size=len(users), p=probs / probs.sum())
    names = np.array(BEHAVIORS, dtype=object)[behavior]
    item_table = _item_table(rng, cat)  # draws after the behaviors
    params: dict[str, Any] = {
        "generator": "genrec.data.synthetic",
        "seed": seed,
        "num_users": num_users,
        "num_items": num_items,
        "num_topics": num_topics,
        "successor_prob": successor_prob,
        "explore_prob": explore_prob,
        "zipf_alpha": zipf_alpha,
        "mean_session_len": mean_session_len,
        "median_events": median_events,
    }
    return RawLog(
        user=np.asarray(users, dtype=np.int64),
        item=np.asarray(items, dtype=np.int64),
        timestamp=np.asarray(times, dtype=np.int64),
        behavior=pa.array(names.tolist(), pa.string()),
        behavior_order=list(BEHAVIORS),
        items=item_table,
        source="synthetic",
        params=params,
        label=f"synthetic(seed={seed})",
    )


def _catalogue(rng: np.random.Generator, num_items: int, num_topics: int, zipf_alpha: float) -> _Catalogue:
    """Topics, a Zipf popularity over a random rank, and two fixed successors per item inside its topic."""
    topic = rng.permutation(np.arange(num_items) % num_topics)
    subtopic = rng.integers(0, 3, size=num_items)
    rank = rng.permutation(num_items)
    pop = 1.0 / (rank + 1.0) ** zipf_alpha  # (I,)
    members = [np.flatnonzero(topic == t) for t in range(num_topics)]
    succ1 = np.zeros(num_items, dtype=np.int64)
    succ2 = np.zeros(num_items, dtype=np.int64)
    for m in members:
        # each item gets two fixed successors in its topic, drawn by popularity so that the
        # transitions keep (rather than flatten) the long tail
        for a in m:
            others = m[m != a]
            if others.size == 0:
                succ1[a] = succ2[a] = a
                continue
            w = pop[others] / pop[others].sum()
            pick2 = rng.choice(others, size=min(2, others.size), replace=False, p=w)
            succ1[a], succ2[a] = pick2[0], pick2[-1]
    topic_weight = np.array([pop[m].sum() for m in members]) ** 0.5
    topic_weight /= topic_weight.sum()
    return _Catalogue(
        topic=topic,
        subtopic=subtopic,
        succ1=succ1.tolist(),
        succ2=succ2.tolist(),
        topic_cum=[list(accumulate(pop[m].tolist())) for m in members],
        topic_items=[m.tolist() for m in members],
        global_cum=list(accumulate(pop.tolist())),
        all_items=list(range(num_items)),
        topic_weight=topic_weight,
    )


def _pick(prng: random.Random, cum: list[float], items: list[int]) -> int:
    """One of ``items`` drawn with the weights whose running sums are ``cum`` (a bisect per draw)."""
    return items[min(bisect.bisect_left(cum, prng.random() * cum[-1]), len(items) - 1)]


def _user_walk(
    rng: np.random.Generator,
    prng: random.Random,
    cat: _Catalogue,
    length: int,
    p_end: float,
    successor_prob: float,
    explore_prob: float,
) -> tuple[list[int], list[int]]:
    """One user's ``length`` events: 0-based items and unix seconds, in time order.

    The user's interests and start time come from ``rng``, every per-event choice from ``prng``
    (Python's generator is much faster than numpy's one scalar at a time).
    """
    num_topics = len(cat.topic_items)
    k = int(rng.integers(2, 5))
    interests = rng.choice(num_topics, size=min(k, num_topics), replace=False, p=cat.topic_weight).tolist()
    iw = list(accumulate(rng.dirichlet(np.ones(len(interests))).tolist()))
    t = _START + int(rng.integers(0, 30 * 86400))
    seen: set[int] = set()
    prev = -1
    items: list[int] = []
    times: list[int] = []
    for _j in range(length):
        new_session = prev < 0 or prng.random() < p_end
        if new_session:
            t += int(prng.lognormvariate(np.log(12 * 3600), 1.0)) + 3601  # hours to days apart
        else:
            t += 10 + int(prng.expovariate(1 / 90))  # a minute or two apart
        item = -1
        for _try in range(4):  # a few tries at an unseen item; after that a repeat is fine
            r = prng.random()
            if not new_session and prev >= 0 and r < successor_prob:
                item = cat.succ1[prev] if prng.random() < 0.75 else cat.succ2[prev]
            elif r > 1.0 - explore_prob:
                item = _pick(prng, cat.global_cum, cat.all_items)
            else:
                ti = interests[min(bisect.bisect_left(iw, prng.random()), len(interests) - 1)]
                item = _pick(prng, cat.topic_cum[ti], cat.topic_items[ti])
            if item not in seen:
                break
        seen.add(item)
        items.append(item)
        times.append(t)
        prev = item
    return items, times


def _item_table(rng: np.random.Generator, cat: _Catalogue) -> pa.Table:
    """Item text from templates: "<adjective> <noun> <n>" titles and "<topic> > <leaf>" categories."""
    counters: dict[int, int] = {}
    titles, cats = [], []
    for i in range(len(cat.topic)):
        t = int(cat.topic[i])
        tname, noun, subs = TOPICS[t]
        counters[t] = counters.get(t, 0) + 1
        titles.append(f"{ADJECTIVES[int(rng.integers(len(ADJECTIVES)))]} {noun} {counters[t]}")
        cats.append(f"{tname} > {subs[int(cat.subtopic[i])]}")
    return pa.table(
        {
            "external_id": pa.array([str(i + 1) for i in range(len(cat.topic))]),
            "title": pa.array(titles),
            "categories": pa.array(cats),
            "category_id": pa.array(cat.topic.astype(np.int64) + 1),
        }
    )
