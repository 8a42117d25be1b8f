"""Retrieval datastores for ``rest``: token ids of a corpus plus a suffix array.

A datastore is a directory::

    meta.json          format, tokenizer fingerprint, model name, counts
    tokens.npy         [N] int32: every document's token ids, each followed by SEP (-1)
    suffix_array.npy   [N] int32/int64: start positions of all suffixes, in sorted order

No pickle: ``np.load(..., allow_pickle=False)`` and JSON only. The separator
sorts after every token (suffixes are compared as unsigned 32-bit ids) and
never occurs in a query, so a match never runs across two documents.

Build one with ``quickdraft index build CORPUS... --out DIR [--model M]`` or
:func:`build_datastore`; open it with :meth:`Datastore.open`, which refuses a
datastore made with another tokenizer. ``--answers DATA`` indexes the model's
own greedy answers to a prompt set instead (or as well): what the model tends
to say is what a drafter should guess (:func:`quickdraft.training.answers.index_answers`). The embedded
model's datastore of its answers to ``selfinstruct`` ships with quickdraft
(:func:`shipped_datastore`), so ``rest`` works without ``--datastore`` there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from .errors import QuickdraftError

log = logging.getLogger(__name__)

FORMAT = "quickdraft-datastore"
VERSION = 1
SEP = -1  # document separator; as uint32 it is the largest id, so it sorts last
TEXT_FIELDS = ("text", "content", "prompt", "instruction", "input", "output", "response", "completion",
               "question", "answer")
LIST_FIELDS = ("turns",)  # MT-bench: a list of user turns
MESSAGE_FIELDS = ("messages", "conversations")  # lists of {"content"|"value": str}


# ------------------------------------------------------------ suffix arrays


def build_suffix_array(tokens: np.ndarray) -> np.ndarray:
    """Start positions of every suffix of ``tokens``, sorted (prefix doubling with numpy sorts).

    Tokens compare as unsigned 32-bit ids (so SEP = -1 is the largest); a
    suffix that is a prefix of another sorts first. One O(N log N) sort per
    doubling of the longest repeated run, numpy-vectorised: about 10 s for a
    million tokens on two busy cores (measured), about 40 bytes of memory a token.

    tokens: [N] int32.

    >>> build_suffix_array(np.array([2, 1, 2, 1], dtype=np.int32)).tolist()  # 1 < 1,2 < 2,1 < 2,1,2,1
    [3, 1, 2, 0]
    """
    n = len(tokens)
    index_dtype = np.int32 if n < 2**31 - 1 else np.int64
    if n == 0:
        return np.empty(0, dtype=index_dtype)
    rank = np.unique(np.asarray(tokens).astype(np.int64) & 0xFFFFFFFF, return_inverse=True)[1].astype(np.int64)
    rank = rank.reshape(-1)
    sa = np.argsort(rank, kind="stable")
    k = 1
    while True:
        second = np.full(n, -1, dtype=np.int64)  # a suffix that ends sorts before any longer one
        if k < n:
            second[: n - k] = rank[k:]
        sa = np.lexsort((second, rank))  # by rank, then by the rank k tokens later
        key_first, key_second = rank[sa], second[sa]
        new_group = np.empty(n, dtype=bool)
        new_group[0] = True
        new_group[1:] = (key_first[1:] != key_first[:-1]) | (key_second[1:] != key_second[:-1])
        new_rank = np.empty(n, dtype=np.int64)
        new_rank[sa] = np.cumsum(new_group) - 1
        rank = new_rank
        if new_group.all() or k >= n:
            break
        k *= 2
    return sa.astype(index_dtype)


class SuffixIndex:
    """Binary search over a suffix array: where does a token pattern occur?

    Suffixes are compared as big-endian unsigned 32-bit byte strings, which
    order exactly as the token sequences do (see :func:`build_suffix_array`).

    >>> tokens = np.array([5, 6, 7, 5, 6, 8, -1, 5, 6], dtype=np.int32)
    >>> index = SuffixIndex(tokens, build_suffix_array(tokens))
    >>> sorted(index.occurrences([5, 6]).tolist())
    [0, 3, 7]
    >>> index.longest_match([9, 5, 6, 7], max_len=4)   # [5, 6, 7] occurs, [9, 5, 6, 7] does not
    (3, 1, 2)
    """

    def __init__(self, tokens: np.ndarray, suffix_array: np.ndarray) -> None:
        assert tokens.ndim == 1 and suffix_array.shape == tokens.shape, "tokens and suffix array must be [N]"
        self.tokens = tokens  # [N] int32
        self.suffix_array = suffix_array  # [N]
        self._bytes = np.asarray(tokens).astype(">u4").tobytes()  # 4 bytes per token, big-endian

    def __len__(self) -> int:
        return len(self.tokens)

    def _key(self, rank: int, n: int) -> bytes:
        start = int(self.suffix_array[rank]) * 4
        return self._bytes[start: start + 4 * n]

    def find(self, pattern: Sequence[int]) -> tuple[int, int]:
        """[lo, hi): the suffix-array ranks of the suffixes that start with ``pattern``."""
        n = len(pattern)
        if n == 0:
            return 0, len(self.suffix_array)
        if any(int(t) < 0 or int(t) > 0xFFFFFFFE for t in pattern):
            return 0, 0
        key = np.asarray(pattern, dtype=np.int64).astype(">u4").tobytes()
        lo, hi = 0, len(self.suffix_array)
        while lo < hi:  # first suffix whose first n tokens are >= pattern
            mid = (lo + hi) // 2
            if self._key(mid, n) < key:
                lo = mid + 1
            else:
                hi = mid
        start, hi = lo, len(self.suffix_array)
        while lo < hi:  # first suffix whose first n tokens are > pattern
            mid = (lo + hi) // 2
            if self._key(mid, n) <= key:
                lo = mid + 1
            else:
                hi = mid
        return start, lo

    def occurrences(self, pattern: Sequence[int]) -> np.ndarray:
        """Start positions of ``pattern`` in the token array (in suffix-array order)."""
        lo, hi = self.find(pattern)
        return np.asarray(self.suffix_array[lo:hi], dtype=np.int64)

    def longest_match(self, context: Sequence[int], *, max_len: int, min_len: int = 1) -> tuple[int, int, int]:
        """(n, lo, hi) for the longest suffix of ``context`` (n <= max_len) found in the datastore.

        A pattern that occurs has every suffix occurring too, so matching is
        monotone in n and n is found by bisection. (0, 0, 0) when even
        ``min_len`` tokens do not match.
        """
        top = min(max_len, len(context))
        best = (0, 0, 0)
        lo_n, hi_n = min_len, top
        while lo_n <= hi_n:
            n = (lo_n + hi_n) // 2
            lo, hi = self.find(context[len(context) - n:])
            if hi > lo:
                best = (n, lo, hi)
                lo_n = n + 1
            else:
                hi_n = n - 1
        return best

    def continuations(self, lo: int, hi: int, n: int, depth: int, *, limit: int) -> np.ndarray:
        """[m, depth] int64: the ``depth`` tokens after each match in ranks [lo, hi), SEP-padded.

        Each row is cut at the first separator (the rest set to SEP). With more
        than ``limit`` matches, ``limit`` ranks evenly spread over the range are used.
        """
        count = hi - lo
        if count <= 0 or depth <= 0:
            return np.empty((0, max(depth, 0)), dtype=np.int64)
        ranks = np.arange(lo, hi) if count <= limit else np.linspace(lo, hi - 1, limit).round().astype(np.int64)
        starts = np.asarray(self.suffix_array[ranks], dtype=np.int64) + n  # [m]
        offsets = starts[:, None] + np.arange(depth)[None, :]  # [m, depth]
        inside = offsets < len(self.tokens)
        rows = np.where(inside, np.asarray(self.tokens)[np.minimum(offsets, len(self.tokens) - 1)], SEP)
        rows = rows.astype(np.int64)
        ended = np.cumsum(rows == SEP, axis=1) > 0
        rows[ended] = SEP
        return rows


# ------------------------------------------------------------ corpora


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of the token table (id -> token string), so datastores refuse another tokenizer."""
    vocab = tokenizer.get_vocab()
    digest = hashlib.sha256()
    for token, idx in sorted(vocab.items(), key=lambda kv: kv[1]):
        digest.update(f"{idx}\t{token}\n".encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:32]


def read_documents(path: str | os.PathLike) -> Iterator[str]:
    """The texts in a corpus file: a ``.jsonl`` file's string fields, else the whole file as one text.

    JSONL lines may hold a string under one of :data:`TEXT_FIELDS`, a list of
    strings under ``turns`` (MT-bench), or a list of messages under
    ``messages``/``conversations``; each string is one document. A line that
    is a bare JSON string is a document too.
    """
    path = Path(path)
    if not path.is_file():
        raise QuickdraftError(f"corpus file {path} does not exist" if not path.exists() else f"{path} is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise QuickdraftError(f"cannot read corpus file {path}: {exc}") from exc
    if path.suffix.lower() != ".jsonl":
        if text.strip():
            yield text
        return
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise QuickdraftError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        yield from (t for t in _record_texts(record) if t.strip())


def _record_texts(record) -> list[str]:
    if isinstance(record, str):
        return [record]
    if not isinstance(record, dict):
        return []
    out = [record[f] for f in TEXT_FIELDS if isinstance(record.get(f), str)]
    for f in LIST_FIELDS:
        if isinstance(record.get(f), list):
            out += [t for t in record[f] if isinstance(t, str)]
    for f in MESSAGE_FIELDS:
        if isinstance(record.get(f), list):
            for m in record[f]:
                if isinstance(m, dict):
                    out += [m[k] for k in ("content", "value") if isinstance(m.get(k), str)]
    return out


def tokenize_documents(texts: Iterable[str], tokenizer) -> np.ndarray:
    """[N] int32: every text's token ids (no special tokens), each followed by SEP."""
    parts: list[np.ndarray] = []
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        if ids:
            parts.append(np.asarray([*ids, SEP], dtype=np.int32))
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int32)


# ------------------------------------------------------------ the datastore


@dataclass
class Datastore:
    """An opened datastore: its metadata and a :class:`SuffixIndex` over its tokens."""

    path: Path
    meta: dict
    index: SuffixIndex

    @classmethod
    def open(cls, path: str | os.PathLike, *, tokenizer=None, model_name: str | None = None) -> "Datastore":
        """Open a datastore; with ``tokenizer``, refuse one built with a different tokenizer."""
        path = Path(path)
        meta_file = path / "meta.json"
        if not meta_file.is_file():
            raise QuickdraftError(f"{path} is not a quickdraft datastore (no meta.json); "
                                  f"build one with: quickdraft index build CORPUS... --out {path}")
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            tokens = np.load(path / "tokens.npy", allow_pickle=False)
            suffix_array = np.load(path / "suffix_array.npy", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise QuickdraftError(f"datastore {path} is unreadable: {exc}") from exc
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise QuickdraftError(f"datastore {path} has format {meta.get('format')!r} version "
                                  f"{meta.get('version')!r}; expected {FORMAT!r} version {VERSION}")
        if tokens.ndim != 1 or suffix_array.shape != tokens.shape or len(tokens) != meta.get("tokens"):
            raise QuickdraftError(f"datastore {path} is inconsistent (token and suffix-array sizes differ); rebuild it")
        if tokenizer is not None and meta.get("tokenizer") != tokenizer_fingerprint(tokenizer):
            raise QuickdraftError(
                f"datastore {path} was built with the tokenizer of model {meta.get('model')!r}, which differs "
                f"from this model's ({model_name or 'unknown'}); rebuild it with --model {model_name or 'MODEL'}"
            )
        return cls(path=path, meta=meta, index=SuffixIndex(tokens, suffix_array))


def build_datastore(texts: Iterable[str], tokenizer, out: str | os.PathLike, *, model_name: str,
                    sources: Sequence[str] = ()) -> dict:
    """Tokenize ``texts``, build the suffix array and write the datastore to ``out``; returns its metadata.

    ``out`` may not exist yet, or be an earlier datastore (replaced); any
    other existing path is refused rather than overwritten.
    """
    check_out(Path(out))
    tokens = tokenize_documents(texts, tokenizer)
    if len(tokens) == 0:
        raise QuickdraftError("the corpus has no text to index" + (f" ({', '.join(sources)})" if sources else ""))
    return save_datastore(tokens, tokenizer, out, model_name=model_name, sources=sources)


def save_datastore(tokens: np.ndarray, tokenizer, out: str | os.PathLike, *, model_name: str,
                   sources: Sequence[str] = ()) -> dict:
    """Index token ids (documents each followed by SEP, as :func:`tokenize_documents` makes them) into ``out``."""
    out = Path(out)
    check_out(out)
    tokens = np.asarray(tokens, dtype=np.int32)
    suffix_array = build_suffix_array(tokens)
    meta = {
        "format": FORMAT, "version": VERSION, "model": model_name, "tokenizer": tokenizer_fingerprint(tokenizer),
        "vocab_size": len(tokenizer), "documents": int((tokens == SEP).sum()), "tokens": int(len(tokens)),
        "sources": [str(s) for s in sources],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes the directory private; a datastore is ordinary data
    try:
        np.save(tmp / "tokens.npy", tokens, allow_pickle=False)
        np.save(tmp / "suffix_array.npy", suffix_array, allow_pickle=False)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        check_out(out)  # again: something may have appeared there while the index was built
        old = None
        if out.exists():  # the earlier datastore steps aside; it is deleted only once the new one is in place
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.replace(out, old / "datastore")
        try:
            os.replace(tmp, out)
        except OSError:
            if old is not None:
                os.replace(old / "datastore", out)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


DATASTORE_FILES = frozenset({"meta.json", "tokens.npy", "suffix_array.npy"})


def check_out(out: Path) -> None:
    """``out`` may be missing, an empty folder, or a datastore quickdraft wrote (its files only, its format):
    anything else is the user's and is refused, never replaced."""
    if not out.exists():
        return
    if not out.is_dir() or out.is_symlink():
        raise QuickdraftError(f"{out} exists and is not a folder; choose another --out")
    names = {p.name for p in out.iterdir()}
    if not names:
        return
    try:
        ours = json.loads((out / "meta.json").read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours or not names <= DATASTORE_FILES:
        raise QuickdraftError(f"{out} exists and is not a quickdraft datastore (other files are in it); "
                              f"choose another --out")


def load_tokenizer(spec: str):
    """(display name, tokenizer) for a model spec, without loading the model's weights."""
    from transformers import AutoTokenizer

    from .models import resolve

    name, where = resolve(spec)
    try:
        return name, AutoTokenizer.from_pretrained(where, trust_remote_code=False)
    except Exception as exc:  # transformers raises many types for a missing or bad tokenizer
        raise QuickdraftError(f"could not load the tokenizer of {spec!r}: {type(exc).__name__}: {exc}") from exc


def index_corpus(corpus: Sequence[str], out: str | os.PathLike, *, model: str) -> dict:
    """What ``quickdraft index build`` does: read, tokenize, index, write. Returns the metadata."""
    if not corpus:
        raise QuickdraftError("no corpus files given")
    texts = [text for path in corpus for text in read_documents(path)]  # checks every file first
    name, tokenizer = load_tokenizer(model)
    return build_datastore(texts, tokenizer, out, model_name=name, sources=[str(Path(p)) for p in corpus])


def prior_datastore(target, prior: str | None) -> Datastore | None:
    """The datastore a drafter's ``prior`` option names (``ngram`` and ``recycle`` start from it).

    None or ``shipped`` (the default): the one shipped for the model, if there
    is one; if it does not fit the model's tokenizer, none (logged: a default
    must never break decoding). ``none``: none. Anything else is a datastore
    directory, opened and checked as for ``rest`` (errors are the user's).
    """
    if prior is None or prior == "shipped":
        path = shipped_datastore(target.name)
        if path is None:
            return None
        try:
            return Datastore.open(path, tokenizer=target.tokenizer, model_name=target.name)
        except QuickdraftError as exc:
            log.warning("the shipped datastore does not fit this model; no prior: %s", exc)
            return None
    if not isinstance(prior, str) or not prior.strip():
        raise QuickdraftError(f"prior must be 'shipped', 'none' or a datastore directory, got {prior!r}")
    if prior == "none":
        return None
    return Datastore.open(prior, tokenizer=target.tokenizer, model_name=target.name)


def shipped_datastore(model_name: str) -> Path | None:
    """The datastore shipped for a model (its own answers, see the module docstring), if there is one."""
    from .adapters import SHIPPED

    path = SHIPPED / f"rest-{model_name}"
    return path if (path / "meta.json").is_file() else None


__all__ = [
    "Datastore", "SEP", "SuffixIndex", "build_datastore", "build_suffix_array", "check_out", "index_corpus",
    "load_tokenizer", "prior_datastore", "read_documents", "save_datastore", "shipped_datastore", "tokenize_documents",
    "tokenizer_fingerprint",
]
