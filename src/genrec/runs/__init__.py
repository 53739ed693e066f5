"""The run room: what a run folder holds and how a finished run is opened again.

A floor of its own between ``objectives/`` and ``eval/``: evaluation, serving and the trainers all read run folders,
so the layout (:mod:`~genrec.runs.layout`), checkpoints (:mod:`~genrec.runs.checkpoint`), the ``config.json``
record and the dataset it names (:mod:`~genrec.runs.record`), the data a kind is evaluated on
(:mod:`~genrec.runs.ranking_data`) and the one :func:`~genrec.runs.open.open_run` for every kind live below them.
"""
