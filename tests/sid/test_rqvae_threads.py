"""The RQ-VAE SID table does not depend on the torch thread count: before, every two-thread build of the same
recipe and seed gave another table (the codebook gradient was accumulated with racing atomic adds)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from genrec.config import SIDConfig
from genrec.sid.build import BUILD_FILE, TABLE_FILE, build_sid_table
from genrec.sid.rqvae import RQVAE, RQVAEConfig
from tests.gamer.conftest import make_dataset

# Large enough that a (batch, latent) gather crosses torch's parallel grain (32768 elements): the racing path.
ITEMS, DIM, BATCH, LATENT = 1100, 16, 1024, 32


@pytest.fixture
def threads():
    """Set the torch thread count inside a test; the process's setting comes back after it."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def _inputs(n: int = ITEMS, dim: int = DIM) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, dim, generator=g)  # (N, D)


def test_codebook_gradient_is_the_one_thread_gradient(threads):
    """The gather the quantizer uses has the gradient of one-thread ``book[c]``, bit for bit, on 1 and 2 threads
    (so one-thread tables are unchanged); two-thread ``book[c]`` adds the rows in a racing order."""
    g = torch.Generator().manual_seed(0)
    book = torch.randn(8, LATENT, generator=g)  # (K, d): few codes, many rows per code
    codes = torch.randint(0, 8, (BATCH,), generator=g)  # (B,)
    upstream = torch.randn(BATCH, LATENT, generator=g)  # (B, d)

    def grad(gather) -> torch.Tensor:
        leaf = book.clone().requires_grad_(True)
        (gather(leaf) * upstream).sum().backward()
        return leaf.grad

    threads(1)
    reference = grad(lambda b: b[codes])
    for n in (1, 2):
        threads(n)
        assert all(torch.equal(grad(lambda b: F.embedding(codes, b)), reference) for _ in range(3))


def test_rqvae_fit_on_two_threads_is_reproducible(threads):
    """Before the fix, two fits on two threads gave different weights."""
    x = _inputs()
    threads(2)
    prints = []
    for _ in range(2):
        torch.manual_seed(0)
        q = RQVAE(RQVAEConfig(input_dim=DIM, hidden_dims=(32,), latent_dim=LATENT, num_levels=2, codebook_size=8,
                              kmeans_iters=2))
        q.fit(x, epochs=2, batch_size=BATCH, seed=0, log_every=0)
        prints.append((q.fingerprint(), q.encode(x).numpy().tobytes()))
    assert prints[0] == prints[1]


def test_sid_build_gives_one_table_on_one_and_two_threads(threads, tmp_path):
    """`genrec sid build` with the RQ-VAE: byte-identical tables on 2, 2 and 1 threads, the thread count it ran
    on recorded in the table and build.json, and the caller's thread setting restored."""
    emb = tmp_path / "emb.npy"
    np.save(emb, _inputs().numpy())
    ds = make_dataset([(1, i, i, 0) for i in range(1, ITEMS + 1)], num_items=ITEMS, name="threads-toy")
    cfg = SIDConfig(embeddings="file", embeddings_file=str(emb), quantizer="rqvae", levels=2, codebook_size=8,
                    rqvae_epochs=2, seed=0)
    files = []
    for i, n in enumerate((2, 2, 1)):
        threads(n)
        table = build_sid_table(cfg, ds, tmp_path / f"sid{i}")
        assert torch.get_num_threads() == n
        assert table.quantizer_params["threads"] == 1
        assert json.loads((tmp_path / f"sid{i}" / BUILD_FILE).read_text())["quantizer_log"]["threads"] == 1
        files.append((tmp_path / f"sid{i}" / TABLE_FILE).read_bytes())
    assert files[0] == files[1] == files[2]


def test_rqkmeans_build_keeps_the_process_threads(threads, tmp_path):
    """Only the RQ-VAE is pinned: RQ-KMeans runs (and is recorded) on the caller's thread count."""
    emb = tmp_path / "emb.npy"
    np.save(emb, _inputs(64, 4).numpy())
    ds = make_dataset([(1, i, i, 0) for i in range(1, 65)], num_items=64, name="threads-toy")
    threads(2)
    table = build_sid_table(SIDConfig(embeddings="file", embeddings_file=str(emb), quantizer="rqkmeans", levels=2,
                                      codebook_size=4), ds)
    assert table.quantizer_params["threads"] == 2 and torch.get_num_threads() == 2
