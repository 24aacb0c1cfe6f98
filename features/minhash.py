"""Vectorized MinHash over word shingles, LSH banding, and the two ways near-duplicates are resolved.

Everything is plain numpy over UTF-8 bytes, so both engines (and any machine) compute bit-identical
signatures: words are runs of letters/digits of the lower-cased text, hashed with a polynomial hash mod 2**64 computed
by prefix sums; a shingle is ``shingle`` consecutive words, hashed to 64 bits.

Signature scheme 2 (``SCHEME``), a fast-similarity-sketch with element fingerprints: every shingle ``x`` has a
28-bit fingerprint ``f(x)``; in round ``r`` (``ROUNDS`` of them) it is thrown into one random slot with the value
``r << 28 | f(x) ^ c_r``, and a slot keeps its smallest value; a slot no round filled keeps
``ROUNDS << 28 | min_x f(x) ^ c_slot``. Every slot is thus the minimum of a fixed random key over the set (the
estimator's ``P[slot_A == slot_B] = Jaccard`` holds slot by slot, which the LSH bands rely on), while the slots are
filled mostly by *different* shingles (sampling without replacement, unlike ``num_perm`` independent permutations).
Because a slot's value gives back the fingerprint of the shingle that won it, the Jaccard estimate of a pair counts
*distinct* shingles: of the union's winners (slot-wise minimum of the two signatures), the share that both texts hold
(the slot is equal). That sample of the union is drawn independently of which text holds what, so the estimate is
unbiased, and on texts of up to a few hundred shingles it is much tighter than the share of equal slots (RMSE 0.018
vs 0.040 on bench_curation's labelled pairs near the threshold). All constants come from ``seed`` through
splitmix64 (no numpy RNG stream), so stored signatures do not depend on the numpy version.

Index rows carry ``SCHEME`` and the parameters their signatures depend on as a 4-byte tag after the signature
(``index_signature_bytes``); ``features.dedup.refresh_index`` rebuilds rows with another tag once.

Resolution:
- ``greedy_keep``: walk docs in survivor order (earliest first by default); a doc is dropped when it is a
  verified near-duplicate of a doc already kept. No chaining: C similar only to a dropped B survives.
- ``components``: connected components (transitive) of verified pairs, for prompt clusters, where any
  near-duplicate pair across train/eval would be a leak.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import polars as pl
import pyarrow as pa

from features.config import MinHashParams

U64 = np.uint64
_P = U64(0x100000001B3)  # odd multiplier of the polynomial word hash (FNV prime)
_MIX1, _MIX2 = U64(0xBF58476D1CE4E5B9), U64(0x94D049BB133111EB)
_EMPTY = np.uint32(0xFFFFFFFF)

SCHEME = 2  # version of the signature scheme; stored index signatures of another scheme are rebuilt (features.dedup)
ROUNDS = 8  # rounds in which every shingle is thrown into a random slot (then the slots left empty are filled)
_FP_BITS = 28  # fingerprint bits of a slot value; the 4 bits above hold the round (ROUNDS = fallback), < 0xF = empty
_FP_MASK = np.uint32((1 << _FP_BITS) - 1)
_M64 = (1 << 64) - 1


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
    The hash is polynomial over the word's bytes mod 2**64, computed for many words at once by prefix sums
    (``sum b_i P^i`` between the word's ends, times ``P^-start``), then mixed.
    """
    return _word_hashes(*_utf8(texts))


def _word_hashes(data: np.ndarray, doc_off: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
    h = np.empty(len(starts), dtype=U64)
    # words by the _CHUNK_BYTES block their first byte falls in: small prefix sums over cached powers, no page faults
    cuts = np.unique(np.searchsorted(starts, np.arange(0, len(data) + _CHUNK_BYTES, _CHUNK_BYTES)))
    with np.errstate(over="ignore"):
        for a, b in zip(cuts[:-1].tolist(), cuts[1:].tolist()):
            lo, hi = int(starts[a]), int(ends[b - 1])
            powers, inv_pow = _power_tables(hi - lo)
            prefix = np.zeros(hi - lo + 1, dtype=U64)
            np.cumsum(data[lo:hi] * powers[: hi - lo], out=prefix[1:])
            s, e = starts[a:b] - lo, ends[a:b] - lo
            h[a:b] = (prefix[e] - prefix[s]) * inv_pow[s]
        return _mix64(h ^ (ends - starts).astype(U64) * _MIX2), word_off


_CHUNK_BYTES = 1 << 18  # bytes of text hashed at once (small prefix-sum arrays: cache-resident, no page faults)
_CHUNK_FALLBACK = 1 << 18  # (empty slot, shingle) pairs compared at once


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``P**i`` and ``P**-i`` mod 2**64 for ``i < n``."""
    with np.errstate(over="ignore"):
        powers = np.full(n, _P, dtype=U64)
        powers[0] = 1
        inv = np.full(n, U64(pow(int(_P), -1, 2**64)), dtype=U64)
        inv[0] = 1
        return np.cumprod(powers), np.cumprod(inv)


_POWERS = _powers(2 * _CHUNK_BYTES)  # a block's words span at most _CHUNK_BYTES + their longest word


def _power_tables(n: int) -> tuple[np.ndarray, np.ndarray]:
    return _POWERS if n <= len(_POWERS[0]) else _powers(n)  # a longer word: tables for this block only


def shingle_hashes(wh: np.ndarray, offsets: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of the k-word shingles of each doc, flat, with per-doc shingle offsets.

    A doc with fewer than k words (but at least one) has one shingle of all its words; an empty doc none.
    """
    counts = np.diff(offsets)
    n_sh = np.where(counts >= k, counts - k + 1, np.minimum(counts, 1))
    sh_off = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(n_sh, out=sh_off[1:])
    total = int(sh_off[-1])
    if total == 0:
        return np.zeros(0, dtype=U64), sh_off
    start = np.repeat(offsets[:-1] - sh_off[:-1], n_sh) + np.arange(total)  # index of each shingle's first word
    full = np.repeat(counts >= k, n_sh)
    short = np.flatnonzero(~full)  # the one shingle of a doc of fewer than k words: all its words
    acc = np.zeros(total, dtype=U64)
    with np.errstate(over="ignore"):
        s = start if len(short) == 0 else start[full]
        a = np.zeros(len(s), dtype=U64)
        for j in range(k):  # acc = (acc * P) ^ (word_j * (2j + 1) * MIX1) over the shingle's words
            np.multiply(a, _P, out=a)
            np.bitwise_xor(a, wh[s + j] * _TERM[j], out=a)
        if len(short) == 0:
            acc = a
        else:
            acc[full] = a
            width = np.repeat(counts, n_sh)[short]
            b = np.zeros(len(short), dtype=U64)
            for j in range(k):
                live = j < width
                b = np.where(live, (b * _P) ^ (wh[np.where(live, start[short] + j, 0)] * _TERM[j]), b)
            acc[short] = b
        return _mix64(acc), sh_off


_TERM = [U64((2 * j + 1) * int(_MIX1) % 2**64) for j in range(16)]


def _splitmix(state: int, n: int) -> list[int]:
    """``n`` 64-bit outputs of splitmix64 from ``state`` (plain integers: no dependence on numpy's RNG streams)."""
    out = []
    for _ in range(n):
        state = (state + 0x9E3779B97F4A7C15) & _M64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        out.append(z ^ (z >> 31))
    return out


@lru_cache(maxsize=16)
def _constants(seed: int, num_perm: int) -> tuple[np.ndarray, int, np.uint32, np.ndarray]:
    """(2 slot salts, fingerprint salt, round xor, the fallback xor of each slot), all from ``seed``.

    Round r's values are ``r << 28 | f ^ (r * round_xor mod 2**28)`` (the xor reorders the fingerprints from round to
    round), a fallback slot's ``ROUNDS << 28 | f ^ slot_xor[slot]``."""
    raw = _splitmix(seed * 0x2545F4914F6CDD1D + SCHEME, 4 + num_perm)
    slot_salt = np.array(raw[:2], dtype=U64)
    round_xor = np.uint32((raw[3] >> (64 - _FP_BITS)) | 1)
    slot_xor = (np.array(raw[4:], dtype=U64) >> U64(64 - _FP_BITS)).astype(np.uint32)
    slot_xor.setflags(write=False)
    return slot_salt, raw[2], round_xor, slot_xor


def signatures(texts: Sequence[str | None] | pa.Array | pl.Series, params: MinHashParams) -> np.ndarray:
    """The (n_docs, num_perm) uint32 signatures of scheme ``SCHEME``; an empty text's row is all 0xFFFFFFFF.

    Docs are sketched in runs of about ``_CHUNK_BYTES`` of text (a longer doc alone), so every temporary array is
    small and reused: the same speed on the first call of a process as on later ones.
    """
    data, doc_off = _utf8(texts)
    n, k = len(doc_off) - 1, params.num_perm
    sig = np.full((n, k), _EMPTY, dtype=np.uint32)
    starts = np.searchsorted(doc_off, np.arange(_CHUNK_BYTES, len(data), _CHUNK_BYTES), side="right") - 1
    cuts = np.unique(np.concatenate([[0], starts, [n]]))
    for a, b in zip(cuts[:-1].tolist(), cuts[1:].tolist()):
        lo, hi = int(doc_off[a]), int(doc_off[b])
        wh, word_off = _word_hashes(data[lo:hi], doc_off[a : b + 1] - lo)
        sh, sh_off = shingle_hashes(wh, word_off, params.shingle)
        if len(sh):
            _sketch(sh, sh_off, sig[a:b], params)
    return sig


def _sketch(sh: np.ndarray, sh_off: np.ndarray, sig: np.ndarray, params: MinHashParams) -> None:
    """Fill ``sig`` (rows all empty) with the signatures of the docs whose shingle hashes are ``sh`` by ``sh_off``."""
    n, k = sig.shape
    slot_salt, fp_salt, round_xor, slot_xor = _constants(params.seed, k)
    counts = np.diff(sh_off)
    base = np.repeat(np.arange(n, dtype=np.int64) * k, counts)
    flat = sig.reshape(-1)
    with np.errstate(over="ignore"):
        fp = (_mix64(sh ^ U64(fp_salt)) >> U64(64 - _FP_BITS)).astype(np.uint32)
        for r in range(ROUNDS):  # round r's slot: 16 bits of a mixed hash (4 rounds per hash), scaled to [0, k)
            if r % 4 == 0:
                h = _mix64(sh ^ slot_salt[r // 4])
            slot = (((h >> U64(16 * (r % 4))) & U64(0xFFFF)) * U64(k)) >> U64(16)
            value = (fp ^ np.uint32((r * int(round_xor)) & int(_FP_MASK))) | np.uint32(r << _FP_BITS)
            np.minimum.at(flat, base + slot.astype(np.int64), value)
    # slots no round filled: the minimum over the doc's shingles of fingerprint ^ the slot's own constant
    doc, col = np.nonzero(sig == _EMPTY)
    has = counts[doc] > 0
    doc, col = doc[has], col[has]
    if len(doc) == 0:
        return
    c = counts[doc]
    off = np.zeros(len(doc) + 1, dtype=np.int64)
    np.cumsum(c, out=off[1:])
    cuts = np.unique(np.concatenate([np.searchsorted(off, np.arange(0, int(off[-1]), _CHUNK_FALLBACK), side="right") - 1, [len(doc)]]))
    for a, b in zip(cuts[:-1].tolist(), cuts[1:].tolist()):  # (empty slot, shingle of its doc) pairs, in bounded pieces
        cc, o = c[a:b], off[a : b + 1] - off[a]
        owner = np.repeat(np.arange(b - a), cc)
        x = fp[np.repeat(sh_off[doc[a:b]] - o[:-1], cc) + np.arange(int(o[-1]))] ^ slot_xor[col[a:b][owner]]
        sig[doc[a:b], col[a:b]] = np.minimum.reduceat(x, o[:-1]) | np.uint32(ROUNDS << _FP_BITS)


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


def estimate_jaccard(sig: np.ndarray, i: np.ndarray, j: np.ndarray, params: MinHashParams, *, chunk: int = 16384) -> np.ndarray:
    """Estimated Jaccard of pairs (i, j): distinct shingles among the union's slot winners that both docs hold.

    The union's signature is the slot-wise minimum; its slot holds a shingle of both docs exactly when the two slots
    are equal; the winner's fingerprint (value ^ the slot's constant) tells the same shingle apart in several slots.
    """
    out = np.empty(len(i), dtype=np.float64)
    _, _, round_xor, slot_xor = _constants(params.seed, sig.shape[1])
    fallback = np.uint32(ROUNDS << _FP_BITS)
    for s in range(0, len(i), chunk):
        a, b = sig[i[s : s + chunk]], sig[j[s : s + chunk]]
        u = np.minimum(a, b)
        xor = np.where(u >= fallback, slot_xor[None, :], ((u >> np.uint32(_FP_BITS)) * round_xor) & _FP_MASK)
        key = (((u & _FP_MASK) ^ xor) << np.uint32(1)) | (a == b)
        key.sort(axis=1)
        first = np.empty(key.shape, dtype=bool)
        first[:, 0] = True
        np.not_equal(key[:, 1:] >> np.uint32(1), key[:, :-1] >> np.uint32(1), out=first[:, 1:])
        out[s : s + chunk] = (first & (key & np.uint32(1)).astype(bool)).sum(axis=1) / first.sum(axis=1)
    return out


def near_duplicate_pairs(sig: np.ndarray, keys: np.ndarray, params: MinHashParams) -> tuple[np.ndarray, np.ndarray]:
    """Verified pairs (i < j): LSH candidates whose estimated Jaccard is at least the threshold."""
    valid = sig[:, 0] != _EMPTY
    i, j = candidate_pairs(keys, valid=valid, max_bucket=params.max_bucket)
    est = estimate_jaccard(sig, i, j, params)
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
    """Signature rows as little-endian bytes (between Spark executors and the driver; the index adds a tag)."""
    le = np.ascontiguousarray(sig.astype("<u4"))
    return [row.tobytes() for row in le]


def sig_from_bytes(blobs: Sequence[bytes], num_perm: int) -> np.ndarray:
    if len(blobs) == 0:
        return np.zeros((0, num_perm), dtype=np.uint32)
    return np.frombuffer(b"".join(blobs), dtype="<u4").reshape(len(blobs), num_perm).astype(np.uint32)


def scheme_tag(params: MinHashParams) -> bytes:
    """4 bytes naming the signature scheme and the parameters a stored signature and its band keys depend on."""
    name = f"lakeloop-minhash/{SCHEME}/{ROUNDS}/{params.num_perm}/{params.bands}/{params.shingle}/{params.seed}"
    return zlib.crc32(name.encode()).to_bytes(4, "little")


def index_signature_bytes(sig: np.ndarray, params: MinHashParams) -> list[bytes]:
    """The index's form of signatures: the little-endian row, then ``scheme_tag``."""
    tag = scheme_tag(params)
    return [row + tag for row in sig_to_bytes(sig)]


def index_signatures(blobs: Sequence[bytes], params: MinHashParams) -> np.ndarray:
    """Signatures back from the index's form; every blob must carry this scheme's tag (see ``is_current``)."""
    tag, width = scheme_tag(params), 4 * params.num_perm
    if any(len(b) != width + 4 or b[width:] != tag for b in blobs):
        raise ValueError("index signatures of another MinHash scheme or parameters: rebuild the index (features.dedup.refresh_index)")
    return sig_from_bytes([b[:width] for b in blobs], params.num_perm)


def is_current(blobs: pl.Series, params: MinHashParams) -> pl.Series:
    """Per stored signature: made by this scheme with these parameters (older index rows have no tag)."""
    return (blobs.bin.size() == 4 * params.num_perm + 4) & blobs.bin.ends_with(scheme_tag(params))
