import numpy as np

from genrec.data.prepare import prepare
from genrec.data.schema import load_dataset
from genrec.data.synthetic import BEHAVIORS, generate


def _cols(raw):
    return [np.asarray(raw.user), np.asarray(raw.item), np.asarray(raw.timestamp),
            np.asarray(raw.behavior.to_pylist())]


def test_same_seed_same_log_and_different_seed_differs():
    a, b, c = generate(200, 100, seed=3), generate(200, 100, seed=3), generate(200, 100, seed=4)
    for x, y in zip(_cols(a), _cols(b)):
        assert np.array_equal(x, y)
    assert a.items.equals(b.items)
    assert not np.array_equal(np.asarray(a.item)[:500], np.asarray(c.item)[:500])


def test_prepared_fingerprint_is_reproducible(tmp_path):
    f1 = load_dataset(prepare(generate(100, 60, seed=1), tmp_path / "a", name="s")).fingerprint
    f2 = load_dataset(prepare(generate(100, 60, seed=1), tmp_path / "b", name="s")).fingerprint
    assert f1 == f2


def test_realistic_properties(tmp_path):
    raw = generate(300, 200, seed=0)
    ds = load_dataset(prepare(raw, tmp_path / "s", name="s"))
    inter = ds.interactions
    lengths = np.bincount(inter.user_id)[1:]
    assert lengths.min() >= 10 and lengths.max() <= 200
    raw_len = np.bincount(np.asarray(raw.user))[1:]
    assert raw_len.min() >= 20 and raw_len.max() <= 200
    # popularity skew: the top 10% of items take a large share of interactions
    pop = np.sort(np.bincount(inter.item_id)[1:])[::-1]
    assert pop[: len(pop) // 10].sum() / pop.sum() > 0.25
    # behavior levels get rarer as they rise
    counts = np.bincount(inter.behavior, minlength=len(BEHAVIORS))
    assert all(counts[k] > counts[k + 1] for k in range(len(BEHAVIORS) - 1))
    assert ds.manifest["behaviors"] == BEHAVIORS
    # bursty: several sessions per user, gaps inside sessions far below the gap between them
    assert ds.manifest["counts"]["sessions"] > 3 * ds.num_users
    # item text from templates
    title = ds.items.column("title").to_pylist()[0]
    assert len(title.split()) >= 3 and " > " in ds.items.column("categories").to_pylist()[0]


def test_sequence_beats_popularity():
    """Last-item prediction: a transition table from the previous item clearly beats popularity."""
    from collections import Counter, defaultdict

    raw = generate(300, 200, seed=0)
    u, i = np.asarray(raw.user), np.asarray(raw.item)
    last = np.r_[u[1:] != u[:-1], True]  # held-out event of each user
    pop_top = set(np.argsort(-np.bincount(i[~last]))[:10].tolist())
    trans: dict[int, Counter] = defaultdict(Counter)
    for a in np.flatnonzero(~last[:-1] & ~last[1:] & (u[1:] == u[:-1])):
        trans[int(i[a])][int(i[a + 1])] += 1
    held = np.flatnonzero(last)
    hits_pop = sum(int(i[a]) in pop_top for a in held)
    hits_seq = sum(int(i[a]) in {v for v, _ in trans[int(i[a - 1])].most_common(10)} for a in held)
    assert hits_seq > 2 * hits_pop
