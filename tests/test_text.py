"""Tokeniser, vocabulary and word2vec loading (text and binary formats, malformed files)."""

import struct

import numpy as np
import pytest
import torch

from vatt.text import PAD_ID, UNK_ID, Vocabulary, Word2VecError, load_word2vec, tokenize


def test_tokenize_lowercases_and_drops_punctuation():
    assert tokenize("The RED ball, bouncing!  It's loud.") == [
        "the", "red", "ball", "bouncing", "it's", "loud"]
    assert tokenize("") == []


def test_vocabulary_build_encode_and_roundtrip(tmp_path):
    vocab = Vocabulary.build(["a red ball", "a blue ball", "a ball"], max_size=4)
    assert vocab.words == ["<pad>", "<unk>", "a", "ball"]  # most frequent first
    assert len(vocab) == 4
    ids = vocab.encode("A red BALL", max_tokens=5)
    assert ids == [2, UNK_ID, 3, PAD_ID, PAD_ID]
    assert vocab.encode("a " * 40, max_tokens=16) == [2] * 16
    vocab.save(tmp_path / "vocab.json")
    again = Vocabulary.load(tmp_path / "vocab.json")
    assert again.words == vocab.words


def test_vocabulary_build_is_order_independent():
    texts = ["b a", "c a", "b d"]
    assert Vocabulary.build(texts).words == Vocabulary.build(texts[::-1]).words


def _vectors(words):
    rng = np.random.default_rng(3)
    return {w: rng.normal(size=4).astype(np.float32) for w in words}


def test_word2vec_text_and_binary_give_the_same_table(tmp_path, caplog):
    vocab = Vocabulary(["red", "ball", "zebra"])
    vecs = _vectors(["red", "ball", "other"])
    text = tmp_path / "w.txt"
    text.write_text("3 4\n" + "".join(
        w + " " + " ".join(f"{x:.8f}" for x in v) + "\n" for w, v in vecs.items()))
    binary = tmp_path / "w.bin"
    with open(binary, "wb") as fh:
        fh.write(b"3 4\n")
        for w, v in vecs.items():
            fh.write(w.encode() + b" " + struct.pack("<4f", *v) + b"\n")
    with caplog.at_level("INFO", logger="vatt.text"):
        t_text = load_word2vec(text, vocab, dim=4)
    assert "2 of 4 vocabulary words found" in caplog.text
    t_bin = load_word2vec(binary, vocab, dim=4)
    assert t_text.shape == (5, 4) and t_text.dtype == torch.float32
    assert torch.equal(t_text[0], torch.zeros(4))  # pad row
    torch.testing.assert_close(t_text[2], torch.from_numpy(vecs["red"]))
    torch.testing.assert_close(t_bin[3], torch.from_numpy(vecs["ball"]))
    torch.testing.assert_close(t_text, t_bin, atol=1e-6, rtol=0)
    # unk and zebra are missing: small, nonzero, distinct
    assert 0 < t_text[4].abs().max() < 0.5 and not torch.equal(t_text[1], t_text[4])


@pytest.mark.parametrize("content,where", [
    ("2 4\nred 1 2 3 4\nball 1 2 x 4\n", "line 3"),
    ("2 4\nred 1 2 3\n", "line 2"),
    ("not a header\n", "line 1"),
    ("5 4\nred 1 2 3 4\n", "truncated"),
])
def test_word2vec_malformed_text_names_file_and_line(tmp_path, content, where):
    path = tmp_path / "bad.txt"
    path.write_text(content)
    with pytest.raises(Word2VecError, match=rf"bad.txt.*{where}"):
        load_word2vec(path, Vocabulary(["red", "ball"]), dim=4)


def test_word2vec_truncated_binary_and_wrong_dim(tmp_path):
    path = tmp_path / "cut.bin"
    path.write_bytes(b"2 4\nred " + struct.pack("<4f", 1, 2, 3, 4) + b"ball " + b"\x00\x01")
    with pytest.raises(Word2VecError, match=r"cut.bin, vector 2 of 2"):
        load_word2vec(path, Vocabulary(["red"]), dim=4)
    with pytest.raises(Word2VecError, match=r"dim 4, expected 300"):
        load_word2vec(path, Vocabulary(["red"]), dim=300)
    with pytest.raises(Word2VecError, match="no such word2vec file"):
        load_word2vec(tmp_path / "absent.bin", Vocabulary(["red"]))
