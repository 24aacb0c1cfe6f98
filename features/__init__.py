"""Curation: plain, typed, tested functions that turn bronze feedback events into gold training sets.

Modules are named after what they hold (``pii``, ``minhash``, ``labels`` ...); ``pipeline_local`` and
``pipeline_spark`` are the two engines that compose them. Nothing here imports ``orchestration``.
"""
