"""Zero-shot retrieval in the common spaces (spec sections 5 and 7).

text -> video: each caption's S_vt embedding is a query; the items are the videos, each the
average of its windows' S_vt embeddings, then L2-normalised (the spec's "averaged over clips then
normalised"). The item ids decide what an item is: video ids group a video's clips into one item
(MSR-VTT); clip ids make every clip its own item (YouCook2: each annotated segment, with its
caption, is one item, as the paper counts them), and then a caption repeated on two segments is
two queries. video -> audio: each video's averaged S_va embedding is a query against every
video's averaged audio S_va embedding. Similarity is the cosine (dot product of unit vectors).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from vatt.evaluate import metrics
from vatt.evaluate.probes import group_mean


def l2_normalize(x: Any, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit length ([N, D])."""
    arr = np.asarray(x, dtype=np.float64)
    return arr / np.maximum(np.linalg.norm(arr, axis=-1, keepdims=True), eps)


@dataclass
class RetrievalResult:
    metrics: dict[str, Any]  # R@1, R@5, R@10, MedR, chance_R@10, num_queries, num_items
    ranks: list[int]  # 1-based rank of each query's match (for the rank histogram)


def _result(similarity: np.ndarray, match: np.ndarray) -> RetrievalResult:
    ranks = metrics.retrieval_ranks(similarity, match)
    result: dict[str, Any] = metrics.retrieval_metrics(similarity, match)
    result["chance_R@10"] = metrics.chance_recall_at_k(similarity.shape[1], 10)
    result["num_queries"], result["num_items"] = map(int, similarity.shape)
    return RetrievalResult(result, ranks.tolist())


def text_to_video(video_embeddings: Any, video_ids: Any, text_embeddings: Any,
                  text_video_ids: Any, caption_keys: Optional[Any] = None) -> RetrievalResult:
    """Retrieve videos (or clips) for captions.

    video_embeddings: [Nw, D] S_vt per window; video_ids: [Nw] the window's item (video or
    clip id); text_embeddings: [Nc, D] S_vt per caption; text_video_ids: [Nc] the item each
    caption describes. Every caption's item must be among the windows' items. caption_keys:
    [Nc] the caption's text (any hashable digest); when given, a caption that appears twice
    for the same item (the clips of one video sharing it) is one query, the first.
    """
    ids, videos = group_mean(video_embeddings, video_ids)  # (V, D), ids sorted
    videos = l2_normalize(videos)
    captions = l2_normalize(text_embeddings)
    caption_ids = np.asarray(text_video_ids)
    if captions.ndim != 2 or len(captions) != len(caption_ids) or len(captions) == 0:
        raise ValueError(f"text_embeddings {captions.shape} must be [Nc, D] with one video id "
                         f"per caption (got {len(caption_ids)} ids) and Nc > 0")
    if caption_keys is not None:
        seen: set = set()
        first = [i for i, pair in enumerate(zip(caption_ids.tolist(), list(caption_keys)))
                 if not (pair in seen or seen.add(pair))]
        captions, caption_ids = captions[first], caption_ids[first]
    match = np.searchsorted(ids, caption_ids)
    unknown = (match >= len(ids)) | (ids[np.minimum(match, len(ids) - 1)] != caption_ids)
    if unknown.any():
        raise ValueError(f"captions describe videos with no video windows, e.g. "
                         f"'{caption_ids[unknown][0]}'; extract video and text from the same split")
    return _result(captions @ videos.T, match)  # (Nc, V)


def video_to_audio(video_embeddings: Any, audio_embeddings: Any, video_ids: Any) -> RetrievalResult:
    """Retrieve each video's own audio among all videos' audio, both in S_va.

    video_embeddings, audio_embeddings: [Nw, D] per window (row i of both from the same window);
    video_ids: [Nw]. Both are averaged over each video's windows and L2-normalised.
    """
    v = np.asarray(video_embeddings)
    a = np.asarray(audio_embeddings)
    if v.shape != a.shape:
        raise ValueError(f"video {v.shape} and audio {a.shape} embeddings differ in shape; "
                         "both must be S_va, one row per window")
    _, videos = group_mean(v, video_ids)
    _, audios = group_mean(a, video_ids)
    similarity = l2_normalize(videos) @ l2_normalize(audios).T  # (V, V)
    return _result(similarity, np.arange(len(videos)))


__all__ = ["l2_normalize", "text_to_video", "video_to_audio", "RetrievalResult"]
