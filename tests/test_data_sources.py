"""The Moments in Time, ImageNet and AudioSet-list readers on small folders with the published
file names (media written here with PyAV and Pillow), the hashed hold-out val split, and datasets
named with --name: two of one source side by side, a clash with another source refused."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vatt.cli import main as cli_main
from vatt.config import ConfigError, load_config
from vatt.data.ingest import (IngestError, dataset_name, ingest, missing_outputs,
                              source_fingerprint)
from vatt.data.loader import clip_spec, decode_clip
from vatt.data.media import decode_video
from vatt.data.sources import READERS, LayoutError, held_out
from vatt.data.synthetic import HEIGHT, RATE, WIDTH, write_video
from helpers import tar_members, tree_digest

OVERRIDES = ["data.ingest.num_workers=1", "data.ingest.media_per_shard=2",
             "data.ingest.max_bad_fraction=1.0"]


@pytest.fixture
def cfg():
    return load_config("tiny", OVERRIDES)


def _video(path: Path, seconds=1.0, audio=True, seed=0):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 255, (int(seconds * 10), HEIGHT, WIDTH, 3)).astype(np.uint8)
    t = np.arange(int(seconds * RATE)) / RATE
    sound = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, frames, sound if audio else None)




def _reasons(report_path: Path) -> dict[str, str]:
    return {q["item"]: q["reason"] for q in json.loads(report_path.read_text())["quarantined"]}


def test_the_hold_out_is_a_stable_hash_of_the_key():
    # pinned: a change of the hash would move items between train and val of every dataset
    assert held_out("abc", 0.73) and not held_out("abc", 0.72)
    assert held_out("xyz", 0.22) and not held_out("xyz", 0.21)
    assert not held_out("abc", 0.0)
    share = np.mean([held_out(f"video{i}", 0.1) for i in range(4000)])
    assert 0.08 < share < 0.12
    with pytest.raises(ConfigError, match="data.ingest.holdout_fraction=1.0 is outside"):
        load_config("tiny", ["data.ingest.holdout_fraction=1.0"])


# ---------------------------------------------------------------------------------------------
# Moments in Time


@pytest.fixture
def mit(tmp_path):
    base = tmp_path / "mit" / "Moments_in_Time_Raw"
    base.mkdir(parents=True)
    (base / "moments_categories.txt").write_text("clapping,0\nrunning,1\n")
    train_rows = []
    for i in range(6):
        name = ("clapping", "running")[i % 2]
        _video(base / "training" / name / f"getty-{name}-{i}.mp4", seed=i, audio=i != 3)
        train_rows.append(f"{name}/getty-{name}-{i}.mp4,{name},3,0")
    train_rows += ["running/gone.mp4,running,2,1",            # no such file
                   "running/getty-x.mp4,running,2",           # 3 fields
                   "dancing/getty-d.mp4,dancing,2,0",         # not a category
                   "running/getty-corrupt.mp4,running,2,0"]   # not a video
    (base / "training" / "running" / "getty-corrupt.mp4").write_bytes(b"\x00" * 1000)
    (base / "trainingSet.csv").write_text("\n".join(train_rows) + "\n")
    _video(base / "validation" / "clapping" / "yt-clap.mp4", seed=10)
    _video(base / "validation" / "running" / "yt-run.mp4", seed=11)
    (base / "validationSet.csv").write_text(
        "clapping/yt-clap.mp4,clapping,3,0\nrunning/yt-run.mp4,running,2,1\n")
    return tmp_path / "mit"


def test_mit_splits_labels_hold_out_and_quarantine(cfg, mit, tmp_path):
    cfg.data.ingest.holdout_fraction = 0.5  # six training videos: both parts non-empty
    index = READERS["mit"](mit, cfg.data.ingest)
    assert index.label_names == ["clapping", "running"]
    splits = {i.key: (i.split, i.clips[0].label) for i in index.items}
    assert splits["validation/clapping/yt-clap"] == ("test", 0)  # MiT's validation is test
    assert splits["validation/running/yt-run"] == ("test", 1)
    train_keys = [k for k in splits if k.startswith("training/")]
    assert len(train_keys) == 7  # the six videos and the corrupt one (quarantined at decode)
    for key in train_keys:
        assert splits[key][0] == ("val" if held_out(key, 0.5) else "train")
    assert {splits[k][0] for k in train_keys} == {"train", "val"}

    before = tree_digest(mit)
    [summary] = ingest(cfg, "mit", str(mit), tmp_path / "out", progress=False)
    assert tree_digest(mit) == before  # raw input untouched
    out = tmp_path / "out" / "mit"
    reasons = _reasons(out / "report.json")
    raw = "Moments_in_Time_Raw/trainingSet.csv"
    assert "no media file Moments_in_Time_Raw/training/running/gone.mp4 exists" in reasons[f"{raw}:7"]
    assert "malformed row" in reasons[f"{raw}:8"] and "malformed row" in reasons[f"{raw}:9"]
    assert "unreadable" in reasons["Moments_in_Time_Raw/training/running/getty-corrupt.mp4"]
    assert summary["quarantined"] == 4 and summary["clips"] == 8
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["source"], manifest["name"]) == ("mit", "mit")
    assert manifest["label_names"] == ["clapping", "running"]
    clips = {c["video_id"]: c for c in manifest["clips"]}
    assert clips["training/running/getty-running-3"]["has_audio"] is False  # audio optional
    assert clips["training/clapping/getty-clapping-0"]["label"] == 0
    assert sum(s["clips"] for s in manifest["splits"].values()) == 8
    assert manifest["splits"]["test"]["clips"] == 2

    [again] = ingest(cfg, "mit", str(mit), tmp_path / "out", progress=False)
    assert again["shards_written"] == 0 and again["shards_reused"] > 0
    with pytest.raises(IngestError, match="no moments_categories.txt under"):
        ingest(cfg, "mit", str(tmp_path / "out"), tmp_path / "out2", progress=False)


# ---------------------------------------------------------------------------------------------
# ImageNet

RED, GREY, CYAN = (200, 40, 40), 128, (30, 180, 200)
WNIDS = "n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n"


def _image(path: Path, mode="RGB", fmt="JPEG", colour=RED, size=(150, 100)):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, colour if mode != "L" else (GREY,) * 3).convert(mode)
    buf = io.BytesIO()
    image.save(buf, fmt)
    path.write_bytes(buf.getvalue())


def _imagenet(root: Path, val_layout: str) -> Path:
    (root).mkdir(parents=True)
    (root / "LOC_synset_mapping.txt").write_text(WNIDS)
    data = root / "ILSVRC" / "Data" / "CLS-LOC"
    train = data / "train"
    _image(train / "n01440764" / "n01440764_1.JPEG")
    _image(train / "n01440764" / "n01440764_2.JPEG", fmt="PNG", colour=CYAN)  # PNG in .JPEG
    _image(train / "n01443537" / "n01443537_1.JPEG", mode="L")  # greyscale JPEG
    _image(train / "n01443537" / "n01443537_2.JPEG", mode="CMYK", colour=CYAN)  # CMYK JPEG
    whole = (train / "n01440764" / "n01440764_1.JPEG").read_bytes()
    (train / "n01443537" / "n01443537_3.JPEG").write_bytes(whole[: len(whole) // 2])  # truncated
    for i in range(4, 10):
        _image(train / "n01443537" / f"n01443537_{i}.JPEG", colour=(i * 20, 60, 90))
    _image(train / "n09999999" / "n09999999_1.JPEG")  # not in the mapping
    val = data / "val"
    if val_layout == "csv":
        for i in (1, 2, 3):
            _image(val / f"ILSVRC2012_val_0000000{i}.JPEG", colour=CYAN)
        (root / "LOC_val_solution.csv").write_text(
            "ImageId,PredictionString\n"
            "ILSVRC2012_val_00000001,n01443537 10 20 30 40 n01443537 1 2 3 4 \n"
            "ILSVRC2012_val_00000002,n01440764 5 5 50 50\n"
            "ILSVRC2012_val_00000009,n01440764 5 5 50 50\n"   # no such image
            "ILSVRC2012_val_00000004,nXXXX 1 1 2 2\n")        # not a wnid
    else:
        _image(val / "n01443537" / "ILSVRC2012_val_00000001.JPEG", colour=CYAN)
        _image(val / "n01440764" / "ILSVRC2012_val_00000002.JPEG", colour=CYAN)
    return root


def test_imagenet_with_the_val_solution_csv(cfg, tmp_path):
    src = _imagenet(tmp_path / "imagenet", "csv")
    cfg.data.ingest.holdout_fraction = 0.3
    index = READERS["imagenet"](src, cfg.data.ingest)
    assert index.label_names == ["tench", "goldfish"]
    items = {i.key: i for i in index.items}
    assert all(i.kind == "image" for i in index.items)
    first = items["ILSVRC2012_val_00000001"]
    assert (first.split, first.clips[0].label) == ("test", 1)  # PredictionString's first wnid
    assert items["ILSVRC2012_val_00000002"].clips[0].label == 0
    train_keys = [k for k in items if not k.startswith("ILSVRC2012_val")]
    assert len(train_keys) == 11
    for key in train_keys:
        assert items[key].split == ("val" if held_out(key, 0.3) else "train")
    assert {items[k].split for k in train_keys} == {"train", "val"}

    before = tree_digest(src)
    [summary] = ingest(cfg, "imagenet", str(src), tmp_path / "out", progress=False)
    assert tree_digest(src) == before
    out = tmp_path / "out" / "imagenet"
    reasons = _reasons(out / "report.json")
    train = "ILSVRC/Data/CLS-LOC/train"
    assert "unreadable image" in reasons[f"{train}/n01443537/n01443537_3.JPEG"]  # truncated
    assert "not a wnid of LOC_synset_mapping.txt" in reasons[f"{train}/n09999999/n09999999_1.JPEG"]
    assert "no media file ILSVRC/Data/CLS-LOC/val/ILSVRC2012_val_00000009.JPEG exists" in reasons["LOC_val_solution.csv:4"]
    assert "must start with a wnid" in reasons["LOC_val_solution.csv:5"]
    assert "no row in LOC_val_solution.csv" in reasons[
        "ILSVRC/Data/CLS-LOC/val/ILSVRC2012_val_00000003.JPEG"]
    assert summary["quarantined"] == 5 and summary["clips"] == 12  # 10 train/val + 2 test

    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["source"], manifest["name"]) == ("imagenet", "imagenet")
    assert manifest["label_names"] == ["tench", "goldfish"]
    clips = {c["video_id"]: c for c in manifest["clips"]}
    assert manifest["splits"]["test"]["clips"] == 2

    def pixels(video_id):
        clip = clips[video_id]
        assert (clip["image"], clip["has_video"], clip["has_audio"]) == (True, True, False)
        assert clip["num_frames"] == 1 and clip["num_samples"] == 0 and "wav" not in clip["sha256"]
        key = clip["clip_id"].split("/", 1)[1]
        frames = decode_video(tar_members(out / clip["shard"])[f"{key}.mp4"])
        assert frames.shape == (1, 64, 96, 3)  # 150 x 100 at short side 64, sides of 16
        return frames[0].reshape(-1, 3).mean(axis=0)

    assert np.allclose(pixels("n01440764_1"), RED, atol=12)
    assert np.allclose(pixels("n01440764_2"), CYAN, atol=12)  # PNG kept
    grey = pixels("n01443537_1")  # greyscale -> three equal channels
    assert np.allclose(grey, GREY, atol=12) and np.ptp(grey) < 4
    assert np.allclose(pixels("n01443537_2"), CYAN, atol=25)  # CMYK -> RGB
    assert clips["n01443537_2"]["label"] == 1

    # the loader reads a one-frame clip as one temporal patch: the frame repeated over the video
    # patch's frames (model.video.patch_size[0]; the paper: an image fills one patch)
    row_clip = clips["n01440764_2"]
    key = row_clip["clip_id"].split("/", 1)[1]
    members = tar_members(out / row_clip["shard"])
    row = {"record": members[f"{key}.json"].decode(), "mp4": members[f"{key}.mp4"], "wav": b"",
           "clip_index": 0}
    for training in (True, False):
        spec = clip_spec(cfg, manifest, training, ("<pad>", "<unk>"))
        rows = decode_clip(row, spec)
        video = rows[0]["video"]
        assert video.shape == (cfg.model.video.patch_size[0], cfg.data.frame_size,
                               cfg.data.frame_size, 3)
        assert rows[0]["has_audio"] == 0 and rows[0]["label"] == 0
        if not training:
            assert np.array_equal(video[0], video[-1])

    [again] = ingest(cfg, "imagenet", str(src), tmp_path / "out", progress=False)
    assert again["shards_written"] == 0


def test_imagenet_with_val_class_folders(cfg, tmp_path):
    src = _imagenet(tmp_path / "imagenet", "folders")
    index = READERS["imagenet"](src, cfg.data.ingest)
    test = {i.key: i.clips[0].label for i in index.items if i.split == "test"}
    assert test == {"ILSVRC2012_val_00000001": 1, "ILSVRC2012_val_00000002": 0}
    # loose val images without the CSV cannot be labelled: a layout error that says what to do
    _image(src / "ILSVRC" / "Data" / "CLS-LOC" / "val" / "ILSVRC2012_val_00000007.JPEG")
    with pytest.raises(LayoutError, match="no LOC_val_solution.csv"):
        READERS["imagenet"](src, cfg.data.ingest)


# ---------------------------------------------------------------------------------------------
# AudioSet lists


def test_audioset_lists_have_their_own_splits(cfg, tmp_path):
    src = tmp_path / "as"
    (src / "audio").mkdir(parents=True)
    (src / "class_labels_indices.csv").write_text("index,mid,display_name\n0,/m/a,Speech\n")
    balanced = [f"bal{i}" for i in range(8)]
    header = "# YTID, start_seconds, end_seconds, positive_labels\n"
    lists = {"balanced_train_segments.csv": balanced, "unbalanced_train_segments.csv": ["unb0"],
             "eval_segments.csv": ["ev0"]}
    for name, ids in lists.items():
        (src / name).write_text(header + "".join(f'{y}, 0.000, 10.000, "/m/a"\n' for y in ids))
        for y in ids:
            (src / "audio" / f"{y}_0.000.wav").write_bytes(b"")  # the reader only looks them up
    cfg.data.ingest.holdout_fraction = 0.5
    splits = {i.key: i.split for i in READERS["audioset"](src, cfg.data.ingest).items}
    assert splits["unb0"] == "train_unbalanced" and splits["ev0"] == "test"
    assert {splits[y] for y in balanced} == {"train", "val"}
    assert all(splits[y] == ("val" if held_out(y, 0.5) else "train") for y in balanced)
    (src / "my_segments.csv").write_text(header)
    with pytest.raises(LayoutError, match="my_segments.csv: not one of AudioSet's segment lists"):
        READERS["audioset"](src, cfg.data.ingest)


# ---------------------------------------------------------------------------------------------
# named datasets


def _files(folder: Path) -> dict[Path, tuple[int, bytes]]:
    """Every file under `folder` with its modification time and bytes."""
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*") if p.is_file()}


def _kinetics(root: Path, youtube_ids: list[str], label: str) -> Path:
    rows = ["label,youtube_id,time_start,time_end,split"]
    for n, yid in enumerate(youtube_ids):
        _video(root / "train" / f"{yid}_000000_000010.mp4", seed=n)
        rows.append(f"{label},{yid},0,10,train")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    return root


def test_two_datasets_of_one_source_live_side_by_side(cfg, tmp_path, capsys):
    k400 = _kinetics(tmp_path / "k400", ["aaa", "bbb"], "juggling")
    k600 = _kinetics(tmp_path / "k600", ["ccc"], "yodelling")
    out = tmp_path / "out"
    for name, src in (("kinetics400", k400), ("kinetics600", k600)):
        assert cli_main(["ingest", "--source", "kinetics", "--name", name, "--path", str(src),
                         "--out", str(out), "--no-version", *OVERRIDES]) == 0
    m400 = json.loads((out / "kinetics400" / "manifest.json").read_text())
    m600 = json.loads((out / "kinetics600" / "manifest.json").read_text())
    assert (m400["source"], m400["name"], m400["label_names"]) == ("kinetics", "kinetics400",
                                                                   ["juggling"])
    assert (m600["source"], m600["name"], m600["label_names"]) == ("kinetics", "kinetics600",
                                                                   ["yodelling"])
    assert sorted(c["clip_id"] for c in m400["clips"]) == [
        "kinetics400/aaa_000000_000010_0000", "kinetics400/bbb_000000_000010_0000"]
    assert [(c["clip_id"], c["dataset"], c["source"]) for c in m600["clips"]] == [
        ("kinetics600/ccc_000000_000010_0000", "kinetics600", "kinetics")]
    assert not (out / "kinetics").exists()
    assert sorted(p.parent.name for p in out.glob("*/manifest.json")) == [
        "kinetics400", "kinetics600"]

    # a re-run of one (even with changed input) leaves the other's files as they were
    before = _files(out / "kinetics400")
    _video(k600 / "train" / "ccc_000000_000010.mp4", seed=7)
    [changed] = ingest(cfg, "kinetics", str(k600), out, progress=False, name="kinetics600")
    assert changed["shards_written"] == 1 and changed["name"] == "kinetics600"
    assert _files(out / "kinetics400") == before
    [again] = ingest(cfg, "kinetics", str(k400), out, progress=False, name="kinetics400")
    assert again["shards_written"] == 0

    # the fingerprint (the flows' cache key) and the expected outputs follow the name
    fingerprints = {source_fingerprint(cfg, "kinetics", str(k400), out, name)
                    for name in (None, "kinetics400", "kinetics600")}
    assert len(fingerprints) == 3
    assert missing_outputs("kinetics", out, "kinetics400") == []
    assert missing_outputs("kinetics", out) == [str(out / "kinetics" / "manifest.json")]

    # another source's dataset under a taken name is refused; nothing is touched
    esc = tmp_path / "esc"
    (esc / "meta").mkdir(parents=True)
    (esc / "meta" / "esc50.csv").write_text("filename,fold,target,category,esc10,src_file,take\n")
    snapshot = _files(out / "kinetics400")
    with pytest.raises(IngestError, match=r"holds a dataset of source 'kinetics', not 'esc50'.*"
                                          r"another --name"):
        ingest(cfg, "esc50", str(esc), out, progress=False, name="kinetics400")
    assert _files(out / "kinetics400") == snapshot

    # names are folder names; the synthetic source names its own folders
    capsys.readouterr()
    assert cli_main(["ingest", "--source", "kinetics", "--name", "Kinetics/600", "--path",
                     str(k600), "--out", str(out), "--no-version", *OVERRIDES]) == 1
    assert "lowercase letters, digits, '-' and '_'" in capsys.readouterr().err
    with pytest.raises(IngestError, match="--name does not apply to --source synthetic"):
        dataset_name("synthetic", "mine")
    (out / "notes").mkdir()
    (out / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(IngestError, match="holds files that are not an ingested dataset"):
        ingest(cfg, "kinetics", str(k600), out, progress=False, name="notes")
