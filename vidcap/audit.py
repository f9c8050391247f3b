"""Dataset audit of a finished output file: duplicate captions, boilerplate openings, length outliers.

One caption shipped thousands of times on unrelated videos is a failure no per-record status shows.
The audit streams the output (``python -m vidcap audit OUTPUT``; :func:`audit_output` returns the same
as a dict for the build report) and keeps per captioned record a few fixed-size numbers, never the text:

- exact duplicates: an 8-byte hash of the normalized caption (lower case, words only), grouped by sort;
- near duplicates: a MinHash (datasketch) of the word 3-grams of each *distinct* caption, 64 permutations
  in a disk-backed array, banded LSH (16 bands of 4) done with numpy sorts, candidates kept when their
  estimated Jaccard similarity reaches ``audit.near_duplicate_jaccard``; connected groups by scipy;
- openings: a hash of the first ``opening_words`` words; length outliers by the IQR rule (pandas).

The file is read two or three times (hashes; signatures of distinct captions; example texts). Memory is
about 30 bytes per record in RAM plus 256 bytes per distinct caption on disk.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from array import array
from collections import Counter

import numpy as np

from vidcap.config import with_defaults
from vidcap.quality import tokens
from vidcap.stats import iter_output

NUM_PERM = 64  # MinHash size: Jaccard estimate error ~0.05 at 0.8, 256 bytes per distinct caption
BANDS, ROWS = 16, 4  # LSH: pairs at Jaccard 0.7 share a band with probability 1 - (1 - 0.7**4)**16 = 0.99
# character n-grams of the normalized text: one changed word in a 20-word caption keeps Jaccard ~0.8,
# where word 3-grams would drop it to ~0.65
SHINGLE = 5
_FOLD = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant (golden ratio) for multiply-shift hashing
EXAMPLE_CHARS = 200


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def _captions(path, caption_key: str):
    """(record index, caption text or None, status) for every record of an output file; a caption_key
    ``caption_set.NAME`` reads that caption-set entry and its own status (caption_meta.set.NAME)."""
    head, _, entry = caption_key.partition(".")
    for index, record in iter_output(path):
        meta = record.get("caption_meta") if isinstance(record, dict) else None
        caption = record.get(caption_key) if isinstance(record, dict) else None
        if head == "caption_set" and entry and isinstance(record, dict):
            caption = (record.get("caption_set") or {}).get(entry)
            meta = ((meta or {}).get("set") or {}).get(entry) or {"status": "missing caption_meta.set"}
        status = (meta or {}).get("status", "missing caption_meta")
        yield index, caption if isinstance(caption, str) and caption.strip() else None, status


def _scan(path, caption_key: str, opening_words: int) -> dict:
    """First pass: status counts and, per captioned record, index, text hash, words, opening hash."""
    status: Counter = Counter()
    # typed arrays: 8 bytes per value, where lists of Python ints take about 36
    index, text, words, opening = array("q"), array("Q"), array("q"), array("Q")
    n = 0
    for i, caption, state in _captions(path, caption_key):
        n += 1
        status[state] += 1
        if caption is None:
            continue
        toks = tokens(caption)
        index.append(i)
        text.append(_hash64(" ".join(toks)))
        words.append(len(caption.split()))
        opening.append(_hash64(" ".join(toks[:opening_words])))
    return {
        "records": n,
        "status": dict(status),
        "index": np.frombuffer(index, dtype=np.int64) if index else np.empty(0, np.int64),
        "text": np.frombuffer(text, dtype=np.uint64) if text else np.empty(0, np.uint64),
        "words": np.frombuffer(words, dtype=np.int64) if words else np.empty(0, np.int64),
        "opening": np.frombuffer(opening, dtype=np.uint64) if opening else np.empty(0, np.uint64),
    }


def _shingles(caption: str) -> list[int]:
    """The caption's byte 5-grams (normalized text) as 32-bit integers, computed with numpy.

    A 5-byte window is its own 40-bit key; a multiply-shift folds it to 32 bits. datasketch gets these
    integers with ``int`` as its hash function (identity, in C): hashing each shingle with SHA-1 in Python took 80% of the time.
    """
    data = np.frombuffer(" ".join(tokens(caption)).encode("utf-8"), dtype=np.uint8).astype(np.uint64)
    if len(data) < SHINGLE:
        data = np.pad(data, (0, SHINGLE - len(data)))
    n = len(data) - SHINGLE + 1
    window = np.zeros(n, dtype=np.uint64)
    for k in range(SHINGLE):
        window |= data[k : k + n] << np.uint64(8 * k)
    return ((window * _FOLD) >> np.uint64(32)).tolist()


def _signatures(path, caption_key: str, rep_positions: np.ndarray, out: np.ndarray) -> None:
    """Second pass: MinHash signatures of the distinct captions (``rep_positions``, sorted) into ``out``."""
    from datasketch import MinHash

    def distinct():
        row, pos = 0, -1
        for _, caption, _ in _captions(path, caption_key):
            if caption is None:
                continue
            pos += 1
            if row < len(rep_positions) and rep_positions[row] == pos:
                row += 1
                yield _shingles(caption)

    for row, minhash in enumerate(MinHash.generator(distinct(), num_perm=NUM_PERM, seed=1, hashfunc=int)):
        out[row] = minhash.hashvalues


def _near_edges(sig: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """LSH candidate pairs (each bucket member against the bucket's first) whose estimated Jaccard passes."""
    rng = np.random.default_rng(0)
    mult = rng.integers(1, 2**63, size=ROWS, dtype=np.uint64) | np.uint64(1)
    left, right = [], []
    for band in range(BANDS):
        cols = sig[:, band * ROWS : (band + 1) * ROWS].astype(np.uint64)
        keys = (cols * mult).sum(axis=1)  # wraps mod 2**64: a hash; collisions are filtered below
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        head = order[np.repeat(starts, np.diff(np.r_[starts, len(order)]))]
        member = order != head
        a, b = head[member], order[member]
        if not len(a):
            continue
        same = np.empty(len(a), dtype=np.float64)
        for lo in range(0, len(a), 1 << 16):  # bounded temporary arrays
            hi = lo + (1 << 16)
            same[lo:hi] = (sig[a[lo:hi]] == sig[b[lo:hi]]).mean(axis=1)
        keep = same >= threshold
        left.append(a[keep])
        right.append(b[keep])
    if not left:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(left), np.concatenate(right)


def _near_groups(sig: np.ndarray, threshold: float) -> np.ndarray:
    """Component label per distinct caption (captions alone in their component get label -1)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(sig)
    a, b = _near_edges(sig, threshold)
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    sizes = np.bincount(labels, minlength=n)
    return np.where(sizes[labels] > 1, labels, -1)


def _groups(keys: np.ndarray, index: np.ndarray, top: int, group_indices: int) -> tuple[int, int, list[dict]]:
    """Groups of equal ``keys`` (size > 1): how many, records in them, the ``top`` largest with indices."""
    if not len(keys):
        return 0, 0, []
    order = np.argsort(keys, kind="stable")  # stable: a group's indices stay in record order
    _, starts, counts = np.unique(keys[order], return_index=True, return_counts=True)
    multi = np.flatnonzero(counts > 1)
    largest = multi[np.lexsort((index[order[starts[multi]]], -counts[multi]))][:top]
    listed = [
        {
            "size": int(counts[g]),
            "indices": index[order[starts[g] : starts[g] + counts[g]]][:group_indices].tolist(),
        }
        for g in largest
    ]
    return len(multi), int(counts[multi].sum()), listed


def _length_outliers(words: np.ndarray, index: np.ndarray, group_indices: int) -> dict | None:
    """Tukey's rule on caption word counts: below Q1 - 1.5 IQR or above Q3 + 1.5 IQR."""
    import pandas as pd

    if not len(words):
        return None
    q1, median, q3 = pd.Series(words).quantile([0.25, 0.5, 0.75]).tolist()
    low, high = q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1)
    short, long_ = index[words < low], index[words > high]
    return {
        "q1": q1,
        "median": median,
        "q3": q3,
        "low": low,
        "high": high,
        "short": len(short),
        "long": len(long_),
        "short_indices": short[:group_indices].tolist(),
        "long_indices": long_[:group_indices].tolist(),
    }


def _examples(path, caption_key: str, wanted: set[int]) -> dict[int, str]:
    """Third pass: the captions of a few records, cut to EXAMPLE_CHARS; stops after the last one wanted."""
    found: dict[int, str] = {}
    last = max(wanted, default=-1)
    for i, caption, _ in _captions(path, caption_key):
        if i > last:
            break
        if i in wanted:
            found[i] = caption if len(caption) <= EXAMPLE_CHARS else caption[:EXAMPLE_CHARS] + "..."
    return found


def _near(path, caption_key: str, scan: dict, cfg: dict) -> tuple[int, int, list[dict]]:
    """Near-duplicate groups across distinct captions, as (groups, records, top groups) like :func:`_groups`."""
    _, first, inverse = np.unique(scan["text"], return_index=True, return_inverse=True)
    reps = np.sort(first)
    row_of_unique = np.argsort(np.argsort(first))
    with tempfile.TemporaryDirectory(prefix="vidcap-audit-") as tmp:
        sig = np.lib.format.open_memmap(
            os.path.join(tmp, "sig.npy"), mode="w+", dtype=np.uint32, shape=(len(reps), NUM_PERM)
        )
        _signatures(path, caption_key, reps, sig)
        labels = _near_groups(sig, cfg["near_duplicate_jaccard"]) if len(reps) > 1 else np.full(len(reps), -1)
        del sig
    record_label = labels[row_of_unique[inverse.ravel()]]
    grouped = record_label >= 0
    count, records, top = _groups(
        record_label[grouped], scan["index"][grouped], cfg["top"], cfg["group_indices"]
    )
    for group in top:  # distinct texts among the listed indices; examples are the first of each
        seen: dict[int, int] = {}
        for i in group["indices"]:
            seen.setdefault(int(scan["text"][np.searchsorted(scan["index"], i)]), i)
        group["example_indices"] = list(seen.values())[:3]
    return count, records, top


def audit_output(path, settings_: dict | None = None, caption_key: str = "caption") -> dict:
    """The audit of one output file (.json array or .jsonl) as a dict; ``settings_`` is the ``audit`` section."""
    cfg = with_defaults("audit", settings_)
    scan = _scan(path, caption_key, cfg["opening_words"])
    n_captioned = len(scan["index"])
    exact = _groups(scan["text"], scan["index"], cfg["top"], cfg["group_indices"])
    near = _near(path, caption_key, scan, cfg) if n_captioned else (0, 0, [])
    openings = _groups(scan["opening"], scan["index"], cfg["top"], 1)[2]
    wanted = {g["indices"][0] for g in exact[2]} | {o["indices"][0] for o in openings}
    wanted |= {i for g in near[2] for i in g["example_indices"]}
    text = _examples(path, caption_key, wanted)
    for group in exact[2]:
        group["caption"] = text[group["indices"][0]]
    for group in near[2]:
        group["examples"] = [text[i] for i in group["example_indices"]]
    k = cfg["opening_words"]
    return {
        "output": str(path),
        "records": scan["records"],
        "captioned": n_captioned,
        "status": scan["status"],
        "exact_duplicates": {"groups": exact[0], "records": exact[1], "top": exact[2]},
        "near_duplicates": {
            "jaccard": cfg["near_duplicate_jaccard"],
            "groups": near[0],
            "records": near[1],
            "top": near[2],
        },
        "openings": [
            {
                "opening": " ".join(tokens(text[o["indices"][0]])[:k]),
                "count": o["size"],
                "share": round(o["size"] / n_captioned, 4),
                "example_index": o["indices"][0],
            }
            for o in openings
        ],
        "length_words": _length_outliers(scan["words"], scan["index"], cfg["group_indices"]),
    }


def format_audit(audit: dict) -> str:
    """The audit as plain text for a terminal."""
    n, m = audit["records"], audit["captioned"]
    lines = [
        f"{audit['output']}: {n} records, {m} with a caption",
        "status: " + ", ".join(f"{k} {v}" for k, v in sorted(audit["status"].items())),
    ]
    exact, near = audit["exact_duplicates"], audit["near_duplicates"]
    lines.append(
        f"exact duplicates (ignoring case, spacing, punctuation): {exact['groups']} groups, "
        f"{exact['records']} records"
    )
    for g in exact["top"]:
        lines.append(f"  {g['size']:>7} x  {g['caption']!r}")
        lines.append(f"            records {_indices(g['indices'], g['size'])}")
    lines.append(
        f"near duplicates (character 5-gram Jaccard >= {near['jaccard']}, more than one distinct text): "
        f"{near['groups']} groups, {near['records']} records"
    )
    for g in near["top"]:
        lines.append(f"  {g['size']:>7} records  {_indices(g['indices'], g['size'])}")
        lines.extend(f"            {text!r}" for text in g["examples"])
    lines.append("most common openings:")
    lines.extend(f"  {o['count']:>7}  {100 * o['share']:5.1f}%  {o['opening']!r}" for o in audit["openings"])
    length = audit["length_words"]
    if length:
        lines.append(
            f"caption length (words): Q1 {length['q1']:g}, median {length['median']:g}, Q3 {length['q3']:g}; "
            f"outliers below {length['low']:g}: {length['short']} {_indices(length['short_indices'], length['short'])}, "
            f"above {length['high']:g}: {length['long']} {_indices(length['long_indices'], length['long'])}"
        )
    return "\n".join(lines)


def _indices(listed: list[int], total: int) -> str:
    more = f" ... ({total - len(listed)} more)" if total > len(listed) else ""
    return ", ".join(map(str, listed)) + more if listed else "-"
