"""Vectorized MinHash over word shingles, LSH banding, and the two ways near-duplicates are resolved.

Everything is plain numpy over UTF-8 bytes, so both engines (and any machine) compute bit-identical
signatures: words are runs of letters/digits of the lower-cased text, hashed with a polynomial hash mod 2**64 computed
by prefix sums; a shingle is ``shingle`` consecutive words; permutation ``j`` is ``(a_j * x + b_j) mod 2**32``
on the shingle's 32-bit hash, with ``a_j, b_j`` drawn from ``numpy.random.default_rng(seed)``.

Resolution:
- ``greedy_keep``: walk docs in survivor order (earliest first by default); a doc is dropped when it is a
  verified near-duplicate of a doc already kept. No chaining: C similar only to a dropped B survives.
- ``components``: connected components (transitive) of verified pairs, for prompt clusters, where any
  near-duplicate pair across train/eval would be a leak.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl
import pyarrow as pa

from features.config import MinHashParams

U64 = np.uint64
_P = U64(0x100000001B3)  # odd multiplier of the polynomial word hash (FNV prime)
_MIX1, _MIX2 = U64(0xBF58476D1CE4E5B9), U64(0x94D049BB133111EB)
_EMPTY = np.uint32(0xFFFFFFFF)
_CHUNK_SHINGLES = 8192


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a bijection on uint64 that spreads every input bit."""
    x = x ^ (x >> U64(30))
    x = x * _MIX1
    x = x ^ (x >> U64(27))
    x = x * _MIX2
    return x ^ (x >> U64(31))


_WORD_BYTE = np.zeros(256, dtype=bool)
_WORD_BYTE[[*range(48, 58), *range(97, 123), 95, *range(128, 256)]] = True  # 0-9 a-z _ and non-ASCII


def _utf8(texts: Sequence[str | None] | pa.Array | pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """Lower-cased UTF-8 bytes of all texts, concatenated, with per-doc byte offsets."""
    s = texts if isinstance(texts, pl.Series) else pl.Series("t", texts, dtype=pl.String)
    arr = s.fill_null("").str.to_lowercase().to_arrow()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    arr = arr.cast(pa.large_string())
    _, off_buf, data_buf = arr.buffers()
    offs = np.frombuffer(off_buf, dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8)[int(offs[0]) : int(offs[-1])] if data_buf is not None else np.zeros(0, np.uint8)
    return data, offs - offs[0]


def word_hashes(texts: Sequence[str | None] | pa.Array | pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hash of every word of every text, flat, with per-doc word offsets.

    Words are maximal runs of ASCII letters, digits, ``_`` and non-ASCII characters in the lower-cased text.
    The hash is polynomial over the word's bytes mod 2**64, computed for all words at once by prefix sums
    (``sum b_i P^i`` between the word's ends, times ``P^-start``), then mixed.
    """
    data, doc_off = _utf8(texts)
    n_docs = len(doc_off) - 1
    if len(data) == 0:
        return np.zeros(0, dtype=U64), np.zeros(n_docs + 1, dtype=np.int64)
    w = _WORD_BYTE[data]
    boundary = np.zeros(len(data) + 1, dtype=bool)
    boundary[doc_off] = True
    prev = np.concatenate([[False], w[:-1]])
    nxt = np.concatenate([w[1:], [False]])
    starts = np.flatnonzero(w & (~prev | boundary[:-1]))
    ends = np.flatnonzero(w & (~nxt | boundary[1:])) + 1
    word_off = np.searchsorted(starts, doc_off, side="left").astype(np.int64)
    with np.errstate(over="ignore"):
        powers = np.full(len(data), _P, dtype=U64)
        powers[0] = 1
        np.cumprod(powers, out=powers)
        prefix = np.zeros(len(data) + 1, dtype=U64)
        np.cumsum(data.astype(U64) * powers, out=prefix[1:])
        inv_pow = np.full(len(data), U64(pow(int(_P), -1, 2**64)), dtype=U64)
        inv_pow[0] = 1
        np.cumprod(inv_pow, out=inv_pow)
        h = (prefix[ends] - prefix[starts]) * inv_pow[starts]
        return _mix64(h ^ (ends - starts).astype(U64) * _MIX2), word_off


def shingle_hashes(wh: np.ndarray, offsets: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """32-bit hashes of the k-word shingles of each doc, flat, with per-doc shingle offsets.

    A doc with fewer than k words (but at least one) has one shingle of all its words; an empty doc none.
    """
    counts = np.diff(offsets)
    n_sh = np.where(counts >= k, counts - k + 1, np.minimum(counts, 1))
    sh_off = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(n_sh, out=sh_off[1:])
    total = int(sh_off[-1])
    if total == 0:
        return np.zeros(0, dtype=np.uint32), sh_off
    doc_of = np.repeat(np.arange(len(counts)), n_sh)
    start = offsets[doc_of] + (np.arange(total) - sh_off[doc_of])
    width = np.minimum(counts[doc_of], k)
    padded = np.concatenate([wh, np.zeros(k, dtype=U64)])
    acc = np.zeros(total, dtype=U64)
    with np.errstate(over="ignore"):
        for j in range(k):
            term = padded[start + j] * U64(2 * j + 1) * _MIX1
            acc = np.where(j < width, (acc * _P) ^ term, acc)
        return (_mix64(acc) >> U64(32)).astype(np.uint32), sh_off


def permutations(params: MinHashParams) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(params.seed)
    a = rng.integers(1, 2**32, size=params.num_perm, dtype=np.uint64).astype(np.uint32) | np.uint32(1)
    b = rng.integers(0, 2**32, size=params.num_perm, dtype=np.uint64).astype(np.uint32)
    return a, b


def signatures(texts: Sequence[str | None] | pa.Array | pl.Series, params: MinHashParams) -> np.ndarray:
    """The (n_docs, num_perm) uint32 MinHash signatures; an empty text's row is all 0xFFFFFFFF."""
    wh, offsets = word_hashes(texts)
    sh, sh_off = shingle_hashes(wh, offsets, params.shingle)
    n = len(offsets) - 1
    a, b = permutations(params)
    sig = np.full((n, params.num_perm), _EMPTY, dtype=np.uint32)
    buf = np.empty((_CHUNK_SHINGLES, params.num_perm), dtype=np.uint32)
    doc = 0
    while doc < n:
        # a chunk of whole docs holding at most _CHUNK_SHINGLES shingles (or one big doc alone)
        end = int(np.searchsorted(sh_off, sh_off[doc] + _CHUNK_SHINGLES, side="right")) - 1
        end = max(end, doc + 1)
        lo, hi = int(sh_off[doc]), int(sh_off[end])
        if hi > lo:
            m = hi - lo
            out = buf[:m] if m <= _CHUNK_SHINGLES else np.empty((m, params.num_perm), dtype=np.uint32)
            np.multiply(sh[lo:hi, None], a[None, :], out=out)
            np.add(out, b[None, :], out=out)
            local = sh_off[doc : end + 1] - lo
            nonempty = np.flatnonzero(np.diff(local) > 0)
            sig[doc + nonempty] = np.minimum.reduceat(out, local[nonempty], axis=0)
        doc = end
    return sig


def band_keys(sig: np.ndarray, params: MinHashParams) -> np.ndarray:
    """(n_docs, bands) int64 key per band (the band index is mixed in, so keys of different bands differ)."""
    n = sig.shape[0]
    rows = sig.reshape(n, params.bands, params.rows).astype(U64)
    with np.errstate(over="ignore"):
        acc = np.broadcast_to(np.arange(params.bands, dtype=U64) * _MIX2, (n, params.bands)).copy()
        for r in range(params.rows):
            acc = _mix64(acc ^ rows[:, :, r])
    return acc.view(np.int64)


def candidate_pairs(keys: np.ndarray, *, valid: np.ndarray | None = None, max_bucket: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Doc pairs (i < j) that share a key in some band; each doc meets at most ``max_bucket`` earlier ones per band."""
    n = keys.shape[0]
    out: list[np.ndarray] = []
    idx = np.arange(n) if valid is None else np.flatnonzero(valid)
    for band in range(keys.shape[1]):
        k = keys[idx, band]
        order = idx[np.lexsort((idx, k))]
        ks = keys[order, band]
        for d in range(1, max_bucket + 1):
            same = np.flatnonzero(ks[d:] == ks[:-d])
            if len(same) == 0:
                break
            out.append(order[same].astype(np.int64) * n + order[same + d])
    if not out:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    codes = np.unique(np.concatenate(out))
    return codes // n, codes % n


def estimate_jaccard(sig: np.ndarray, i: np.ndarray, j: np.ndarray, *, chunk: int = 65536) -> np.ndarray:
    out = np.empty(len(i), dtype=np.float64)
    for s in range(0, len(i), chunk):
        out[s : s + chunk] = (sig[i[s : s + chunk]] == sig[j[s : s + chunk]]).mean(axis=1)
    return out


def near_duplicate_pairs(sig: np.ndarray, keys: np.ndarray, params: MinHashParams) -> tuple[np.ndarray, np.ndarray]:
    """Verified pairs (i < j): LSH candidates whose estimated Jaccard is at least the threshold."""
    valid = sig[:, 0] != _EMPTY
    i, j = candidate_pairs(keys, valid=valid, max_bucket=params.max_bucket)
    est = estimate_jaccard(sig, i, j)
    keep = est >= params.threshold - 1e-12
    return i[keep], j[keep]


def greedy_keep(n: int, i: np.ndarray, j: np.ndarray, *, rank: np.ndarray, fixed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Walk docs by ``rank`` (lowest first); drop a doc that is a near-dup of an already kept one.

    Returns (keep mask, survivor index per doc: itself if kept, else the kept doc it duplicates).
    ``fixed`` marks docs that are already curated (the index): they only lose to an earlier *new* doc.
    """
    keep = np.ones(n, dtype=bool)
    survivor = np.arange(n)
    if len(i) == 0:
        return keep, survivor
    a = np.where(rank[i] <= rank[j], i, j)  # earlier
    b = np.where(rank[i] <= rank[j], j, i)  # later
    if fixed is not None:
        both_fixed = fixed[a] & fixed[b]
        a, b = a[~both_fixed], b[~both_fixed]
    order = np.lexsort((rank[a], rank[b]))
    a, b = a[order], b[order]
    for x, y in zip(a.tolist(), b.tolist()):
        if keep[y] and keep[x]:
            keep[y] = False
            survivor[y] = x
    return keep, survivor


def components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected-component label of each doc under the verified pairs."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    g = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    return connected_components(g, directed=False)[1]


def sig_to_bytes(sig: np.ndarray) -> list[bytes]:
    le = np.ascontiguousarray(sig.astype("<u4"))
    return [row.tobytes() for row in le]


def sig_from_bytes(blobs: Sequence[bytes], num_perm: int) -> np.ndarray:
    if len(blobs) == 0:
        return np.zeros((0, num_perm), dtype=np.uint32)
    return np.frombuffer(b"".join(blobs), dtype="<u4").reshape(len(blobs), num_perm).astype(np.uint32)
