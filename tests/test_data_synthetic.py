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
V5_HOWTO_VIDEO_7 = {"colour": "e517b1a7243accf33c5669dc603b55a32d9cfb8ab845390dac27a203d2083062",
                    "motion": "81a5be3bd43dc86f5392d361581b6cd568d1215dd10146c8b0f4d46229645ce8"}


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


# ---------------------------------------------------------------------------------------------
# generator version 5: every motion visible at the model's input, the actor inside the
# evaluation's crop, nothing static tied to the motion


def _model_geometry(cfg):
    """(scale, window) of the `tiny` model's input, from the real code: `scale` = model pixels
    per raw pixel along x and y (ingestion resizes the short side to its short_side with sides
    aligned as media.py stores them; evaluation then crops the centre square of the short side,
    resized to data.frame_size), `window` = (x0, x1, y0, y1), the raw-pixel box that crop keeps
    (found by passing ingested pixels that carry their own column and row through the
    loader's evaluation transform)."""
    from vatt.data.loader import _spatial, clip_spec
    from vatt.data.media import _aligned

    short = cfg.data.ingest.short_side or cfg.data.frame_size
    factor = short / min(S.WIDTH, S.HEIGHT)
    width, height = _aligned(S.WIDTH * factor), _aligned(S.HEIGHT * factor)
    assert max(width, height) < 256 and min(width, height) == cfg.data.frame_size, \
        "the grid below reads the crop only when the evaluation does not resize again"
    grid = np.zeros((1, height, width, 3), np.uint8)
    grid[..., 0] = np.arange(width)[None, None, :]
    grid[..., 1] = np.arange(height)[None, :, None]
    kept = _spatial(grid, None, clip_spec(cfg, {}, False, ()))[0]  # (S, S, 3)
    columns, rows = kept[0, :, 0].astype(int), kept[:, 0, 1].astype(int)
    assert (np.diff(columns) == 1).all() and (np.diff(rows) == 1).all()  # a crop, not a resize
    sx, sy = width / S.WIDTH, height / S.HEIGHT
    window = (columns[0] / sx, (columns[-1] + 1) / sx, rows[0] / sy, (rows[-1] + 1) / sy)
    return (sx, sy), window


def _window_starts(rng, duration, cfg, count):
    """Start times of `count` random windows of the tiny preset's input in a scene of
    `duration` s: whole frames at data.fps, as the loader draws them."""
    frames = int(round(duration * cfg.data.fps))
    return rng.integers(0, frames - cfg.data.num_frames + 1, count) / cfg.data.fps


def test_every_motion_moves_visibly_at_the_models_input():
    """Version 5's rule (MIN_DISPLACEMENT, MIN_CLIP_DISPLACEMENT): over random windows of the
    tiny preset (data.num_frames at data.fps) of pretraining (3.2 s) and evaluation (4 s)
    scenes, every class's outline moves at least MIN_DISPLACEMENT model pixels per frame on
    average, and 95% of its clips at least MIN_CLIP_DISPLACEMENT, whatever the cue. Version 4
    failed it: pulse and spin 0 by the actor's centre, shake 1.2."""
    cfg = load_config("tiny")
    scale, _ = _model_geometry(cfg)
    assert 0.6 < scale[0] < scale[1] < 0.7  # 80 x 64 from 128 x 96
    report = {}
    for cue in S.CUES:
        rng = np.random.default_rng(26)
        for motion in S.MOTIONS:
            moved = []
            for i in range(120):
                duration = (S.SCENE_SECONDS, 4.0)[i % 2]
                scene = S.make_scene(rng, duration, motion=motion, cue=cue)
                start = _window_starts(rng, duration, cfg, 1)[0]
                moved.append(S.displacement(scene, start, cfg.data.num_frames, cfg.data.fps,
                                            scale))
            report[cue, motion] = (round(np.mean(moved), 2), round(np.percentile(moved, 5), 2))
    assert all(mean >= S.MIN_DISPLACEMENT for mean, _ in report.values()), report
    assert all(floor >= S.MIN_CLIP_DISPLACEMENT for _, floor in report.values()), report
    # the measure sees a motion that stands still between frames: the same scenes at 10x the
    # frame rate move a tenth as far, below the rule
    rng = np.random.default_rng(26)
    scene = S.make_scene(rng, 4.0, motion="pulse", cue="motion")
    assert S.displacement(scene, 1.0, 8, 50.0, scale) < S.MIN_CLIP_DISPLACEMENT


def test_the_actor_stays_inside_the_evaluation_crop(tmp_path):
    """In every raw frame of every kind of scene the actor's pixels lie in the raw box that the
    evaluation's centre crop keeps (from the real ingestion size and loader crop), so no motion
    takes it out of view; checked on the loader itself for the frames that reach furthest."""
    from PIL import Image

    from vatt.data.loader import _spatial, clip_spec
    from vatt.data.media import load_image

    cfg = load_config("tiny")
    _, (x0, x1, y0, y1) = _model_geometry(cfg)
    assert 12 < x0 < 14 and 114 < x1 < 116 and (y0, y1) == (0, S.HEIGHT)  # 12.8, 115.2
    rng = np.random.default_rng(27)
    reach = {"left": (S.WIDTH, None), "right": (0, None), "top": (S.HEIGHT, None),
             "bottom": (0, None)}
    for i in range(320):
        motion, duration = S.MOTIONS[i % 8], (S.SCENE_SECONDS, 4.0, 3.0)[i % 3]
        scene = S.make_scene(rng, duration, motion=motion, cue=S.CUES[i % 2])
        for t in np.arange(int(round(duration * S.FPS))) / S.FPS:
            state = S._actor_state(scene, t)
            inside, _ = S._mask(scene.actor.shape, *state)
            rows, columns = np.nonzero(inside)
            assert len(rows), (motion, t)
            # raw pixel i covers [i, i + 1): wholly inside the box
            assert columns.min() >= x0 and columns.max() + 1 <= x1, (motion, t, columns.min(),
                                                                     columns.max())
            assert rows.min() >= y0 and rows.max() + 1 <= y1, (motion, t, rows.min(), rows.max())
            for side, edge, better in (("left", columns.min(), np.less),
                                       ("right", columns.max(), np.greater),
                                       ("top", rows.min(), np.less),
                                       ("bottom", rows.max(), np.greater)):
                if better(edge, reach[side][0]):
                    reach[side] = (edge, (scene.actor.shape, state))
    # the loader: the furthest-reaching actors alone on a black frame keep all their light
    # through ingestion's resize and the evaluation's crop; one moved out of the box does not
    spec = clip_spec(cfg, {}, False, ())
    short = cfg.data.ingest.short_side or cfg.data.frame_size
    outside = ("square", (8.0, 48.0, 12.0, 0.0))
    kept = {}
    for side, (_, (shape, state)) in [*reach.items(), ("outside", (None, outside))]:
        image = np.zeros((S.HEIGHT, S.WIDTH, 3), np.uint8)
        image[S._mask(shape, *state)[0]] = 255
        path = tmp_path / f"{side}.png"
        Image.fromarray(image).save(path)
        ingested = load_image(path, short_side=short)
        crop = _spatial(ingested[None], None, spec)[0]
        kept[side] = float(crop.sum()) / float(ingested.sum())
    assert all(kept[side] > 0.995 for side in reach), kept
    assert kept["outside"] < 0.9, kept


def _scene_attributes(count, rng):
    """Per scene of the motion cue (classes balanced): static attributes (colour and shape
    one-hot, radius, mean position over the scene's raw frames, log pitch, loudness, number
    of distractors), dynamic ones (spread of x, y and radius, mean step of x, y and angle per
    raw frame), the targets (motion class, sound kind, the motion the caption names) and
    the static attributes as version 4 placed the actor (the motion's own mean offset added
    back to the position)."""
    static, dynamic, targets, uncentred = [], [], [], []
    phrases = sorted(((p, m) for m, words in S.MOTION_WORDS.items() for p in words),
                     key=lambda pm: -len(pm[0]))  # "drops and bounces..." names a fall
    for i in range(count):
        duration = (S.SCENE_SECONDS, 4.0)[i % 2]
        scene = S.make_scene(rng, duration, motion=S.MOTIONS[i % 8], cue="motion")
        times = np.arange(int(round(duration * S.FPS))) / S.FPS
        states = np.array([S._actor_state(scene, t) for t in times])  # (frames, 4)
        position = states[:, :2].mean(axis=0)
        a = scene.actor
        static.append([*np.eye(8)[S.COLOUR_NAMES.index(a.colour)],
                       *np.eye(6)[S.SHAPES.index(a.shape)], a.radius, *position,
                       np.log(scene.pitch), scene.loudness, len(scene.distractors)])
        uncentred.append([*static[-1][:15], *(position + scene.centring), *static[-1][17:]])
        dynamic.append([*states[:, :3].std(axis=0),
                        *np.abs(np.diff(states[:, [0, 1, 3]], axis=0)).mean(axis=0)])
        caption = S.describe(scene, rng)
        named = next(m for p, m in phrases if p in caption)
        targets.append((S.MOTIONS.index(scene.motion), S.SOUNDS.index(scene.sound),
                        S.MOTIONS.index(named)))
    return np.array(static), np.array(dynamic), np.array(targets), np.array(uncentred)


def _held_out_accuracy(features, target):
    """Multinomial logistic regression, 5-fold stratified cross-validation: mean accuracy."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    return float(cross_val_score(model, features, target, cv=folds).mean())


def test_nothing_static_predicts_the_class_the_sound_or_the_caption():
    """Cue `motion`: a classifier fitted on what does not move (colour, shape, size, mean
    position, pitch, loudness, distractors) predicts the motion class, the sound kind and the
    motion a caption names no better than chance (within 3 standard errors), while the same
    classifier on the trajectory's spread and steps finds them, and on version 4's placement
    (no centring: a bouncing actor sits above its anchor) the static attributes find the class."""
    count = 1600
    static, dynamic, targets, uncentred = _scene_attributes(count, np.random.default_rng(26))
    chance = np.bincount(targets[:, 0]).max() / count
    noise = np.sqrt(chance * (1 - chance) / count)  # standard error of an accuracy at chance
    for column, target in enumerate(("class", "sound", "caption")):
        static_accuracy = _held_out_accuracy(static, targets[:, column])
        assert static_accuracy < chance + 3 * noise, (target, static_accuracy, chance)
        assert _held_out_accuracy(dynamic, targets[:, column]) > 0.9, target
    assert _held_out_accuracy(uncentred, targets[:, 0]) > 2 * chance


def test_the_position_seen_in_a_window_does_not_predict_the_class():
    """What the model sees is a window (data.num_frames at data.fps), not the scene: the
    actor's mean position and size over a random window, with its colour, shape, pitch and
    loudness, predict the motion class no better than chance (within 3 standard errors).
    Each scene starts at a random point of its motion's cycle (Scene.phase): without it the
    windows, which show a scene's middle frames more often, found the class at 0.19."""
    cfg = load_config("tiny")
    rng = np.random.default_rng(5)
    count, features, classes = 1600, [], []
    for i in range(count):
        duration = (S.SCENE_SECONDS, 4.0)[i % 2]
        scene = S.make_scene(rng, duration, motion=S.MOTIONS[i % 8], cue="motion")
        start = _window_starts(rng, duration, cfg, 1)[0]
        states = np.array([S._actor_state(scene, start + k / cfg.data.fps)
                           for k in range(cfg.data.num_frames)])  # (frames, 4)
        a = scene.actor
        features.append([*np.eye(8)[S.COLOUR_NAMES.index(a.colour)],
                         *np.eye(6)[S.SHAPES.index(a.shape)], *states[:, :3].mean(axis=0),
                         np.log(scene.pitch), scene.loudness])
        classes.append(i % 8)
    chance = 1 / 8
    accuracy = _held_out_accuracy(np.array(features), np.array(classes))
    assert accuracy < chance + 3 * np.sqrt(chance * (1 - chance) / count), accuracy
