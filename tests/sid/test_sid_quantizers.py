"""RQ-KMeans and RQ-VAE: high code usage on clustered data, determinism, a decreasing RQ-VAE loss."""

from __future__ import annotations

import pytest
import torch

from genrec.errors import ConfigError
from genrec.sid import RQVAE, Quantizer, RQKMeans, RQKMeansConfig, RQVAEConfig, SIDTable, SIDTrie, kmeans
from tests.sid.conftest import clustered


def test_kmeans_plus_plus_finds_planted_clusters():
    x = clustered(n=640, dim=8, clusters=16, noise=0.1)
    res = kmeans(x, 16, iters=15, init="kmeans++", seed=0)
    planted = torch.arange(640) % 16
    pairs = {(int(p), int(a)) for p, a in zip(planted, res.assignments)}
    assert len(pairs) == 16  # every planted cluster lands in its own k-means cluster


def test_kmeans_random_init_uses_every_code_and_is_seeded():
    x = clustered(n=640, dim=8, clusters=16, noise=0.1)
    a = kmeans(x, 16, iters=15, init="random", seed=2)
    b = kmeans(x, 16, iters=15, init="random", seed=2)
    assert torch.unique(a.assignments).numel() == 16  # empty clusters are re-seeded
    assert torch.equal(a.centroids, b.centroids)


def test_kmeans_with_fewer_points_than_codes():
    res = kmeans(torch.randn(5, 3), 8, iters=3)
    assert res.centroids.shape == (8, 3) and torch.unique(res.assignments).numel() == 5


def test_rqkmeans_usage_determinism_and_protocol():
    x = clustered(n=1024, dim=16, clusters=32)
    q = RQKMeans(RQKMeansConfig(num_levels=2, codebook_size=32, iters=10, seed=3))
    report = q.fit(x)
    assert isinstance(q, Quantizer)
    assert report[0].usage == 1.0 and report[1].usage >= 0.8
    assert report[1].inertia < report[0].inertia
    codes = q.encode(x)
    assert codes.shape == (1024, 2) and codes.dtype == torch.int64
    q2 = RQKMeans(RQKMeansConfig(num_levels=2, codebook_size=32, iters=10, seed=3))
    q2.fit(x)
    assert torch.equal(q2.encode(x), codes) and q2.fingerprint() == q.fingerprint()
    q3 = RQKMeans(RQKMeansConfig(num_levels=2, codebook_size=32, iters=10, seed=4))
    q3.fit(x)
    assert q3.fingerprint() != q.fingerprint()


def test_rqkmeans_to_sid_table_and_trie():
    x = clustered(n=500, dim=8, clusters=20)
    q = RQKMeans(RQKMeansConfig(num_levels=2, codebook_size=16, iters=5, standardize=True))
    q.fit(x)
    table = SIDTable.from_quantizer(q, torch.arange(1, 501), x)
    assert table.quantizer == "rqkmeans" and table.quantizer_fingerprint == q.fingerprint()
    assert table.length == 3 and table.health().levels[0].usage > 0.8
    trie = SIDTrie.from_table(table)
    assert trie.items(torch.as_tensor(table.codes)).tolist() == list(range(1, 501))


def test_rqkmeans_errors():
    with pytest.raises(ConfigError, match="fit"):
        RQKMeans().encode(torch.randn(3, 4))
    with pytest.raises(ConfigError, match="init"):
        kmeans(torch.randn(10, 2), 2, init="bogus")


def test_rqvae_learns_with_high_usage():
    x = clustered(n=1024, dim=24, clusters=32, noise=0.3)
    cfg = RQVAEConfig(input_dim=24, hidden_dims=(64, 32), latent_dim=8, num_levels=2, codebook_size=32,
                      dead_code_steps=16)
    model = RQVAE(cfg)
    torch.manual_seed(0)
    history = model.fit(x, epochs=25, batch_size=256, lr=3e-3, seed=0)
    before = history[0].recon_loss
    assert history[-1].recon_loss < 0.5 * before
    assert history[-1].loss < history[0].loss
    assert history[-1].usage[0] >= 0.8 and history[-1].usage[1] >= 0.5
    codes = model.encode(x)
    assert codes.shape == (1024, 2) and codes.dtype == torch.int64
    assert isinstance(model, Quantizer)
    assert model.reconstruction_error(x) < before


def test_rqvae_is_deterministic_by_seed_and_rejects_bad_shapes():
    x = clustered(n=256, dim=8, clusters=8)
    cfg = RQVAEConfig(input_dim=8, hidden_dims=(16,), latent_dim=4, num_levels=2, codebook_size=8)
    a, b = RQVAE(cfg), RQVAE(cfg)
    torch.manual_seed(1)
    a_state = {k: v.clone() for k, v in a.state_dict().items()}
    b.load_state_dict(a_state)
    a.fit(x, epochs=3, batch_size=64, seed=5)
    b.fit(x, epochs=3, batch_size=64, seed=5)
    assert torch.equal(a.encode(x), b.encode(x)) and a.fingerprint() == b.fingerprint()
    with pytest.raises(ConfigError, match="expected inputs"):
        a.fit(torch.randn(4, 3), epochs=1)


def test_rqvae_resets_dead_codes():
    x = clustered(n=256, dim=8, clusters=4, noise=0.05)  # 4 clusters, 16 codes: most codes die at first
    cfg = RQVAEConfig(input_dim=8, hidden_dims=(16,), latent_dim=4, num_levels=1, codebook_size=16, dead_code_steps=2)
    model = RQVAE(cfg)
    history = model.fit(x, epochs=4, batch_size=64, seed=0)
    assert sum(h.resets for h in history) > 0
