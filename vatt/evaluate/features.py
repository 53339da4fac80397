"""Frozen-feature extraction: run the model in eval mode (no DropToken, no dropout) over batches
and keep, per window, the pooled backbone features and common-space embeddings, and per caption
its S_vt embedding.

Batches are dicts as the loader yields them (torch tensors or numpy arrays): any of `video`,
`audio`, `text` + `text_mask` and the metadata `label` (int, -1 if none), `labels` (multi-hot),
`video_id`, `clip_id`, `fold`, and the view's place `clip_index`, `window`. Windows of one video
share its `video_id`.

Extraction streams: each batch is run through the model and dropped, only its features (a few
hundred floats per window) are kept, so a split of any size takes the memory of one batch of
inputs plus its features. When the batches carry `clip_index` and `window`, the features are put
in (clip, window) order whatever order the batches came in: the probes' results depend on the
order of their rows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import numpy as np
import torch

from vatt.config import Device
from vatt.model import MODALITIES

METADATA_KEYS = ("label", "labels", "video_id", "clip_id", "fold")
ORDER_KEYS = ("clip_index", "window")  # a view's place in its split: the features' order


def resolve_device(name: Device | str | torch.device) -> torch.device:
    """The torch device of `eval.device` (or a torch device name such as "cuda:1"): "auto" is
    cuda when a GPU is visible, else the CPU."""
    if isinstance(name, torch.device):
        return name
    name = name.value if isinstance(name, Device) else name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"eval.device={name}, but no CUDA device is visible here; set "
                         "eval.device=auto (or cpu) to evaluate on the CPU")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"eval.device={name}, but only {torch.cuda.device_count()} CUDA "
                         "device(s) are visible; pick one of them or eval.device=auto")
    return device


@dataclass
class Features:
    """windows[key]: [N, ...] per window (video_pooled, video_va, video_vt, audio_pooled,
    audio_va and the metadata keys present); captions[key]: [Nc, ...] per distinct caption
    (text_vt, video_id, clip_id when the batches carry it, text_key: a digest of its
    tokens). A caption is kept once per clip (once per video when there are no clip ids)."""

    windows: dict[str, np.ndarray] = field(default_factory=dict)
    captions: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.windows.get("video_id", ()))

    def require(self, key: str, what: str) -> np.ndarray:
        if key in self.windows:
            return self.windows[key]
        if key in self.captions:
            return self.captions[key]
        raise KeyError(f"{what} needs '{key}' but the extracted features hold only "
                       f"{sorted(self.windows) + sorted(self.captions)}; the batches must carry "
                       "the modality or metadata it comes from")


def _kept(value: torch.Tensor) -> np.ndarray:
    """A compact copy of an output to keep: `pooled` is a view of the backbone's first token,
    and keeping the view would keep every token of its batch (1,569 x d per window at the
    spec's input)."""
    return value.detach().float().cpu().numpy().copy()


def _item(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


@torch.no_grad()
def extract_features(model: torch.nn.Module, batches: Iterable[dict[str, Any]],
                     modalities: Iterable[str] = MODALITIES, device: str | torch.device = "cpu",
                     max_batches: Optional[int] = None) -> Features:
    """Run `model` over `batches` and gather features (see `Features`)."""
    wanted = [m for m in MODALITIES if m in set(modalities)]
    model.eval()
    device = resolve_device(device)
    windows: dict[str, list[np.ndarray]] = {}
    captions: dict[str, list[np.ndarray]] = {}
    # caption -> its row in `captions` and the first (clip, window) it came with
    seen_captions: dict[tuple[Any, bytes], tuple[int, tuple[int, int]]] = {}
    caption_places: list[tuple[int, int]] = []
    num_windows = 0
    for index, batch in enumerate(batches):
        if max_batches is not None and index >= max_batches:
            break
        size = len(_numpy(batch["video_id"])) if "video_id" in batch else None
        if size is None:
            raise KeyError("a batch has no 'video_id': windows cannot be grouped into videos")
        inputs = {m: torch.as_tensor(_numpy(batch[m])).to(device) for m in wanted if m in batch}
        text_mask = None
        if "text" in inputs:
            text_mask = _numpy(batch["text_mask"]).astype(bool) if "text_mask" in batch else \
                np.ones(tuple(inputs["text"].shape[:2]), dtype=bool)
            if not text_mask.any():
                del inputs["text"]  # no caption in this batch (e.g. an audio-only source)
            else:
                inputs["text_mask"] = torch.as_tensor(text_mask).to(device)
        missing = [m for m in wanted if m not in inputs and not (m == "text" and text_mask is not None)]
        if missing:
            raise KeyError(f"batches lack {missing}: give a loader split that carries them or "
                           "evaluate tasks that do not need them")
        outputs = model(inputs)
        for modality in ("video", "audio"):
            for kind, value in outputs.get(modality, {}).items():
                windows.setdefault(f"{modality}_{kind}", []).append(_kept(value))
        for key in (*METADATA_KEYS, *ORDER_KEYS):
            if key in batch:
                windows.setdefault(key, []).append(_numpy(batch[key]))
        if all(key in batch for key in ORDER_KEYS):
            places = list(zip(*(_numpy(batch[key]).tolist() for key in ORDER_KEYS)))
        else:  # no place given: the order they came in
            places = [(num_windows + b, 0) for b in range(size)]
        if "text" in outputs:
            vt = _numpy(outputs["text"]["vt"].float())  # (B, L, D), read from, not kept
            tokens = _numpy(batch["text"])  # (B, L, n)
            video_ids = _numpy(batch["video_id"])
            clip_ids = _numpy(batch["clip_id"]) if "clip_id" in batch else None
            for b, slot in zip(*np.nonzero(text_mask)):
                # a caption per clip (the windows of a clip repeat it); a video's clips that
                # share a caption are told apart here, per-video retrieval merges them again
                key = (_item(video_ids[b]), _item(clip_ids[b]) if clip_ids is not None else None,
                       tokens[b, slot].tobytes())
                if key in seen_captions:  # the same caption arrives with every window
                    row, place = seen_captions[key]
                    if places[b] < place:  # it belongs where its earliest window is
                        seen_captions[key] = (row, places[b])
                        caption_places[row] = places[b]
                    continue
                seen_captions[key] = (len(caption_places), places[b])
                caption_places.append(places[b])
                captions.setdefault("text_vt", []).append(vt[b, slot][None].copy())
                captions.setdefault("video_id", []).append(video_ids[b:b + 1])
                captions.setdefault("text_key", []).append(
                    np.asarray([hashlib.sha1(key[2]).hexdigest()[:16]]))
                if clip_ids is not None:
                    captions.setdefault("clip_id", []).append(clip_ids[b:b + 1])
        num_windows += size
    if num_windows == 0:
        raise ValueError("no batches to extract features from: the split is empty")
    features = Features({k: np.concatenate(v) for k, v in windows.items()},
                        {k: np.concatenate(v) for k, v in captions.items()})
    if all(key in features.windows for key in ORDER_KEYS):
        _sort(features.windows, np.lexsort([features.windows[k] for k in reversed(ORDER_KEYS)]))
    if caption_places:  # captions in the order of their first (clip, window), stable
        _sort(features.captions, np.asarray(sorted(range(len(caption_places)),
                                                   key=caption_places.__getitem__)))
    return features


def _sort(columns: dict[str, np.ndarray], order: np.ndarray) -> None:
    """Reorder every column in place (a no-op when the batches already came in order)."""
    if np.array_equal(order, np.arange(len(order))):
        return
    for key, value in columns.items():
        columns[key] = value[order]


__all__ = ["Features", "extract_features", "resolve_device", "METADATA_KEYS", "ORDER_KEYS"]
