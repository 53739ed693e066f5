"""RQ-VAE (TIGER §3.1, spec §2.1): MLP encoder -> L-level residual quantizer -> MLP decoder.

Loss ``||x - x̂||² + Σ_l (||sg[r_l] - e_l||² + β ||r_l - sg[e_l]||²)`` with a straight-through gradient.
Deviations from the paper, all to fight code collapse (spec §2.8 A-T1, seen by independent reproductions):
inputs are standardised per dimension, each codebook is initialised by k-means on the first batch's residuals,
codes unused for ``dead_code_steps`` steps are re-seeded from current residuals, and AdamW replaces Adagrad.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from genrec.errors import ConfigError
from genrec.nn.optim import adamw
from genrec.progress import Progress
from genrec.sid.codebook import tensor_fingerprint
from genrec.sid.rqkmeans import kmeans, sq_distances

log = logging.getLogger(__name__)


@dataclass
class RQVAEConfig:
    input_dim: int = 384
    hidden_dims: tuple[int, ...] = (512, 256, 128)
    latent_dim: int = 32
    num_levels: int = 3
    codebook_size: int = 256
    beta: float = 0.25  # commitment weight (TIGER §3.1)
    dead_code_steps: int = 100  # re-seed a code unused for this many training steps (0 = never)
    kmeans_iters: int = 10  # Lloyd iterations of the first-batch codebook initialisation
    standardize: bool = True


class Quantized(NamedTuple):
    z_q: torch.Tensor  # (B, d) sum of the chosen code vectors, straight-through w.r.t. the latent
    codes: torch.Tensor  # (B, L) int64
    loss: torch.Tensor  # () codebook + commitment loss summed over levels
    residual_norm: torch.Tensor  # () mean squared norm of the last residual


class RQVAEOutput(NamedTuple):
    x_hat: torch.Tensor  # (B, D) reconstruction in the standardised input space
    codes: torch.Tensor  # (B, L)
    loss: torch.Tensor  # () total
    recon_loss: torch.Tensor  # ()
    quant_loss: torch.Tensor  # ()


class EpochLog(NamedTuple):
    epoch: int
    loss: float
    recon_loss: float
    quant_loss: float
    usage: tuple[float, ...]  # per level: fraction of codes assigned to at least one item during the epoch
    resets: int  # dead codes re-seeded during the epoch


def _mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RQVAE(nn.Module):
    """Residual-quantised autoencoder that turns (N, D) item embeddings into (N, L) codes."""

    name = "rqvae"

    def __init__(self, config: RQVAEConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or RQVAEConfig()
        if cfg.num_levels < 1 or cfg.codebook_size < 2 or cfg.latent_dim < 1:
            raise ConfigError("rqvae: num_levels >= 1, codebook_size >= 2 and latent_dim >= 1 are required")
        dims = [cfg.input_dim, *cfg.hidden_dims, cfg.latent_dim]
        self.encoder = _mlp(dims)
        self.decoder = _mlp(dims[::-1])
        self.codebooks = nn.Parameter(torch.zeros(cfg.num_levels, cfg.codebook_size, cfg.latent_dim))  # (L, K, d)
        self.register_buffer("mean", torch.zeros(cfg.input_dim))
        self.register_buffer("std", torch.ones(cfg.input_dim))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.register_buffer("last_used", torch.zeros(cfg.num_levels, cfg.codebook_size, dtype=torch.long))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._resets = 0

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        return (self.config.codebook_size,) * self.config.num_levels

    def params(self) -> dict[str, Any]:
        return asdict(self.config)

    def fingerprint(self) -> str:
        return tensor_fingerprint(*[t.float() for t in self.state_dict().values()], extra={"name": self.name,
                                                                                           **self.params()})

    def _standardize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    @torch.no_grad()
    def _init_codebooks(self, z: torch.Tensor, seed: int) -> None:
        """k-means on the first batch's residuals, level by level (TIGER's initialisation)."""
        r = z.detach()
        for level in range(self.config.num_levels):
            res = kmeans(r.cpu(), self.config.codebook_size, self.config.kmeans_iters, "kmeans++", seed + level)
            self.codebooks.data[level] = res.centroids.to(r)
            r = r - self.codebooks[level][res.assignments.to(r.device)]
        self.initialized.fill_(True)

    @torch.no_grad()
    def _reset_dead(self, level: int, r: torch.Tensor, gen: torch.Generator | None) -> None:
        limit = self.config.dead_code_steps
        if limit <= 0 or r.shape[0] == 0:
            return
        dead = ((self.step - self.last_used[level]) > limit).nonzero().squeeze(1)  # (n_dead,)
        if dead.numel() == 0:
            return
        pick = torch.randint(0, r.shape[0], (dead.numel(),), generator=gen).to(r.device)
        self.codebooks.data[level, dead] = r[pick].detach()
        self.last_used[level, dead] = self.step
        self._resets += int(dead.numel())

    def quantize(self, z: torch.Tensor, gen: torch.Generator | None = None) -> Quantized:
        """(B, d) latent -> residual codes; in training mode also tracks usage and re-seeds dead codes."""
        r = z
        z_q = torch.zeros_like(z)
        codes, loss = [], z.new_zeros(())
        for level in range(self.config.num_levels):
            if self.training:
                self._reset_dead(level, r, gen)
            book = self.codebooks[level]  # (K, d)
            c = sq_distances(r.detach(), book.detach()).argmin(dim=1)  # (B,)
            # Not ``book[c]``: that gradient is an index_put with accumulation, which on several CPU threads adds
            # rows with atomics in a racing order (another table every run); the embedding gradient sums each
            # code's rows in batch order, the order of the one-thread index_put, so one thread is unchanged.
            e = F.embedding(c, book)  # (B, d)
            loss = loss + F.mse_loss(e, r.detach()) + self.config.beta * F.mse_loss(r, e.detach())
            if self.training:
                self.last_used[level, c] = self.step
            z_q = z_q + e
            r = r - e.detach()
            codes.append(c)
        z_st = z + (z_q - z).detach()  # straight-through estimator
        return Quantized(z_st, torch.stack(codes, dim=1), loss, (r.detach() ** 2).sum(-1).mean())

    def forward(self, x: torch.Tensor, gen: torch.Generator | None = None) -> RQVAEOutput:
        """(B, D) standardised inputs -> reconstruction, codes and losses."""
        z = self.encoder(x)  # (B, d)
        q = self.quantize(z, gen)
        x_hat = self.decoder(q.z_q)  # (B, D)
        recon = F.mse_loss(x_hat, x)
        return RQVAEOutput(x_hat, q.codes, recon + q.loss, recon, q.loss)

    def fit(self, x: torch.Tensor, *, epochs: int = 100, batch_size: int = 1024, lr: float = 1e-3,
            seed: int = 0, weight_decay: float = 1e-4, log_every: int = 10, progress: bool = False
            ) -> list[EpochLog]:
        """Train on item embeddings ``x`` (N, D); returns one log record per epoch (also sent to ``logging``).
        ``progress``: a bar over the epochs on a terminal, a plain line now and then elsewhere
        (:class:`genrec.progress.Progress`)."""
        if x.ndim != 2 or x.shape[1] != self.config.input_dim:
            raise ConfigError(f"rqvae: expected inputs of shape (N, {self.config.input_dim}), got {tuple(x.shape)}")
        gen = torch.Generator().manual_seed(seed)  # batch order and dead-code picks; weights are set at init
        device = self.codebooks.device
        x = x.detach().float().to(device)
        if self.config.standardize:
            self.mean.copy_(x.mean(0))
            self.std.copy_(x.std(0).clamp_min(1e-6))
        xs = self._standardize(x)  # (N, D)
        opt = adamw(self.parameters(), lr, weight_decay=weight_decay)
        history: list[EpochLog] = []
        n = xs.shape[0]
        shown = Progress("rqvae", epochs, unit="epoch") if progress else None
        for epoch in range(epochs):
            self.train()
            self._resets = 0
            perm = torch.randperm(n, generator=gen).to(device)
            tot = [0.0, 0.0, 0.0]
            seen = torch.zeros(self.config.num_levels, self.config.codebook_size, dtype=torch.bool, device=device)
            for start in range(0, n, batch_size):
                xb = xs[perm[start:start + batch_size]]  # (b, D)
                if not bool(self.initialized):
                    with torch.no_grad():
                        self._init_codebooks(self.encoder(xb), seed)
                out = self(xb, gen)
                seen.scatter_(1, out.codes.T, True)  # (L, K) codes used in this epoch
                opt.zero_grad(set_to_none=True)
                out.loss.backward()
                opt.step()
                self.step += 1
                w = xb.shape[0] / n
                tot[0] += out.loss.item() * w
                tot[1] += out.recon_loss.item() * w
                tot[2] += out.quant_loss.item() * w
            usage = tuple(float(u) for u in seen.float().mean(1))
            history.append(EpochLog(epoch, tot[0], tot[1], tot[2], usage, self._resets))
            if shown is not None:
                shown.update(1)
                shown.set_postfix(loss=f"{tot[0]:.4f}", usage=" ".join(f"{u:.2f}" for u in usage))
            if log_every and (epoch % log_every == 0 or epoch == epochs - 1):
                log.info("rqvae epoch %d loss %.4f recon %.4f quant %.4f usage %s resets %d", epoch, tot[0], tot[1],
                         tot[2], " ".join(f"{u:.2f}" for u in usage), self._resets)
        if shown is not None:
            shown.close()
        self.eval()
        return history

    @torch.no_grad()
    def encode(self, x: torch.Tensor, batch_size: int = 8192, standardized: bool = False) -> torch.Tensor:
        """(N, D) raw embeddings -> (N, L) int64 codes."""
        was = self.training
        self.eval()
        device = self.codebooks.device
        out = []
        for start in range(0, x.shape[0], batch_size):
            xb = x[start:start + batch_size].float().to(device)
            if not standardized:
                xb = self._standardize(xb)
            out.append(self.quantize(self.encoder(xb)).codes.cpu())
        self.train(was)
        return torch.cat(out) if out else torch.zeros(0, self.config.num_levels, dtype=torch.long)

    def code_usage(self, x: torch.Tensor, standardized: bool = False) -> tuple[float, ...]:
        """Fraction of each level's codes used by at least one row of ``x``."""
        codes = self.encode(x, standardized=standardized)  # (N, L)
        k = self.config.codebook_size
        return tuple(torch.unique(codes[:, lv]).numel() / k for lv in range(codes.shape[1]))

    @torch.no_grad()
    def reconstruction_error(self, x: torch.Tensor) -> float:
        """Mean squared reconstruction error in the standardised space (eval mode)."""
        was = self.training
        self.eval()
        xs = self._standardize(x.float().to(self.codebooks.device))
        err = float(F.mse_loss(self.decoder(self.quantize(self.encoder(xs)).z_q), xs))
        self.train(was)
        return err if math.isfinite(err) else float("inf")
