"""The generated default dataset: deterministic for a seed, sound that follows the motion,
paraphrased captions, and the four layouts ingested end to end with held-out splits."""

import json

import numpy as np

from vatt.config import load_config
from vatt.data import synthetic as S
from vatt.data.ingest import ingest


def _digest(root):
    import hashlib

    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_generation_is_deterministic_for_a_seed(tmp_path):
    outputs = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        root = tmp_path / name
        (root / "videos").mkdir(parents=True)
        captions = S._howto_video({"seed": seed, "cue": "colour", "index": 3, "root": str(root)})
        outputs.append((_digest(root), json.dumps(captions)))
    assert outputs[0] == outputs[1]
    assert outputs[0][0] != outputs[2][0] and outputs[0][1] != outputs[2][1]


def test_sound_events_follow_the_motion():
    rng = np.random.default_rng(0)
    ratios = []
    for motion in S.MOTIONS:
        scene = S.make_scene(rng, 4.0, motion=motion)
        audio = S.soundtrack(scene, 4.0, rng, distractor_sound=False)
        events = [t for t, _ in S.sound_events(scene, 4.0)]
        assert events, motion
        # the loudest 50 ms in the 150 ms after each event (a rattle's clicks spread over it)
        # vs the track's median 50 ms energy
        hop = int(0.05 * S.RATE)
        energy = np.array([np.mean(audio[i:i + hop] ** 2) for i in range(0, len(audio) - hop, hop)])
        at_events = np.mean([energy[min(len(energy) - 1, int(t / 0.05)):int(t / 0.05) + 3].max()
                             for t in events])
        ratios.append(at_events / np.median(energy))
    assert min(ratios) > 1.5, ratios  # fast tempos leave little silence between events


def test_the_sound_kind_follows_the_cue_in_audio_and_captions():
    """Cue `colour` (the default): the colour is the material and sets the sound kind; cue
    `motion`: the motion does, whatever the colour."""
    rng = np.random.default_rng(3)
    assert len(set(S.SOUNDS)) == len(S.COLOUR_NAMES) == len(S.MOTIONS)
    assert sorted(S.SOUND_OF_MOTION.values()) == sorted(S.SOUNDS)
    for colour, kind in zip(S.COLOUR_NAMES, S.SOUNDS):
        for motion in S.MOTIONS[:3]:  # whatever the motion
            scene = S.make_scene(rng, 3.2, motion=motion, colour=colour)
            assert scene.actor.colour == colour and scene.sound == kind
    for motion, kind in S.SOUND_OF_MOTION.items():
        for colour in S.COLOUR_NAMES[:3]:  # whatever the colour
            scene = S.make_scene(rng, 3.2, motion=motion, colour=colour, cue="motion")
            assert scene.sound == kind
        words = S.SOUND_VERBS[kind] + S.SOUND_NOUNS[kind]
        texts = [S.describe(scene, rng) for _ in range(40)]
        assert any(w in t for t in texts for w in words), (motion, texts)
    # the kinds differ in timbre, not only in pitch: the spectral centroid of one event per kind
    # at one base pitch is spread out
    centroids = []
    for kind in S.SOUNDS:
        wave = S._event_sound(kind, 600.0, np.random.default_rng(0))
        power = np.abs(np.fft.rfft(wave)) ** 2
        freqs = np.fft.rfftfreq(len(wave), 1 / S.RATE)
        centroids.append(float((power * freqs).sum() / power.sum()))
    assert len({round(c, -1) for c in centroids}) == len(S.SOUNDS), centroids


# SHA-256 of pretraining video 7's narration (seed 0) from generator version 5, per cue
V5_HOWTO_VIDEO_7 = {"colour": "4128062068d49883d3e5ea7afe43bbf32abdc1dcb504c689aa7735f5f097e7d2",
                    "motion": "255cd3b235ddda0e46912622ecb8ba7eeec3dcef0a744150d55957b6bcf8b669"}


def test_a_change_to_the_generated_scenes_comes_with_a_new_generator_version(tmp_path):
    """The generator's output for a seed is pinned to its GENERATOR_VERSION, which data.dvc and
    every ingest manifest record: a change to the scenes must bump it (and these hashes)."""
    import hashlib

    assert S.GENERATOR_VERSION == 5
    for cue in S.CUES:
        root = tmp_path / cue
        (root / "videos").mkdir(parents=True)
        captions = S._howto_video({"seed": 0, "cue": cue, "index": 7, "root": str(root)})
        digest = hashlib.sha256(json.dumps(captions, sort_keys=True).encode()).hexdigest()
        assert digest == V5_HOWTO_VIDEO_7[cue], cue


def test_rooms_are_shared_so_a_backdrop_does_not_identify_a_video():
    backdrops = {S.room(0, np.random.default_rng(i)).tobytes() for i in range(40)}
    assert len(backdrops) == S.NUM_ROOMS


def test_bounce_events_are_floor_contacts():
    scene = S.make_scene(np.random.default_rng(1), 4.0, motion="bounce")
    lowest = max(S._actor_state(scene, t)[1] for t in np.arange(0, 4.0, 0.01))
    for t, _ in S.sound_events(scene, 4.0):
        assert abs(S._actor_state(scene, t)[1] - lowest) < 0.1


def test_motion_cue_captions_name_the_motion_and_never_the_colour_or_shape():
    """Cue `motion`: a caption can only be matched to its clip by what moves how (the colour
    and shape, which a model picks up first, are never named)."""
    rng = np.random.default_rng(2)
    captions = []
    appearance = {w for words in [*S.SHAPE_WORDS.values(), *S.COLOUR_WORDS.values()]
                  for w in words}
    for _ in range(60):
        scene = S.make_scene(rng, 4.0, cue="motion")
        text = S.describe(scene, rng)
        assert any(phrase in text for phrase in S.MOTION_WORDS[scene.motion]), text
        assert not {w for w in appearance if f" {w} " in f" {text} "}, text
        captions.append(text)
    assert len(set(captions)) > 50
    starts = {" ".join(c.split()[:2]) for c in captions}
    assert len(starts) > 10  # varied sentence structure, not one template


def test_colour_cue_captions_name_the_actor():
    rng = np.random.default_rng(2)
    for _ in range(40):
        scene = S.make_scene(rng, 4.0)
        text = S.describe(scene, rng)
        assert any(word in text for word in S.SHAPE_WORDS[scene.actor.shape]), text


def test_motion_cue_distractors_often_share_the_actors_colour_and_shape():
    rng = np.random.default_rng(4)
    twins = others = 0
    for _ in range(200):
        scene = S.make_scene(rng, 4.0, cue="motion")
        for d in scene.distractors:
            same = (d.colour, d.shape) == (scene.actor.colour, scene.actor.shape)
            twins, others = twins + same, others + (not same)
    assert twins > 50 and others > 50, (twins, others)


def test_synthetic_ingest_writes_every_layout_with_held_out_splits(tmp_path):
    cfg = load_config("tiny", ["data.ingest.synthetic_scale=0.02", "data.ingest.num_workers=2"])
    summaries = {s["name"]: s for s in ingest(cfg, "synthetic", str(tmp_path / "raw"),
                                                tmp_path / "data", progress=False)}
    assert set(summaries) == {f"synthetic-{x}" for x in S.LAYOUTS}
    assert all(s["quarantined"] == 0 for s in summaries.values())
    assert summaries["synthetic-howto100m"]["per_split"] == {"train": 32}  # 8 x 12.8 s / 3.2 s
    # UCF101: whole groups of the train list held out as val (the hash picks 2 of 24 here)
    assert summaries["synthetic-ucf101"]["per_split"] == {"test": 16, "train": 22, "val": 2}
    assert summaries["synthetic-esc50"]["per_split"] == {"test": 8, "train": 32}
    assert summaries["synthetic-msrvtt"]["per_split"] == {"test": 3, "train": 3, "val": 2}
    # the new layouts: Kinetics' own val list; AudioSet's balanced list with a held-out val and
    # its unbalanced list apart; YouCook2 (4 + 4 videos of 3 segments) and ImageNet report on
    # their validation sets (test here)
    assert summaries["synthetic-kinetics"]["per_split"] == {"test": 16, "train": 24, "val": 8}
    assert summaries["synthetic-audioset"]["per_split"] == {"test": 8, "train": 7,
                                                            "train_unbalanced": 4, "val": 1}
    assert summaries["synthetic-youcook2"]["per_split"] == {"test": 12, "train": 12}
    assert summaries["synthetic-imagenet"]["per_split"] == {"test": 12, "train": 20, "val": 4}
    imagenet = json.loads((tmp_path / "data" / "synthetic-imagenet" / "manifest.json").read_text())
    assert imagenet["label_names"] == S.SHAPES  # the PNG, greyscale and CMYK .JPEG files kept
    assert all(c["num_frames"] == 1 and not c["has_audio"] for c in imagenet["clips"])
    audioset = json.loads((tmp_path / "data" / "synthetic-audioset" / "manifest.json").read_text())
    assert audioset["label_names"] == [k.capitalize() for k in S.SOUNDS]
    assert any(len(c["labels"]) > 1 for c in audioset["clips"])  # multi-label
    ucf = json.loads((tmp_path / "data" / "synthetic-ucf101" / "manifest.json").read_text())
    assert ucf["label_names"] == S.UCF_CLASSES
    assert sorted({c["label"] for c in ucf["clips"] if c["split"] == "test"}) == list(range(8))
    howto = json.loads((tmp_path / "data" / "synthetic-howto100m" / "manifest.json").read_text())
    assert all(len(c["captions"]) == 5 for c in howto["clips"])
    vocab = json.loads((tmp_path / "data" / "vocab.json").read_text())["words"]
    assert "bounces" in vocab or "bouncing" in vocab
    # generation is skipped on a re-run, ingestion re-uses every shard
    again = ingest(cfg, "synthetic", str(tmp_path / "raw"), tmp_path / "data", progress=False)
    assert all(s["shards_written"] == 0 for s in again)
