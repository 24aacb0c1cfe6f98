"""Erasure (issue 17): `lakeloop forget` deletes one user's rows from every table that can hold them, vacuums their
files after a grace, tags the model versions that learned from them and writes an erasure record.

``footprint`` finds the rows and the files, ``erase`` deletes and records, ``purge`` deletes the files (the vacuum),
``storage`` is the file level below delta-rs, ``record`` the ``governance/erasures`` table."""

from features.erasure.erase import forget
from features.erasure.purge import vacuum, vacuum_due
from features.erasure.record import ErasureRecord, erasure_versions, records

__all__ = ["ErasureRecord", "erasure_versions", "forget", "records", "vacuum", "vacuum_due"]
