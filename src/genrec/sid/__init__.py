"""Semantic ids: item embeddings -> residual quantizer codes -> unique SIDs -> trie -> constrained beam search.

The heavy optional pieces (the text model) load only when called; this package re-exports the public names.
"""

from genrec.sid.beam import BeamResult, beam_search, reorder_tensors, score_sids
from genrec.sid.codebook import (
    LevelHealth,
    Quantizer,
    SIDHealth,
    SIDTable,
    add_collision_level,
    tensor_fingerprint,
)
from genrec.sid.embed import ItemEmbeddings, cf_embeddings, embed_texts, item_texts, text_embeddings
from genrec.sid.rqkmeans import RQKMeans, RQKMeansConfig, kmeans
from genrec.sid.rqvae import RQVAE, RQVAEConfig
from genrec.sid.trie import SIDTrie

__all__ = [
    "BeamResult", "ItemEmbeddings", "LevelHealth", "Quantizer", "RQKMeans", "RQKMeansConfig", "RQVAE",
    "RQVAEConfig", "SIDHealth", "SIDTable", "SIDTrie", "add_collision_level", "beam_search", "cf_embeddings",
    "embed_texts", "item_texts", "kmeans", "reorder_tensors", "score_sids", "tensor_fingerprint", "text_embeddings",
]
