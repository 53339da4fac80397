"""Words for the text modality: tokeniser, vocabulary and word2vec loading.

Spec section 1: lower-cased word tokens, at most 16 per caption, pad id 0, a vocabulary of up to
2^16 words, 300-d word embeddings loadable from a word2vec-format file (text or binary).
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

log = logging.getLogger("vatt.text")

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens; punctuation separates words and is dropped."""
    return _WORD.findall(text.lower())


class Vocabulary:
    """Word <-> id. Id 0 is padding, id 1 stands for any word not in the vocabulary."""

    def __init__(self, words: Iterable[str]):
        self.words: list[str] = [PAD, UNK]
        for word in words:
            if word in (PAD, UNK):
                continue
            self.words.append(word)
        self.ids: dict[str, int] = {w: i for i, w in enumerate(self.words)}
        if len(self.ids) != len(self.words):
            raise ValueError("Vocabulary: the word list contains duplicates")

    @classmethod
    def build(cls, texts: Iterable[str], max_size: int = 65536) -> "Vocabulary":
        """The `max_size - 2` most frequent words (ties broken alphabetically, so the result
        does not depend on the order of `texts`) plus pad and unk."""
        if max_size < 2:
            raise ValueError(f"Vocabulary.build: max_size={max_size} leaves no room for pad and unk")
        counts = Counter(tok for text in texts for tok in tokenize(text))
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return cls(w for w, _ in ranked[: max_size - 2])

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self.ids

    def encode(self, text: str, max_tokens: int = 16) -> list[int]:
        """Ids of the first `max_tokens` words, padded with PAD_ID to exactly `max_tokens`."""
        ids = [self.ids.get(tok, UNK_ID) for tok in tokenize(text)[:max_tokens]]
        return ids + [PAD_ID] * (max_tokens - len(ids))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"words": self.words}, indent=0) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            words = data["words"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a vocabulary file (JSON with a 'words' list): {err}") from None
        if words[:2] != [PAD, UNK]:
            raise ValueError(f"{path}: the first two words must be {PAD!r} and {UNK!r}")
        return cls(words[2:])


class Word2VecError(ValueError):
    """A word2vec file that cannot be read; the message names the file and line."""


def _read_text_format(path: Path, wanted: dict[str, int], dim: int, out: np.ndarray) -> set[int]:
    found: set[int] = set()
    with open(path, "rb") as fh:
        header = fh.readline().split()
        if len(header) != 2 or not all(h.isdigit() for h in header):
            raise Word2VecError(f"{path}, line 1: expected a header '<num_words> <dim>', got {header!r}")
        count, file_dim = int(header[0]), int(header[1])
        if file_dim != dim:
            raise Word2VecError(f"{path}: vectors have dim {file_dim}, expected {dim} "
                                f"(model.text.embedding_dim)")
        lineno = 1
        for lineno, raw in enumerate(fh, start=2):
            parts = raw.rstrip(b"\r\n").split(b" ")
            while parts and parts[-1] == b"":
                parts.pop()
            if not parts:
                continue
            if len(parts) != dim + 1:
                raise Word2VecError(f"{path}, line {lineno}: expected a word and {dim} numbers, "
                                    f"got {len(parts) - 1} fields")
            word = parts[0].decode("utf-8", errors="replace")
            idx = wanted.get(word)
            if idx is None:
                continue
            try:
                out[idx] = np.asarray(parts[1:], dtype=np.float32)
            except ValueError:
                raise Word2VecError(f"{path}, line {lineno}: non-numeric value in the vector of "
                                    f"{word!r}") from None
            found.add(idx)
        if lineno - 1 < count:
            raise Word2VecError(f"{path}: the header promises {count} vectors, the file holds "
                                f"{lineno - 1} lines (truncated?)")
    return found


def _read_binary_format(path: Path, wanted: dict[str, int], dim: int, out: np.ndarray) -> set[int]:
    found: set[int] = set()
    with open(path, "rb") as fh:
        header = fh.readline().split()
        count, file_dim = int(header[0]), int(header[1])
        if file_dim != dim:
            raise Word2VecError(f"{path}: vectors have dim {file_dim}, expected {dim} "
                                f"(model.text.embedding_dim)")
        nbytes = 4 * dim
        for entry in range(count):
            chars = bytearray()
            while True:
                ch = fh.read(1)
                if ch == b"":
                    raise Word2VecError(f"{path}, vector {entry + 1} of {count}: the file ends "
                                        "inside a word (truncated?)")
                if ch == b" ":
                    break
                if ch != b"\n":  # some writers end each vector with a newline
                    chars += ch
            vec = fh.read(nbytes)
            if len(vec) != nbytes:
                raise Word2VecError(f"{path}, vector {entry + 1} of {count}: expected {nbytes} "
                                    f"bytes of floats, the file ends after {len(vec)} (truncated?)")
            idx = wanted.get(chars.decode("utf-8", errors="replace"))
            if idx is not None:
                out[idx] = np.frombuffer(vec, dtype="<f4")
                found.add(idx)
    return found


def _is_binary(path: Path) -> bool:
    with open(path, "rb") as fh:
        header = fh.readline(256)
        if not header.endswith(b"\n"):
            raise Word2VecError(f"{path}, line 1: no header line '<num_words> <dim>'")
        parts = header.split()
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise Word2VecError(f"{path}, line 1: expected a header '<num_words> <dim>', "
                                f"got {header[:80]!r}")
        sample = fh.read(4096 + 4 * int(parts[1]))
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError:
        return True
    # text vectors are digits, signs, dots, exponents and spaces after the first word
    return False


def load_word2vec(path: str | Path, vocabulary: Vocabulary, dim: int = 300,
                  seed: int = 0, verbose: bool = True) -> torch.Tensor:
    """Embedding table (len(vocabulary), dim) for `vocabulary` from a word2vec file.

    Reads both the text format (`<n> <dim>` header, then `word v1 ... vdim` per line) and the
    binary format (same header, then `word<space>` and dim little-endian float32 per vector),
    told apart by content. The pad row is zero; words absent from the file get small random
    vectors (normal, std 0.01 times the found vectors' std, seeded) so they stay distinguishable.
    """
    path = Path(path)
    if not path.is_file():
        raise Word2VecError(f"{path}: no such word2vec file (model.text.word2vec_path)")
    table = np.zeros((len(vocabulary), dim), dtype=np.float32)
    wanted = {w: i for i, w in enumerate(vocabulary.words) if i != PAD_ID}
    reader = _read_binary_format if _is_binary(path) else _read_text_format
    found = reader(path, wanted, dim, table)
    missing = [i for i in wanted.values() if i not in found]
    scale = float(table[sorted(found)].std()) if found else 1.0
    rng = np.random.default_rng(seed)
    table[missing] = rng.normal(0.0, 0.01 * (scale or 1.0), size=(len(missing), dim))
    table[PAD_ID] = 0.0
    if verbose:
        log.info("word2vec %s: %d of %d vocabulary words found, %d initialised at random",
                 path.name, len(found), len(wanted), len(missing))
    return torch.from_numpy(table)


__all__ = ["tokenize", "Vocabulary", "load_word2vec", "Word2VecError", "PAD_ID", "UNK_ID"]
