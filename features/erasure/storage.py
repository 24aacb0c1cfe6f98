"""A Delta table's files as storage sees them, below delta-rs: the data files on disk (whatever version holds them),
the files one commit removed, deleting files, and taking the statistics of erased files out of the log.

Erasure needs this level because delta-rs's vacuum only deletes files by age and keeps whole versions
(``keep_versions``), and because the log itself holds each file's min/max statistics (a user id, the first
characters of a text) in the commit that added it and in every checkpoint that lists it.

Paths are relative to the table root, unquoted (``event_date=2026-01-05/part-...parquet``). Local paths and any URI
pyarrow's filesystems open are supported. An ``s3://`` lake is opened with the lake's own settings, the
``storage_options`` delta-rs gets (``infra.storage.storage_options``: endpoint, region, path style, credentials), so
erasure reads and deletes on the same store the tables were written to; other schemes (``gs://``, ``abfs://``) take
their credentials from the environment.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Mapping
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

LOG = "_delta_log"


Options = Mapping[str, str] | None  # delta-rs storage options (infra.storage.storage_options); None: a local lake


def _fs(uri: str, options: Options = None) -> tuple[pafs.FileSystem, str]:
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    scheme, rest = uri.split("://", 1)
    if scheme in ("s3", "s3a") and options:
        return s3_filesystem(options), rest.rstrip("/")
    return pafs.FileSystem.from_uri(uri)


def s3_filesystem(options: Mapping[str, str]) -> pafs.S3FileSystem:
    """pyarrow's S3 filesystem for the store delta-rs reaches with ``options`` (the same endpoint, region, addressing
    and credentials; without credentials in them, pyarrow's own chain: environment, profile, instance role)."""
    endpoint = options.get("AWS_ENDPOINT_URL")
    where = urlsplit(endpoint) if endpoint else None
    return pafs.S3FileSystem(
        access_key=options.get("AWS_ACCESS_KEY_ID"), secret_key=options.get("AWS_SECRET_ACCESS_KEY"),
        session_token=options.get("AWS_SESSION_TOKEN"), region=options.get("AWS_REGION"),
        endpoint_override=(where.netloc + where.path.rstrip("/")) if where else None, scheme=where.scheme if where else None,
        force_virtual_addressing=options.get("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "").lower() == "true" and where is not None)


def _rel(root: str, path: str) -> str:
    return path[len(root):].lstrip("/")


def data_files(uri: str, *, storage_options: Options = None) -> list[str]:
    """Every Parquet data file under the table (current, removed, or never committed; ``_change_data`` included),
    not the log."""
    fs, root = _fs(uri, storage_options)
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    except FileNotFoundError:
        return []
    out = [_rel(root, i.path) for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet")]
    return sorted(p for p in out if not p.startswith(LOG + "/"))


def read_columns(uri: str, rel: str, columns: Iterable[str], *, storage_options: Options = None) -> pa.Table:
    """The ``columns`` of one data file; a column the file lacks (written before the schema had it, or a partition
    column) comes back null."""
    fs, root = _fs(uri, storage_options)
    with fs.open_input_file(f"{root}/{rel}") as f:
        pf = pq.ParquetFile(f)
        names = set(pf.schema_arrow.names)
        wanted = [c for c in columns if c in names]
        tbl = pf.read(columns=wanted)
    for c in columns:
        if c not in names:
            tbl = tbl.append_column(c, pa.nulls(tbl.num_rows, pa.string()))
    return tbl.select(list(columns))


def current_files(dt: object, *, storage_options: Options = None) -> set[str]:
    """The data files of a ``DeltaTable``'s loaded version, relative to its root."""
    root = _fs(dt.table_uri, storage_options)[1]  # type: ignore[attr-defined]
    out = set()
    for u in dt.file_uris():  # type: ignore[attr-defined]
        path = u.split("://", 1)[-1]  # file:///lake/t/x, s3://bucket/t/x -> /lake/t/x, bucket/t/x (the filesystem's spelling)
        out.add(unquote(_rel(root, path) if path.startswith(root) else path))
    return out


def removed_by(uri: str, version: int, *, storage_options: Options = None) -> set[str]:
    """The data files the commit of ``version`` removed (its JSON log entry)."""
    fs, root = _fs(uri, storage_options)
    with fs.open_input_stream(f"{root}/{LOG}/{version:020d}.json") as f:
        lines = f.read().decode("utf-8").splitlines()
    return {unquote(a["remove"]["path"]) for a in map(json.loads, filter(str.strip, lines)) if "remove" in a}


def delete_files(uri: str, paths: Iterable[str], *, storage_options: Options = None) -> list[str]:
    """Delete these data files; returns those that were there."""
    fs, root = _fs(uri, storage_options)
    done = []
    for rel in sorted(paths):
        try:
            fs.delete_file(f"{root}/{rel}")
            done.append(rel)
        except FileNotFoundError:
            pass
    return done


def _write_atomically(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with fs.open_output_stream(tmp) as out:
        out.write(data)
    fs.move(tmp, path)  # a rename on a local disk; object stores put whole objects anyway


def scrub_log_stats(uri: str, paths: Iterable[str], *, storage_options: Options = None) -> int:
    """Drop the statistics of the ``add``/``remove`` actions of ``paths`` from every commit, checkpoint (parts and
    sidecars too) and version checksum of the log (statistics are optional in the Delta protocol: readers then simply
    do not skip those files). Returns the log files rewritten."""
    gone = set(paths)
    if not gone:
        return 0
    fs, root = _fs(uri, storage_options)
    infos = fs.get_file_info(pafs.FileSelector(f"{root}/{LOG}", recursive=True, allow_not_found=True))
    rewritten = 0
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        if info.path.endswith(".json"):
            rewritten += _scrub_commit(fs, info.path, gone)
        elif info.path.endswith(".crc"):
            rewritten += _scrub_checksum(fs, info.path, gone)
        elif info.path.endswith(".parquet"):
            rewritten += _scrub_checkpoint(fs, info.path, gone)
    return rewritten


def _scrub_commit(fs: pafs.FileSystem, path: str, gone: set[str]) -> int:
    with fs.open_input_stream(path) as f:
        text = f.read().decode("utf-8")
    if not any(g.rsplit("/", 1)[-1] in text for g in gone):  # file names are unique (a UUID each): a cheap first look
        return 0
    changed = False
    lines = []
    for line in text.splitlines():
        if not line.strip():
            continue
        action = json.loads(line)
        for kind in ("add", "remove"):
            body = action.get(kind)
            if body and unquote(body.get("path", "")) in gone and body.get("stats") is not None:
                body.pop("stats")
                changed = True
        lines.append(json.dumps(action, separators=(",", ":")))
    if changed:
        _write_atomically(fs, path, ("\n".join(lines) + "\n").encode("utf-8"))
    return int(changed)


def _scrub_checksum(fs: pafs.FileSystem, path: str, gone: set[str]) -> int:
    """A version checksum file (Spark writes them) may list the table's files, statistics included (``allFiles``)."""
    with fs.open_input_stream(path) as f:
        text = f.read().decode("utf-8")
    if not any(g.rsplit("/", 1)[-1] in text for g in gone):
        return 0
    try:
        doc = json.loads(text)
    except ValueError:
        return 0
    changed = False
    files = (doc.get("allFiles") if isinstance(doc, dict) else None) or []
    for body in files:
        if isinstance(body, dict) and unquote(body.get("path", "")) in gone and body.get("stats") is not None:
            body.pop("stats")
            changed = True
    if changed:
        _write_atomically(fs, path, json.dumps(doc, separators=(",", ":")).encode("utf-8"))
    return int(changed)


def _scrub_checkpoint(fs: pafs.FileSystem, path: str, gone: set[str]) -> int:
    with fs.open_input_file(path) as f:
        tbl = pq.read_table(f)
    changed = False
    for kind in ("add", "remove"):
        if kind not in tbl.column_names:
            continue
        col = tbl.column(kind).combine_chunks()
        if not isinstance(col, pa.StructArray) or col.type.get_field_index("stats") < 0:
            continue
        hit = pc.fill_null(pc.is_in(pc.struct_field(col, "path"), value_set=pa.array(sorted(gone) + [_quote_all(g) for g in gone])), False)
        fields = [f.name for f in col.type]
        drop = [n for n in ("stats", "stats_parsed") if n in fields]
        if not pc.any(pc.and_(hit, pc.is_valid(pc.struct_field(col, drop[0])))).as_py():
            continue
        children = []
        for i, name in enumerate(fields):
            child = col.field(i)
            children.append(pc.if_else(hit, pa.nulls(len(child), child.type), child) if name in drop else child)
        fixed = pa.StructArray.from_arrays(children, fields=list(col.type), mask=pc.invert(col.is_valid()))
        tbl = tbl.set_column(tbl.column_names.index(kind), tbl.schema.field(kind), fixed)
        changed = True
    if changed:
        sink = pa.BufferOutputStream()
        pq.write_table(tbl, sink)
        _write_atomically(fs, path, sink.getvalue().to_pybytes())
    return int(changed)


def _quote_all(rel: str) -> str:
    """A path as a Delta log may spell it: partition values percent-encoded."""
    from urllib.parse import quote

    return quote(rel, safe="/=")
