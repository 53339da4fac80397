"""Zero-shot retrieval on embeddings with a known answer."""

import numpy as np
import pytest

from vatt.evaluate.retrieval import l2_normalize, text_to_video, video_to_audio


def test_text_to_video_averages_windows_then_normalises():
    # video "a": windows (1, 0) and (0, 1) -> mean (0.5, 0.5); "b": one window (10, 0)
    video = np.array([[1.0, 0.0], [0.0, 1.0], [10.0, 0.0]])
    vids = np.array(["a", "a", "b"])
    text = np.array([[1.0, 1.0], [1.0, 0.0]])
    result = text_to_video(video, vids, text, np.array(["a", "b"]))
    assert result.ranks == [1, 1]
    assert result.metrics["R@1"] == 1.0 and result.metrics["num_items"] == 2
    # without normalising, "b"'s larger norm would win for the first caption; with it, "a" wins
    assert np.allclose(np.linalg.norm(l2_normalize(video), axis=1), 1.0)


def test_text_to_video_aligned_vs_random_embeddings():
    rng = np.random.default_rng(0)
    n, dim = 100, 16
    base = rng.normal(size=(n, dim))
    windows = np.repeat(base, 4, axis=0) + 0.5 * rng.normal(size=(4 * n, dim))
    ids = np.repeat(np.arange(n), 4)
    good = text_to_video(windows, ids, base + 0.5 * rng.normal(size=(n, dim)), np.arange(n))
    bad = text_to_video(windows, ids, rng.normal(size=(n, dim)), np.arange(n))
    assert good.metrics["R@10"] > 0.9 and good.metrics["MedR"] == 1.0
    assert bad.metrics["R@10"] < 3 * bad.metrics["chance_R@10"]


def test_several_captions_per_video_and_unknown_video():
    video = np.eye(3)
    text = np.array([[1.0, 0, 0], [0.9, 0.1, 0], [0, 0, 1.0]])
    result = text_to_video(video, [0, 1, 2], text, [0, 0, 2])
    assert result.ranks == [1, 1, 1] and result.metrics["num_queries"] == 3
    with pytest.raises(ValueError, match="no video windows"):
        text_to_video(video, [0, 1, 2], text, [0, 0, 7])


def test_video_to_audio():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(30, 8))
    ids = np.repeat(np.arange(30), 2)
    v = np.repeat(base, 2, axis=0) + 0.1 * rng.normal(size=(60, 8))
    a = np.repeat(base, 2, axis=0) + 0.1 * rng.normal(size=(60, 8))
    assert video_to_audio(v, a, ids).metrics["R@1"] == 1.0
    with pytest.raises(ValueError, match="differ in shape"):
        video_to_audio(v, a[:, :4], ids)
