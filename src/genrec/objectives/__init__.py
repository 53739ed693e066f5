"""Training objectives, separate from the models so every backbone of a kind reuses them.

One convention (see :mod:`genrec.models.base`): an objective gives the *sum* of per-position losses, with the
number of positions it covers (the ranking and next-SID losses return ``(sum, count)``; the next-item and MIM
losses are handed exactly the ``T`` supervised rows, so their count is ``T``), and the training loop divides the
sum by the global count, which keeps one process and several data-parallel ones on the same step. Families: next item for retrievers
(:mod:`~genrec.objectives.next_item`), CTR BCE and the listwise softmax for rankers
(:mod:`~genrec.objectives.ranking`), next-SID cross-entropy for generators (:mod:`~genrec.objectives.next_sid`),
masked item modelling for HPGR stage 1 (:mod:`~genrec.objectives.mim`).
"""

from genrec.objectives.next_item import OBJECTIVES, build_objective
from genrec.objectives.next_sid import next_sid_loss
from genrec.objectives.ranking import ctr_bce, listwise_softmax

__all__ = ["OBJECTIVES", "build_objective", "ctr_bce", "listwise_softmax", "next_sid_loss"]
