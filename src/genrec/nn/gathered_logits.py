"""Logits of each position against its own sampled items, without a (T, N) or (T, R, D) tensor.

Sampled softmax with per-position negatives (HSTU's recipe: R = 128 per position) needs ``s_t . v_{ids[t, r]}``
for T positions and R items each. The two obvious ways are dear on a CPU: one (T, N) product read back with
``gather`` computes every item's logit and, in the backward pass, zero-fills a (T, N) gradient and runs two more
(T, N) products; gathering the (T, R, D) vectors moves R * D floats per position through memory. Here the forward
pass gathers and multiplies a block of rows at a time (the block's vectors stay in cache), and the backward pass
multiplies the incoming (T, R) gradient as a sparse (T, N) matrix (R entries a row) with the item table, and its
transpose with the states. Same values as the dense product to float rounding (``tests/core/test_gathered_logits.py``).
"""

from __future__ import annotations

import warnings

import torch

CHUNK = 256  # positions per forward block: (256, R, D) gathered floats, about 1.6 MB at R = 128, D = 50


def gathered_logits(states: torch.Tensor, table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(T, R) logits ``states[t] . table[ids[t, r]]``; states (T, D), table (N, D), ids (T, R) long."""
    return _GatheredLogits.apply(states, table, ids)


def dense_gathered_logits(states: torch.Tensor, table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The same (T, R) logits through dense ops (CUDA and autocast, where they are fast; the benchmark's baseline):
    one (T, N) product read back where the catalogue is small (N <= R * D), else the (T, R, D) gathered vectors."""
    if table.shape[0] <= ids.shape[1] * states.shape[1]:
        return (states @ table.T).gather(1, ids)  # (T, N) -> (T, R)
    return torch.einsum("td,trd->tr", states, table[ids])


def _sparse_csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    with warnings.catch_warnings():  # torch marks sparse CSR as beta; the product used here is long-standing
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size, check_invariants=False)


class _GatheredLogits(torch.autograd.Function):
    @staticmethod
    def forward(ctx, states: torch.Tensor, table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(states, table, ids)
        out = states.new_empty(ids.shape)  # (T, R)
        for i in range(0, ids.shape[0], CHUNK):
            out[i:i + CHUNK] = torch.einsum("td,trd->tr", states[i:i + CHUNK], table[ids[i:i + CHUNK]])  # (c, R, D) read
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        states, table, ids = ctx.saved_tensors
        (T, R), N = ids.shape, table.shape[0]
        flat, g = ids.reshape(-1), grad.contiguous().reshape(-1)  # (T*R,) each
        grad_states = grad_table = None
        if ctx.needs_input_grad[0]:  # (T, N) sparse, R entries a row, times the table
            crow = torch.arange(0, T * R + 1, R, device=ids.device)
            grad_states = _sparse_csr(crow, flat, g, (T, N)) @ table  # (T, D)
        if ctx.needs_input_grad[1]:  # its transpose: entries sorted by item, times the states
            order = torch.argsort(flat, stable=True)
            crow = torch.zeros(N + 1, dtype=torch.long, device=ids.device)
            crow[1:] = torch.cumsum(torch.bincount(flat, minlength=N), 0)
            grad_table = _sparse_csr(crow, order // R, g[order], (N, T)) @ states  # (N, D)
        return grad_states, grad_table, None
