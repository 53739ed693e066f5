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
    rng = np.random.default_rng(seed)
    prng = random.Random(int(rng.integers(2**63)))

    # items: topic, popularity (Zipf over a random rank), successor cycle inside each topic
    topic = rng.permutation(np.arange(num_items) % num_topics)
    subtopic = rng.integers(0, 3, size=num_items)
    rank = rng.permutation(num_items)
    pop = 1.0 / (rank + 1.0) ** zipf_alpha
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
    topic_cum = [list(accumulate(pop[m].tolist())) for m in members]
    topic_items = [m.tolist() for m in members]
    global_cum = list(accumulate(pop.tolist()))
    topic_weight = np.array([pop[m].sum() for m in members]) ** 0.5
    topic_weight /= topic_weight.sum()
    s1, s2 = succ1.tolist(), succ2.tolist()

    def pick(cum: list[float], items: list[int]) -> int:
        return items[min(bisect.bisect_left(cum, prng.random() * cum[-1]), len(items) - 1)]

    all_items = list(range(num_items))
    lengths = np.clip(
        np.round(rng.lognormal(np.log(median_events), 0.6, size=num_users)), min_events, max_events
    ).astype(np.int64)
    users: list[int] = []
    items: list[int] = []
    times: list[int] = []
    p_end = 1.0 / max(mean_session_len, 1.0)
    for u in range(num_users):
        k = int(rng.integers(2, 5))
        interests = rng.choice(num_topics, size=min(k, num_topics), replace=False, p=topic_weight).tolist()
        iw = list(accumulate(rng.dirichlet(np.ones(len(interests))).tolist()))
        t = _START + int(rng.integers(0, 30 * 86400))
        seen: set[int] = set()
        prev = -1
        for _j in range(int(lengths[u])):
            new_session = prev < 0 or prng.random() < p_end
            if new_session:
                t += int(prng.lognormvariate(np.log(12 * 3600), 1.0)) + 3601
            else:
                t += 10 + int(prng.expovariate(1 / 90))
            item = -1
            for _try in range(4):
                r = prng.random()
                if not new_session and prev >= 0 and r < successor_prob:
                    cand = s1[prev] if prng.random() < 0.75 else s2[prev]
                elif r > 1.0 - explore_prob:
                    cand = pick(global_cum, all_items)
                else:
                    ti = interests[min(bisect.bisect_left(iw, prng.random()), len(interests) - 1)]
                    cand = pick(topic_cum[ti], topic_items[ti])
                item = cand
                if cand not in seen:
                    break
            seen.add(item)
            users.append(u + 1)
            items.append(item + 1)
            times.append(t)
            prev = item
    n = len(users)
    probs = np.asarray(behavior_probs, dtype=np.float64)
    behavior = rng.choice(len(BEHAVIORS), size=n, p=probs / probs.sum())
    names = np.array(BEHAVIORS, dtype=object)[behavior]

    counters: dict[int, int] = {}
    titles, cats = [], []
    for i in range(num_items):
        tname, noun, subs = TOPICS[int(topic[i])]
        counters[int(topic[i])] = counters.get(int(topic[i]), 0) + 1
        titles.append(f"{ADJECTIVES[int(rng.integers(len(ADJECTIVES)))]} {noun} {counters[int(topic[i])]}")
        cats.append(f"{tname} > {subs[int(subtopic[i])]}")
    item_table = pa.table(
        {
            "external_id": pa.array([str(i + 1) for i in range(num_items)]),
            "title": pa.array(titles),
            "categories": pa.array(cats),
            "category_id": pa.array(topic.astype(np.int64) + 1),
        }
    )
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
