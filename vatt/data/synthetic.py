"""The embedded default dataset: generated clips of moving shapes, written in published layouts.

A *scene* has one sounding actor (shape, colour, motion, tempo), up to two small silent
distractors drifting over a softly cluttered backdrop (one of a few rooms shared by all videos),
half of them of the actor's own colour and shape, and a soundtrack. The **motion** is what every
modality agrees on: it sets the sound kind (a bouncing thing boings, a sliding one hisses, an
orbiting one chirps, a shaken one rattles, ...) and when the sounds happen (a bounce sounds at
each floor contact, a fall at each ever closer impact, a shake at each random jolt, ...), and it
is what the captions name, with paraphrases (synonyms, eight templates, the sound and tempo
sometimes added); the pitch is the sound's own, not tied to anything seen. The colour and
shape are seen but never heard or named, so a pretraining pair can only be matched by what moves
how. HowTo100M-style videos add narration unrelated to the picture and caption timing that
drifts around the scenes.

Generator version 5 (issue 26) states three rules, each checked by tests/test_data_synthetic.py:
every motion moves visibly at the `tiny` model's input (each class's outline moves at least
MIN_DISPLACEMENT = 4 model pixels per 5 fps frame on average, 95% of its clips at least
MIN_CLIP_DISPLACEMENT = 3; version 4's pulse and spin moved 0 by the actor's centre, its shake
1.2); the actor stays inside the evaluation's centre crop in every frame; and with the motion
cue nothing static (colour, shape, size, mean position over the scene, pitch, loudness)
predicts the motion, the sound kind or the caption better than chance (version 4 placed a
bouncing or falling actor above or below the others, and its pitch followed its size).
Version 4 (issue 14): versions 2-3 tied the sound to the colour and named colour and
shape in the captions: `tiny` pretraining then learned colour, which met both contrastive
objectives, and left the action probe (8 motions) near chance (BENCHMARKS.md, "Learning
signal"). Version 2 (issue 5) had already made the data learnable on a CPU budget: rooms shared
between videos (a per-video backdrop was memorised), 1600 pretraining scenes, a large actor and
motions slow enough for 5 fps frames.

`generate(cfg, root)` writes, deterministically for `data.ingest.synthetic_seed`:
  root/howto100m/  videos/<id>.mp4 (12.8 s, 4 scenes of 3.2 s) + caption.json   (pretraining)
  root/ucf101/     UCF-101/<Class>/v_<Class>_gGG_cCC.avi + ucfTrainTestlist/  (label = motion)
  root/esc50/      audio/<fold>-<id>-A-<target>.wav + meta/esc50.csv  (label = sound kind, 5 folds)
  root/msrvtt/     videos/video<i>.mp4 + MSRVTT_data.json + MSRVTT_JSFUSION_test.csv (retrieval:
                   3/8 test, 1/4 validate for sweeps and validation during training, the rest train)
  root/kinetics/   <split>/<class>/<ytid>_<start>_<end>.mp4 + train/validate/test.csv (motion)
  root/audioset/   segments/<ytid>_30.000.mp4 + {balanced_train,unbalanced_train,eval}_segments.csv
                   + class_labels_indices.csv (multi-label: the seen sound and 0-2 off-screen ones)
  root/youcook2/   raw_videos/<subset>/<recipe>/<vid>.mp4 + youcookii_annotations_trainval.json
                   (three annotated segments per video, each with its sentence)
  root/imagenet/   ILSVRC/Data/CLS-LOC/{train/<wnid>/*.JPEG, val/*.JPEG} + LOC_val_solution.csv +
                   LOC_synset_mapping.txt (class = shape; a PNG, a greyscale and a CMYK file among
                   the .JPEG, as real ImageNet has)
Raw media are 128x96 at 10 fps with 16 kHz audio (stereo in the AVI files), larger and longer than the tiny
preset's input, so that ingestion's resizing, resampling, down-mixing and cutting all run.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from vatt.config import Config
from vatt.data.pool import WorkerDied, map_in_processes

LAYOUTS = ("howto100m", "ucf101", "esc50", "msrvtt", "kinetics", "audioset", "youcook2",
           "imagenet")
WIDTH, HEIGHT, FPS, RATE = 128, 96, 10, 16000
GENERATOR_VERSION = 5  # 5: every motion visible at 5 fps, the actor inside the evaluation's crop,
# nothing static tied to the motion; 4: sound and captions follow the motion; Kinetics,
# AudioSet, YouCook2 and ImageNet layouts; a validation split in every set (3: MSR-VTT
# validate; 2: shared rooms)
SCENE_SECONDS = 3.2  # one pretraining clip (2 x the tiny window) per scene

SHAPES = ["circle", "square", "triangle", "diamond", "ring", "cross"]
MOTIONS = ["bounce", "slide", "orbit", "zigzag", "pulse", "shake", "spin", "fall"]
COLOURS = {"red": (0.9, 0.15, 0.1), "green": (0.1, 0.75, 0.2), "blue": (0.15, 0.3, 0.95),
           "yellow": (0.95, 0.85, 0.1), "purple": (0.6, 0.2, 0.8), "orange": (1.0, 0.55, 0.05),
           "white": (0.95, 0.95, 0.95), "cyan": (0.1, 0.85, 0.9)}
COLOUR_NAMES = list(COLOURS)
SOUNDS = ["boing", "chirp", "beep", "bell", "buzz", "knock", "hiss", "rattle"]  # the sound kinds
# cue `colour`: each colour is a material with its own sound (red rubber boings, green plastic
# chirps, blue glass beeps, yellow brass rings like a bell, purple metal buzzes, orange wood
# knocks, white paper hisses, cyan beads rattle)
SOUND_OF_COLOUR = dict(zip(COLOUR_NAMES, SOUNDS))
# cue `motion`: each motion has its own sound (a bouncing thing boings, a sliding one hisses as it
# scrapes along, an orbiting one whirrs in rising chirps, a zigzagging one buzzes, a pulsing one
# beeps, a shaken one rattles, a spinning one rings like a bell, a falling one knocks on the
# floor); the colour and shape make no sound
SOUND_OF_MOTION = {"bounce": "boing", "slide": "hiss", "orbit": "chirp", "zigzag": "buzz",
                   "pulse": "beep", "shake": "rattle", "spin": "bell", "fall": "knock"}
CUES = ("colour", "motion")

SHAPE_WORDS = {"circle": ["circle", "ball", "disc", "round shape", "dot"],
               "square": ["square", "box", "block", "cube"],
               "triangle": ["triangle", "wedge", "three sided shape"],
               "diamond": ["diamond", "rhombus", "tilted square"],
               "ring": ["ring", "hoop", "donut"],
               "cross": ["cross", "plus sign", "plus shape"]}
COLOUR_WORDS = {"red": ["red", "crimson", "scarlet"], "green": ["green", "emerald", "lime"],
                "blue": ["blue", "navy", "azure"], "yellow": ["yellow", "golden", "lemon"],
                "purple": ["purple", "violet", "lilac"], "orange": ["orange", "amber", "tangerine"],
                "white": ["white", "pale", "snowy"], "cyan": ["cyan", "turquoise", "aqua"]}
MOTION_WORDS = {"bounce": ["bounces", "is bouncing up and down", "hops", "keeps bouncing"],
                "slide": ["slides across", "glides sideways", "moves from one side to the other"],
                "orbit": ["circles around", "goes round in a loop", "orbits the middle"],
                "zigzag": ["zigzags", "moves in a zigzag", "weaves up and down across"],
                "pulse": ["pulses", "grows and shrinks", "swells and contracts"],
                "shake": ["shakes", "jolts around", "trembles and jerks"],
                "spin": ["spins", "rotates in place", "turns round and round"],
                "fall": ["falls down", "drops and bounces to a stop", "tumbles to the floor"]}
SOUND_VERBS = {"boing": ["boings", "makes a springy boing", "twangs"],
               "rattle": ["rattles", "clatters", "makes a rattling noise"],
               "beep": ["beeps", "gives a pure tone", "whistles"],
               "buzz": ["buzzes", "makes a harsh buzz", "hums roughly"],
               "chirp": ["chirps", "makes rising chirps", "sweeps up in pitch"],
               "hiss": ["hisses", "makes a noisy shush", "sounds like static"],
               "bell": ["rings like a bell", "chimes", "dings"],
               "knock": ["knocks", "thuds", "makes dull knocks"]}
SOUND_NOUNS = {"boing": ["a boing", "a springy sound", "twanging"],
               "rattle": ["a rattle", "clattering", "rattling"],
               "beep": ["beeps", "a pure tone", "a whistle"],
               "buzz": ["a buzz", "a rough hum", "buzzing"],
               "chirp": ["chirps", "a rising whistle", "chirping"],
               "hiss": ["a hiss", "static noise", "hissing"],
               "bell": ["a bell", "chimes", "ringing"],
               "knock": ["knocks", "dull thuds", "knocking"]}
TEMPO_WORDS = [["slowly", "calmly", "at a slow pace"], ["steadily", "regularly", "at a medium pace"],
               ["quickly", "rapidly", "fast"]]
CHATTER = [
    "okay so let's get started", "don't forget to like and subscribe", "now add a pinch of salt",
    "i bought this at the store last week", "this is the part everyone gets wrong",
    "let me zoom in a little bit", "we will come back to this later", "thanks for watching",
    "you can see the difference here", "make sure everything is clean first",
    "my cat usually sits right there", "hold on let me check the settings",
    "last time we had a blue triangle here", "a green ring would also work for this",
    "put the red box on the shelf", "the yellow one is my favourite", "now stir it slowly",
    "the music in the background is from my friend", "this takes about five minutes",
    "if you have questions leave a comment", "remember to turn off the oven",
    "some people prefer the square version", "it gets louder if you press harder",
]
UCF_CLASSES = ["Bounce", "Slide", "Orbit", "Zigzag", "Pulse", "Shake", "Spin", "Fall"]
KINETICS_CLASSES = ["bouncing", "sliding", "orbiting", "zigzagging", "pulsing", "shaking",
                    "spinning", "falling"]
# ImageNet-style synsets: one per shape (still images show the shape, not the motion)
IMAGENET_SYNSETS = [(f"n9000000{i}", f"{shape}, {', '.join(SHAPE_WORDS[shape][1:3])}")
                    for i, shape in enumerate(SHAPES)]
RECIPES = ["101", "113", "226"]  # YouCook2 recipe types (labels of its videos)


@dataclass
class Thing:
    shape: str
    colour: str
    rgb: np.ndarray
    radius: float
    x: float
    y: float
    vx: float = 0.0
    vy: float = 0.0
    angle: float = 0.0


@dataclass
class Scene:
    actor: Thing  # actor.x, actor.y: where it is on average over the scene (the anchor)
    motion: str
    rate: float  # motion events per second (tempo)
    loudness: float
    distractors: list[Thing] = field(default_factory=list)
    jolts: np.ndarray = field(default_factory=lambda: np.zeros(0))  # shake event times
    cue: str = "colour"  # what the sound and the captions follow (CUES)
    duration: float = SCENE_SECONDS  # the scene's clock runs over [0, duration)
    pitch: float = 600.0  # base pitch of the actor's sound (Hz)
    phases: np.ndarray = field(default_factory=lambda: np.zeros(4))  # shake's tremble
    # how far into its cycle the motion is when the scene starts (seconds), so that a window
    # of a few frames is as likely to show any part of the cycle (a falling actor is not high
    # at the start of every scene)
    phase: float = 0.0
    # the motion's own offset averaged over the scene, taken off so that actor.x, actor.y is
    # the mean position whatever the motion (no class sits in its own part of the frame)
    centring: tuple[float, float] = (0.0, 0.0)

    @property
    def tempo(self) -> int:
        return 0 if self.rate < 1.05 else 1 if self.rate < 1.35 else 2

    @property
    def sound(self) -> str:
        return SOUND_OF_MOTION[self.motion] if self.cue == "motion" \
            else SOUND_OF_COLOUR[self.actor.colour]


def _tint(colour: str, rng: np.random.Generator) -> np.ndarray:
    """The RGB of a thing of a named colour, with a little per-thing variation."""
    return np.clip(np.array(COLOURS[colour]) + rng.normal(0, 0.06, 3), 0, 1)


# Where the actor may be (version 5). The evaluation sees the centre square of the frame (the
# short side: x in [16, 112) of 128 were the aspect kept; ingestion stores `tiny`'s frames at
# 80 x 64, sides being multiples of 16, which widens it to [12.8, 115.2)); the actor's shape
# reaches 1.2 radii from its centre (a square's corner) and a pulse swells it by PULSE_SWELL:
# its mean position lies within
# ANCHOR_SPREAD of the frame's centre and its motion takes it at most REACH further, so that
# it never leaves that square (tests/test_data_synthetic.py checks every frame)
ACTOR_RADIUS = (12.0, 16.0)
ANCHOR_SPREAD = 6.0
REACH = 22.0
PULSE_SWELL = 0.6


def _thing(rng: np.random.Generator, small: bool = False) -> Thing:
    colour = COLOUR_NAMES[rng.integers(len(COLOURS))]
    rgb = _tint(colour, rng)
    if small:
        radius, x, y = rng.uniform(5, 8), rng.uniform(25, WIDTH - 25), rng.uniform(25, HEIGHT - 25)
    else:
        radius = rng.uniform(*ACTOR_RADIUS)
        x, y = np.array([WIDTH / 2, HEIGHT / 2]) + rng.uniform(-1, 1, 2) * ANCHOR_SPREAD
    return Thing(SHAPES[rng.integers(len(SHAPES))], colour, rgb, radius, x, y,
                 rng.uniform(-4, 4), rng.uniform(-3, 3), rng.uniform(0, np.pi))


def make_scene(rng: np.random.Generator, duration: float, motion: str | None = None,
               colour: str | None = None, cue: str = "colour") -> Scene:
    """A random scene of `duration` seconds; `cue` "motion" also gives it up to two
    distractors, half of them of the actor's colour and shape (so that those say little about
    which thing sounds). Nothing static depends on the motion: colour, shape, size, mean
    position and the sound's pitch are drawn the same way for every motion."""
    actor = _thing(rng)
    if colour is not None:
        actor.colour = colour
        actor.rgb = _tint(colour, rng)
    motion = motion or MOTIONS[rng.integers(len(MOTIONS))]
    # 0.8-1.6 events/s: at least one in the tiny preset's 1.6 s window, and slow enough that
    # its 5 fps frames do not alias the motion
    rate = rng.uniform(0.8, 1.6)
    distractors = [_thing(rng, small=True)
                   for _ in range(rng.integers(0, 3 if cue == "motion" else 2))]
    for d in distractors if cue == "motion" else ():
        if rng.random() < 0.5:
            d.shape, d.colour, d.rgb = actor.shape, actor.colour, _tint(actor.colour, rng)
    jolts = np.sort(rng.uniform(0.1, duration - 0.1, max(1, rng.poisson(rate * duration))))
    # the pitch is the sound's own (the kinds overlap in pitch: the kind is timbre), not the
    # actor's size, which would tie something static in the picture to the sound
    pitch = 1300.0 * 0.3 ** rng.uniform(0, 1)
    scene = Scene(actor, motion, rate, rng.uniform(0.25, 0.5), distractors, jolts, cue,
                  duration, pitch, rng.uniform(0, 2 * np.pi, 4), rng.uniform(0, 4 / rate))
    times = np.arange(int(round(duration * FPS))) / FPS
    offsets = np.array([_offset(scene, t)[:2] for t in times])
    scene.centring = tuple(float(v) for v in offsets.mean(axis=0))
    return scene


# ---------------------------------------------------------------------------------------------
# motion: where the actor is at time t, and when its sound events happen
#
# Version 5: each motion moves visibly at the `tiny` model's input (8 frames at 5 fps, 64 x 64
# pixels: ingestion stores 80 x 64, 0.625 x 0.667 model pixels per raw pixel, and evaluation
# keeps its centre square), measured by `displacement` on points of the actor's outline, fixed
# to its body so that a spin and a pulse count. Over random windows of that input, every class
# moves MIN_DISPLACEMENT model pixels per frame on average (a quarter of a 16-pixel patch) and
# at least 95% of each class's clips move MIN_CLIP_DISPLACEMENT (tests/test_data_synthetic.py
# checks both, for both cues). Versions up to 4 had a spin and a pulse that barely changed
# between frames (0 pixels by the actor's centre), a shake whose jolts faded between two frames
# (1.2) and a slide of 3.6
MIN_DISPLACEMENT = 4.0  # model pixels per frame, a class's mean over clips
MIN_CLIP_DISPLACEMENT = 3.0  # model pixels per frame, the floor of 95% of a class's clips


def _triangle(u: float) -> float:
    """A triangle wave of period 1 between -1 and 1 (-1 at u = 0)."""
    return 4 * abs((u % 1.0) - 0.5) - 1


def _offset(scene: Scene, t: float) -> tuple[float, float, float, float]:
    """(dx, dy, radius scale, added angle) of the actor's motion at time t (the scene's clock),
    before centring."""
    f, t = scene.rate, (t if scene.motion == "shake" else t + scene.phase)  # the motion's clock
    dx = dy = 0.0
    scale, turn = 1.0, 0.0
    if scene.motion == "bounce":  # floor contact (dy = 0) at t = k / f
        dy = -34 * abs(np.sin(np.pi * f * t))
    elif scene.motion == "slide":  # sideways at constant speed, turning at t = (k + 1/2) / f
        direction = 1 if scene.actor.vx >= 0 else -1
        dx = direction * REACH * _triangle(f * t / 2 + 0.25)
        dy = 2 * np.sin(2 * np.pi * f * t)  # a little wobble
    elif scene.motion == "orbit":
        dx = 20 * np.cos(np.pi * f * t)
        dy = 18 * np.sin(np.pi * f * t)
    elif scene.motion == "zigzag":  # fast up and down (bottom at t = k / f) while drifting across
        dx = 18 * _triangle(f * t / 4 + 0.25)
        dy = -18 * _triangle(f * t)
    elif scene.motion == "pulse":  # swells to the largest at t = (k + 1/4) / f
        scale = 1.0 + PULSE_SWELL * np.sin(2 * np.pi * f * t)
    elif scene.motion == "shake":  # trembles all the time, kicked hard at each jolt
        p = scene.phases
        dx = 4.5 * (np.sin(2 * np.pi * 2.1 * t + p[0]) + np.sin(2 * np.pi * 2.9 * t + p[1]))
        dy = 4.5 * (np.sin(2 * np.pi * 2.3 * t + p[2]) + np.sin(2 * np.pi * 3.1 * t + p[3]))
        since = t - scene.jolts[scene.jolts <= t]
        kick = np.exp(-since / 0.25).sum() if len(since) else 0.0
        dx, dy = dx + 8 * kick * np.sin(37 * t), dy + 8 * kick * np.cos(23 * t)
    elif scene.motion == "spin":  # a quarter turn from one event to the next
        turn = 3.0 * f * t
    elif scene.motion == "fall":  # dropped again and again, bouncing ever lower
        dy = -36 * _fall_height(t % _FALL_PERIOD)
    return dx, dy, scale, turn


def outline(scene: Scene, t: float, points: int = 16) -> np.ndarray:
    """(points, 2) raw-pixel positions of points on the actor's outline at time t, fixed to its
    body (so they turn with a spin and spread with a pulse; two of them end its stripe)."""
    x, y, r, angle = _actor_state(scene, t)
    phi = angle + 2 * np.pi * np.arange(points) / points
    return np.stack([x + r * np.cos(phi), y + r * np.sin(phi)], axis=1)


def displacement(scene: Scene, start: float, frames: int, fps: float,
                 scale: tuple[float, float] = (1.0, 1.0)) -> float:
    """Mean distance the actor's outline points move from one frame to the next, over `frames`
    frames at `fps` from `start`: how much the motion shows at that frame rate. In raw pixels,
    or in a resized frame's pixels with `scale` (its pixels per raw pixel along x and y)."""
    points = np.stack([outline(scene, start + k / fps) for k in range(frames)]) * scale
    return float(np.linalg.norm(np.diff(points, axis=0), axis=2).mean())


def _actor_state(scene: Scene, t: float) -> tuple[float, float, float, float]:
    """(x, y, radius, angle) of the actor at time t (seconds on the scene's clock)."""
    a = scene.actor
    dx, dy, scale, turn = _offset(scene, t)
    return (a.x + dx - scene.centring[0], a.y + dy - scene.centring[1], a.radius * scale,
            a.angle + turn)


_FALL_IMPACTS = np.cumsum([0.55, 0.45, 0.34, 0.26])
_FALL_PERIOD = 1.8  # seconds from one drop to the next (the last 0.2 s at rest on the floor)


def _fall_height(t: float) -> float:
    """Height (1 = top, 0 = floor) of a dropped ball bouncing ever lower."""
    if t < _FALL_IMPACTS[0]:
        return 1.0 - (t / _FALL_IMPACTS[0]) ** 2
    for k in range(1, len(_FALL_IMPACTS)):
        if t < _FALL_IMPACTS[k]:
            span = _FALL_IMPACTS[k] - _FALL_IMPACTS[k - 1]
            u = (t - _FALL_IMPACTS[k - 1]) / span
            return 0.6 ** k * 4 * u * (1 - u)
    return 0.0


def sound_events(scene: Scene, duration: float) -> list[tuple[float, float]]:
    """(time, amplitude) of the actor's sound events: they follow what is seen."""
    f = scene.rate
    if scene.motion == "shake":
        return [(t, 1.0) for t in scene.jolts]
    phase = scene.phase  # events are placed on the motion's clock, then moved to the scene's
    if scene.motion == "fall":
        return sorted((start + t - phase, 0.8 ** k)
                      for start in np.arange(0.0, duration + phase, _FALL_PERIOD)
                      for k, t in enumerate(_FALL_IMPACTS) if 0 <= start + t - phase < duration)
    # bounce: floor contacts; slide: turns; orbit: one per loop; zigzag: its lowest points;
    # pulse: its largest size; spin: each quarter turn
    period = {"bounce": 1 / f, "slide": 1 / f, "orbit": 2 / f, "zigzag": 1 / f,
              "pulse": 1 / f, "spin": np.pi / 6 / f}[scene.motion]
    offset = {"bounce": 0.0, "slide": 0.5 / f, "orbit": 0.0, "zigzag": 0.0,
              "pulse": 0.25 / f, "spin": 0.0}[scene.motion]
    return [(t, 1.0) for t in np.arange((offset - phase) % period, duration, period)]


# ---------------------------------------------------------------------------------------------
# rendering


_YY, _XX = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)


def _mask(shape: str, x: float, y: float, r: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Soft-free boolean masks of a shape and of the stripe that makes its rotation visible."""
    dx, dy = (_XX - x) / r, (_YY - y) / r
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    if shape == "circle":
        inside = u * u + v * v < 1
    elif shape == "square":
        inside = np.maximum(abs(u), abs(v)) < 0.85
    elif shape == "triangle":
        inside = (v < 0.6) & (abs(u) < (v + 0.9) * 0.65)
    elif shape == "diamond":
        inside = abs(u) + abs(v) < 1
    elif shape == "ring":
        d = u * u + v * v
        inside = (d < 1) & (d > 0.3)
    else:  # cross
        inside = ((abs(u) < 0.3) & (abs(v) < 1)) | ((abs(v) < 0.3) & (abs(u) < 1))
    return inside, inside & (abs(v) < 0.25)


def _background(rng: np.random.Generator) -> np.ndarray:
    """A softly cluttered backdrop: a dim, greyish gradient plus faint static blobs and a line."""
    top, bottom = rng.uniform(0.1, 0.35) + rng.uniform(-0.05, 0.05, 3), \
        rng.uniform(0.1, 0.35) + rng.uniform(-0.05, 0.05, 3)
    w = (_YY / HEIGHT)[..., None]
    image = top * (1 - w) + bottom * w
    for _ in range(rng.integers(2, 5)):
        cx, cy, rad = rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT), rng.uniform(4, 14)
        blob = (_XX - cx) ** 2 + (_YY - cy) ** 2 < rad ** 2
        image[blob] = image[blob] * 0.85 + rng.uniform(0, 0.6, 3) * 0.15
    for _ in range(rng.integers(0, 2)):
        row = rng.integers(0, HEIGHT)
        image[row:row + 2] = image[row:row + 2] * 0.7 + rng.uniform(0, 0.6, 3) * 0.3
    return image.astype(np.float32)


NUM_ROOMS = 6


def room(seed: int, rng: np.random.Generator) -> np.ndarray:
    """The backdrop of a video: one of NUM_ROOMS fixed rooms of the dataset, so that a backdrop
    does not identify a video (a per-video backdrop let a CPU budget memorise which captions
    go with which room instead of learning what the captions describe)."""
    return _background(np.random.default_rng([seed, 1000, int(rng.integers(NUM_ROOMS))]))


STRIPE_SHADE = 0.3  # the stripe that shows a turn (0.55 up to version 4: a spin was faint)


def render(scene: Scene, background: np.ndarray, t0: float, duration: float,
           rng: np.random.Generator) -> np.ndarray:
    """Frames (N, H, W, 3) uint8 at FPS for [t0, t0 + duration) of the scene clock."""
    frames = []
    for k in range(int(round(duration * FPS))):
        t = t0 + k / FPS
        image = background.copy()
        for d in scene.distractors:  # silent, drifting, drawn behind the actor
            x = (d.x + d.vx * t) % WIDTH
            y = (d.y + d.vy * t) % HEIGHT
            inside, stripe = _mask(d.shape, x, y, d.radius, d.angle)
            image[inside] = d.rgb
            image[stripe] = d.rgb * 0.55
        x, y, r, angle = _actor_state(scene, t)
        inside, stripe = _mask(scene.actor.shape, x, y, r, angle)
        image[inside] = scene.actor.rgb
        image[stripe] = scene.actor.rgb * STRIPE_SHADE
        image += rng.normal(0, 0.03, image.shape).astype(np.float32)  # sensor noise
        frames.append((np.clip(image, 0, 1) * 255).astype(np.uint8))
    return np.stack(frames)


def _event_sound(kind: str, pitch: float, rng: np.random.Generator) -> np.ndarray:
    n = int(0.22 * RATE)
    t = np.arange(n) / RATE
    if kind == "beep":
        wave = np.sin(2 * np.pi * pitch * t) * np.minimum(1, (0.22 - t) / 0.05)
    elif kind == "buzz":
        wave = np.sign(np.sin(2 * np.pi * pitch * t)) * 0.6 * np.exp(-t / 0.12)
    elif kind == "chirp":
        wave = np.sin(2 * np.pi * (pitch * t + pitch * t * t / 0.22)) * np.exp(-t / 0.15)
    elif kind == "hiss":
        noise = rng.normal(0, 1, n)
        wave = np.diff(noise, prepend=0) * 0.45 * np.exp(-t / 0.07)
    elif kind == "boing":  # a spring: pitch falling from twice the base, with a wobble
        freq = pitch * (1 + np.exp(-t / 0.05)) * (1 + 0.04 * np.sin(2 * np.pi * 18 * t))
        wave = np.sin(2 * np.pi * np.cumsum(freq) / RATE) * np.exp(-t / 0.1)
    elif kind == "rattle":  # a burst of short clicks
        wave = np.zeros(n)
        for start in np.sort(rng.uniform(0, 0.15, rng.integers(4, 8))):
            k = int(start * RATE)
            m = min(n - k, int(0.006 * RATE))
            wave[k:k + m] += rng.normal(0, 0.8, m) * np.exp(-np.arange(m) / (0.0015 * RATE))
    elif kind == "bell":
        wave = sum(a * np.sin(2 * np.pi * pitch * m * t) for m, a in
                   ((1, 1.0), (2.76, 0.5), (5.4, 0.25))) * np.exp(-t / 0.09) * 0.6
    else:  # knock
        wave = (np.sin(2 * np.pi * pitch / 4 * t) * np.exp(-t / 0.03)
                + rng.normal(0, 0.3, n) * np.exp(-t / 0.004))
    return wave * np.minimum(1, t / 0.003)  # no click at the onset


def soundtrack(scene: Scene, duration: float, rng: np.random.Generator,
               distractor_sound: bool = True) -> np.ndarray:
    """Mono float32 audio at RATE: the actor's events over noise and unrelated sounds."""
    n = int(round(duration * RATE))
    audio = np.zeros(n + RATE, dtype=np.float64)
    kind = scene.sound
    # the pitch ranges of the kinds overlap: the kind is timbre, not pitch
    pitch = scene.pitch
    for t, amp in sound_events(scene, duration):
        event = _event_sound(kind, pitch * rng.uniform(0.97, 1.03), rng)
        start = int(t * RATE)
        audio[start:start + len(event)] += scene.loudness * amp * event
    if distractor_sound and rng.random() < 0.3:  # an unrelated, quieter sound at random times
        other = SOUNDS[rng.integers(len(SOUNDS))]
        for t in rng.uniform(0, duration, rng.integers(1, 5)):
            event = _event_sound(other, rng.uniform(300, 1400), rng)
            start = int(t * RATE)
            audio[start:start + len(event)] += rng.uniform(0.05, 0.15) * event
    noise = np.cumsum(rng.normal(0, 1, n + RATE)) * 0.02  # brown-ish rumble
    noise -= np.convolve(noise, np.ones(400) / 400, mode="same")
    audio += noise * rng.uniform(0.3, 1.0) + rng.normal(0, rng.uniform(0.005, 0.03), n + RATE)
    return np.clip(audio[:n], -1, 1).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# captions


def _pick(rng: np.random.Generator, words: list[str]) -> str:
    return words[rng.integers(len(words))]


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


# cue `motion`: the actor is named without its colour or shape: those are what a model picks up
# first, and a caption that names them can be matched without seeing the motion
THING_WORDS = ["something", "an object", "a thing", "a shape", "the toy", "a small object",
               "the figure", "it"]


def describe(scene: Scene, rng: np.random.Generator) -> str:
    """One paraphrased, possibly partial description of the scene's actor (its cue says what)."""
    return _describe_motion(scene, rng) if scene.cue == "motion" \
        else _describe_appearance(scene, rng)


def _describe_motion(scene: Scene, rng: np.random.Generator) -> str:
    """Cue `motion`: what the actor does (its motion, with the sound and tempo that follow it),
    never its colour or shape."""
    motion = _pick(rng, MOTION_WORDS[scene.motion])
    verb, noun = _pick(rng, SOUND_VERBS[scene.sound]), _pick(rng, SOUND_NOUNS[scene.sound])
    tempo = _pick(rng, TEMPO_WORDS[scene.tempo])
    thing = _pick(rng, THING_WORDS)
    templates = [
        f"{thing} {motion} {tempo}",
        f"{thing} {motion} and {verb}",
        f"watch as {thing} {motion}",
        f"here {thing} {motion}, it {verb}",
        f"you can hear {noun} {tempo} while {thing} {motion}",
        f"{thing} {motion}",
        f"{noun} as {thing} {motion}",
        f"look how {thing} {motion} {tempo}",
    ]
    return templates[rng.integers(len(templates))]


def _describe_appearance(scene: Scene, rng: np.random.Generator) -> str:
    """Cue `colour`: the actor's colour, shape, motion, sound or tempo, paraphrased."""
    a = scene.actor
    shape, colour = _pick(rng, SHAPE_WORDS[a.shape]), _pick(rng, COLOUR_WORDS[a.colour])
    motion = _pick(rng, MOTION_WORDS[scene.motion])
    verb, noun = _pick(rng, SOUND_VERBS[scene.sound]), _pick(rng, SOUND_NOUNS[scene.sound])
    tempo = _pick(rng, TEMPO_WORDS[scene.tempo])
    thing = _a(f"{colour} {shape}")
    if scene.distractors:
        d = scene.distractors[rng.integers(len(scene.distractors))]
        other = _a(f"small {_pick(rng, COLOUR_WORDS[d.colour])} {_pick(rng, SHAPE_WORDS[d.shape])}")
    else:
        other = "an empty wall"
    templates = [
        f"{thing} {motion} {tempo}",
        f"{thing} {motion} and {verb}",
        f"the {shape} {motion}, it {verb}",
        f"there is {thing} that {verb} {tempo}",
        f"watch the {colour} {shape} as it {motion}",
        f"you can hear {noun} {tempo} while {thing} {motion}",
        f"{thing} {motion} next to {other}",
        f"the {shape} is {colour} and it {motion}",
    ]
    return templates[rng.integers(len(templates))]


# ---------------------------------------------------------------------------------------------
# writing media


def write_video(path: Path, frames: np.ndarray, audio: np.ndarray | None,
                container: str = "mp4") -> None:
    """Raw media as the public sources ship them: H.264 + AAC (mono) in MP4, or MPEG-4 + PCM
    in AVI with stereo audio (the two channels differ slightly) so ingestion has to down-mix."""
    vcodec, acodec = ("libx264", "aac") if container == "mp4" else ("mpeg4", "pcm_s16le")
    with av.open(str(path), "w", format=container,
                 options={"fflags": "+bitexact"}) as out:
        vs = out.add_stream(vcodec, rate=FPS)
        vs.width, vs.height, vs.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        vs.codec_context.thread_count = 1
        if vcodec == "libx264":
            vs.options = {"preset": "ultrafast", "crf": "18"}
        else:
            vs.bit_rate = 800_000
        # AAC is the costliest part of generation: mono in MP4; the AVI files carry stereo
        layout = "stereo" if container == "avi" else "mono"
        ast = out.add_stream(acodec, rate=RATE, layout=layout) if audio is not None else None
        for image in frames:
            for packet in vs.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
        if ast is None:
            return
        channels = [audio, np.roll(audio, 3) * 0.9] if layout == "stereo" else [audio]
        stereo = np.stack(channels).astype(np.float32)
        fmt = "fltp" if acodec == "aac" else "s16"
        step = 1024
        for start in range(0, stereo.shape[1], step):
            chunk = stereo[:, start:start + step]
            if fmt == "s16":
                data = np.round(chunk.T * 32767).astype(np.int16).reshape(1, -1)
            else:
                data = np.ascontiguousarray(chunk)
            frame = av.AudioFrame.from_ndarray(data, format=fmt, layout=layout)
            frame.sample_rate, frame.pts = RATE, start
            for packet in ast.encode(frame):
                out.mux(packet)
        for packet in ast.encode():
            out.mux(packet)


def write_wav(path: Path, audio: np.ndarray) -> None:
    from vatt.data.media import encode_wav

    path.write_bytes(encode_wav(audio, RATE))


# ---------------------------------------------------------------------------------------------
# one generated file per task, each with its own seed (order and parallelism do not matter)


def _rng(seed: int, layout: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, LAYOUTS.index(layout), index])


@dataclass
class Video:
    """A generated video before it is written: its frames and sound as `write_video` gets them,
    and its narration as caption.json holds it. The benchmarks in benchmarks/ build their clips
    from these (synthetic_clips.py), so they see what the generated files hold."""
    frames: np.ndarray  # (N, HEIGHT, WIDTH, 3) uint8 at FPS: frame k shows time k / FPS
    audio: np.ndarray  # (S,) float32 in [-1, 1] at RATE, mono
    scenes: list[Scene]  # the scenes one after another (a labelled video has one)
    narration: list[tuple[float, float, str]] = field(default_factory=list)  # (start, end, text)


def howto_video(seed: int, index: int, cue: str) -> Video:
    """Pretraining video `index` of the dataset of `seed`: four scenes of SCENE_SECONDS in one
    room, narration that drifts around them and unrelated talk (times rounded to 10 ms, as
    published)."""
    rng = _rng(seed, "howto100m", index)
    scene_seconds, num_scenes = SCENE_SECONDS, 4
    background = room(seed, rng)
    scenes, frames, audio, narration = [], [], [], []
    for k in range(num_scenes):
        scene = make_scene(rng, scene_seconds, cue=cue)
        scenes.append(scene)
        frames.append(render(scene, background, 0.0, scene_seconds, rng))
        audio.append(soundtrack(scene, scene_seconds, rng))
        for _ in range(rng.integers(3, 5)):  # narration drifts a little around its scene
            start = max(0.0, k * scene_seconds + rng.uniform(-0.3, 1.0))
            narration.append((start, start + rng.uniform(1.0, 2.0), describe(scene, rng)))
    total = scene_seconds * num_scenes
    for _ in range(rng.integers(1, 4)):  # talk unrelated to the picture
        start = rng.uniform(0, total - 1)
        narration.append((start, start + rng.uniform(1.0, 3.0), _pick(rng, CHATTER)))
    narration.sort()
    return Video(np.concatenate(frames), np.concatenate(audio), scenes,
                 [(round(start, 2), round(end, 2), text) for start, end, text in narration])


def _howto_video(task: dict) -> dict:
    video = howto_video(task["seed"], task["index"], task["cue"])
    vid = f"synth{task['index']:05d}"
    write_video(Path(task["root"]) / "videos" / f"{vid}.mp4", video.frames, video.audio)
    return {vid: {"start": [n[0] for n in video.narration], "end": [n[1] for n in video.narration],
                  "text": [n[2] for n in video.narration]}}


UCF_SECONDS = 4.0


def ucf_video(seed: int, index: int, label: int, cue: str) -> Video:
    """Labelled video `index` of the dataset of `seed`: one scene of motion MOTIONS[label],
    UCF_SECONDS long (the UCF101-style layout's videos; its file adds a second audio channel)."""
    rng = _rng(seed, "ucf101", index)
    scene = make_scene(rng, UCF_SECONDS, motion=MOTIONS[label], cue=cue)
    frames = render(scene, room(seed, rng), 0.0, UCF_SECONDS, rng)
    return Video(frames, soundtrack(scene, UCF_SECONDS, rng), [scene])


def _ucf_video(task: dict) -> dict:
    video = ucf_video(task["seed"], task["index"], task["class"], task["cue"])
    name = UCF_CLASSES[task["class"]]
    rel = f"UCF-101/{name}/v_{name}_g{task['group']:02d}_c{task['clip']:02d}.avi"
    write_video(Path(task["root"]) / rel, video.frames, video.audio, container="avi")
    return {"rel": rel, "class": task["class"], "group": task["group"]}


def _esc_clip(task: dict) -> dict:
    rng = _rng(task["seed"], "esc50", task["index"])
    kind = SOUNDS[task["target"]]
    if task["cue"] == "motion":  # a scene whose motion makes this sound
        motion = next(m for m, k in SOUND_OF_MOTION.items() if k == kind)
        scene = make_scene(rng, 5.0, motion=motion, cue="motion")
    else:  # one whose colour (material) does
        scene = make_scene(rng, 5.0, colour=COLOUR_NAMES[task["target"]])
    name = f"{task['fold']}-{100000 + task['index']}-A-{task['target']}.wav"
    write_wav(Path(task["root"]) / "audio" / name, soundtrack(scene, 5.0, rng))
    return {"filename": name, "fold": task["fold"], "target": task["target"],
            "category": SOUNDS[task["target"]]}


def _msrvtt_video(task: dict) -> dict:
    rng = _rng(task["seed"], "msrvtt", task["index"])
    scene = make_scene(rng, 4.0, cue=task["cue"])
    vid = f"video{task['index']}"
    write_video(Path(task["root"]) / "videos" / f"{vid}.mp4",
                render(scene, room(task["seed"], rng), 0.0, 4.0, rng), soundtrack(scene, 4.0, rng))
    return {"video_id": vid, "captions": [describe(scene, rng) for _ in range(5)]}


def _kinetics_video(task: dict) -> dict:
    """A 4 s clip of one motion, named as the common Kinetics downloaders name them."""
    rng = _rng(task["seed"], "kinetics", task["index"])
    scene = make_scene(rng, 4.0, motion=MOTIONS[task["class"]], cue=task["cue"])
    ytid, start = f"synK{task['index']:07d}", int(rng.integers(0, 290))
    label = KINETICS_CLASSES[task["class"]]
    rel = f"{task['split']}/{label}/{ytid}_{start:06d}_{start + 10:06d}.mp4"
    (Path(task["root"]) / rel).parent.mkdir(parents=True, exist_ok=True)
    write_video(Path(task["root"]) / rel, render(scene, room(task["seed"], rng), 0.0, 4.0, rng),
                soundtrack(scene, 4.0, rng))
    return {"label": label, "youtube_id": ytid, "time_start": start, "time_end": start + 10,
            "split": task["split"]}


def _audioset_clip(task: dict) -> dict:
    """A 4 s segment whose soundtrack mixes the seen actor's sound with 0-2 off-screen sources of
    other kinds: multi-label, as AudioSet's segments are."""
    rng = _rng(task["seed"], "audioset", task["index"])
    scene = make_scene(rng, 4.0, cue=task["cue"])
    audio = soundtrack(scene, 4.0, rng, distractor_sound=False)
    kinds = {SOUNDS.index(scene.sound)}
    for _ in range(int(rng.integers(0, 3))):
        other = make_scene(rng, 4.0, motion=MOTIONS[rng.integers(len(MOTIONS))], cue=task["cue"])
        audio = audio + 0.8 * soundtrack(other, 4.0, rng, distractor_sound=False)
        kinds.add(SOUNDS.index(other.sound))
    ytid = f"synA{task['index']:07d}"
    write_video(Path(task["root"]) / "segments" / f"{ytid}_30.000.mp4",
                render(scene, room(task["seed"], rng), 0.0, 4.0, rng),
                np.clip(audio, -1, 1).astype(np.float32))
    return {"ytid": ytid, "labels": sorted(kinds), "list": task["list"]}


YOUCOOK_SCENE_SECONDS = 3.0  # whole seconds, as YouCook2's segment boundaries are


def _youcook_video(task: dict) -> dict:
    """A video of three scenes, each an annotated segment with its own sentence."""
    rng = _rng(task["seed"], "youcook2", task["index"])
    background, seconds = room(task["seed"], rng), YOUCOOK_SCENE_SECONDS
    frames, audio, annotations = [], [], []
    for k in range(3):
        scene = make_scene(rng, seconds, cue=task["cue"])
        frames.append(render(scene, background, 0.0, seconds, rng))
        audio.append(soundtrack(scene, seconds, rng))
        annotations.append({"segment": [int(k * seconds), int((k + 1) * seconds)], "id": k,
                            "sentence": describe(scene, rng)})
    vid, recipe = f"synY{task['index']:07d}", RECIPES[task["index"] % len(RECIPES)]
    path = Path(task["root"]) / "raw_videos" / task["subset"] / recipe / f"{vid}.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, np.concatenate(frames), np.concatenate(audio))
    return {vid: {"duration": 3 * seconds, "subset": task["subset"], "recipe_type": recipe,
                  "url": f"https://www.youtube.com/watch?v={vid}", "annotations": annotations}}


def _imagenet_image(task: dict) -> dict:
    """A still of one shape (any colour, any motion) as an ILSVRC JPEG; `kind` makes the odd but
    valid files real ImageNet holds: a PNG, a greyscale and a CMYK image named .JPEG."""
    import io

    from PIL import Image

    rng = _rng(task["seed"], "imagenet", task["index"])
    scene = make_scene(rng, 4.0, cue=task["cue"])
    scene.actor.shape = SHAPES[task["class"]]
    t = float(rng.uniform(0, 3.9))
    image = Image.fromarray(render(scene, room(task["seed"], rng), t, 1 / FPS, rng)[0])
    x, y, r, _ = _actor_state(scene, t)
    box = [int(np.clip(v, 0, limit - 1)) for v, limit in
           ((x - r, WIDTH), (y - r, HEIGHT), (x + r, WIDTH), (y + r, HEIGHT))]
    buffer = io.BytesIO()
    kind = task.get("kind", "jpeg")
    if kind == "png":
        image.save(buffer, format="PNG")
    elif kind == "grey":
        image.convert("L").save(buffer, format="JPEG", quality=90)
    elif kind == "cmyk":
        image.convert("CMYK").save(buffer, format="JPEG", quality=90)
    else:
        image.save(buffer, format="JPEG", quality=90)
    wnid = IMAGENET_SYNSETS[task["class"]][0]
    base = Path(task["root"]) / "ILSVRC" / "Data" / "CLS-LOC"
    name = (f"train/{wnid}/{wnid}_{task['index']}.JPEG" if task["split"] == "train"
            else f"val/ILSVRC2012_val_{task['number']:08d}.JPEG")
    (base / name).parent.mkdir(parents=True, exist_ok=True)
    (base / name).write_bytes(buffer.getvalue())
    return {"name": Path(name).stem, "wnid": wnid, "box": box, "split": task["split"]}


def _run(fn, tasks: list[dict], workers: int, desc: str, progress: bool) -> list[dict]:
    from tqdm import tqdm

    bar = tqdm(total=len(tasks), desc=desc, unit="file", disable=not progress)
    out = []
    if workers > 1:
        # no deadline: generating reads no outside input, so a hang is a bug to see, not a
        # bad file to quarantine (the ingest's decode has one: data.ingest.decode_timeout_s)
        out = map_in_processes(fn, tasks, workers, done=bar.update, deadline_s=None)
        died = [task for task, result in zip(tasks, out) if isinstance(result, WorkerDied)]
        if died:
            raise RuntimeError(f"{desc}: generating {len(died)} file(s) killed the worker process "
                               f"twice ({died[0]}); {out[tasks.index(died[0])].reason}")
    else:
        for task in tasks:
            out.append(fn(task))
            bar.update()
    bar.close()
    return out


def default_counts(scale: float) -> dict[str, int]:
    """Files per layout at `data.ingest.synthetic_scale`."""
    return {"howto100m": max(2, int(400 * scale)), "ucf101_per_class": max(5, int(30 * scale)),
            "esc50_per_class": max(5, int(40 * scale)), "msrvtt": max(8, int(160 * scale)),
            # per class: train, val, test
            "kinetics_per_class": (max(3, int(6 * scale)), max(1, int(2 * scale)),
                                   max(2, int(3 * scale))),
            # balanced train, unbalanced train, eval segments
            "audioset": (max(8, int(48 * scale)), max(4, int(16 * scale)), max(8, int(32 * scale))),
            # training, validation videos (3 annotated segments each)
            "youcook2": (max(4, int(12 * scale)), max(4, int(16 * scale))),
            "imagenet_per_class": (max(4, int(16 * scale)), max(2, int(6 * scale)))}


def generator_stamp(cfg: Config) -> dict:
    """What decides the generated data for `cfg`: generator version, seed, scale and cue
    (written to root/generated.json, and by ingestion into each manifest and data.dvc)."""
    ing = cfg.data.ingest
    cue = getattr(ing.synthetic_cue, "value", ing.synthetic_cue)
    if cue not in CUES:
        raise ValueError(f"data.ingest.synthetic_cue={cue!r}: pick one of {', '.join(CUES)}")
    return {"version": GENERATOR_VERSION, "seed": ing.synthetic_seed, "scale": ing.synthetic_scale,
            "cue": cue}


def generate(cfg: Config, root: str | Path, progress: bool = True) -> Path:
    """Write every layout of LAYOUTS under `root` (skipped when a finished copy for the same
    seed, scale, cue and generator version is there). Returns `root`."""
    ing = cfg.data.ingest
    root = Path(root)
    stamp = generator_stamp(cfg)
    cue = stamp["cue"]
    done = root / "generated.json"
    if done.exists() and json.loads(done.read_text()) == stamp:
        return root
    counts = default_counts(ing.synthetic_scale)
    seed, workers = ing.synthetic_seed, ing.num_workers
    for layout in LAYOUTS:
        (root / layout).mkdir(parents=True, exist_ok=True)

    howto = root / "howto100m"
    (howto / "videos").mkdir(exist_ok=True)
    captions: dict = {}
    for entry in _run(_howto_video, [{"seed": seed, "cue": cue, "index": i, "root": str(howto)}
                                     for i in range(counts["howto100m"])],
                      workers, "synthetic howto100m", progress):
        captions.update(entry)
    (howto / "caption.json").write_text(json.dumps(captions, sort_keys=True))

    ucf = root / "ucf101"
    for name in UCF_CLASSES:
        (ucf / "UCF-101" / name).mkdir(parents=True, exist_ok=True)
    per_class = counts["ucf101_per_class"]
    # six groups per class (of five clips at scale 1), as UCF101's groups of clips of one video
    tasks = [{"seed": seed, "cue": cue, "index": c * per_class + j, "class": c,
              "group": 1 + j * 6 // per_class, "clip": 1 + j, "root": str(ucf)}
             for c in range(len(UCF_CLASSES))
             for j in range(per_class)]
    videos = _run(_ucf_video, tasks, workers, "synthetic ucf101", progress)
    lists = ucf / "ucfTrainTestlist"
    lists.mkdir(exist_ok=True)
    (lists / "classInd.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(UCF_CLASSES)))
    # as in UCF101, whole groups are held out (groups 1-2 test), so no near-duplicate leaks
    (lists / "trainlist01.txt").write_text("".join(
        f"{v['rel'].split('/', 1)[1]} {v['class'] + 1}\n" for v in videos if v["group"] > 2))
    (lists / "testlist01.txt").write_text("".join(
        f"{v['rel'].split('/', 1)[1]}\n" for v in videos if v["group"] <= 2))

    esc = root / "esc50"
    (esc / "audio").mkdir(exist_ok=True)
    (esc / "meta").mkdir(exist_ok=True)
    per_class = counts["esc50_per_class"]
    tasks = [{"seed": seed, "cue": cue, "index": t * per_class + j, "target": t, "fold": 1 + j % 5,
              "root": str(esc)} for t in range(len(SOUNDS)) for j in range(per_class)]
    rows = _run(_esc_clip, tasks, workers, "synthetic esc50", progress)
    with open(esc / "meta" / "esc50.csv", "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        for r in sorted(rows, key=lambda r: r["filename"]):
            writer.writerow([r["filename"], r["fold"], r["target"], r["category"], "False",
                             r["filename"].split("-")[1], "A"])

    msr = root / "msrvtt"
    (msr / "videos").mkdir(exist_ok=True)
    count = counts["msrvtt"]
    entries = _run(_msrvtt_video, [{"seed": seed, "cue": cue, "index": i, "root": str(msr)}
                                   for i in range(count)], workers, "synthetic msrvtt", progress)
    num_test, num_val = count * 3 // 8, count // 4
    test_ids = {e["video_id"] for e in entries[count - num_test:]}
    val_ids = {e["video_id"] for e in entries[count - num_test - num_val:count - num_test]}
    data = {"videos": [{"video_id": e["video_id"], "id": i, "category": 0,
                        "split": "test" if e["video_id"] in test_ids
                        else "validate" if e["video_id"] in val_ids else "train"}
                       for i, e in enumerate(entries)],
            "sentences": [{"video_id": e["video_id"], "caption": c, "sen_id": 5 * i + k}
                          for i, e in enumerate(entries) for k, c in enumerate(e["captions"])]}
    (msr / "MSRVTT_data.json").write_text(json.dumps(data))
    with open(msr / "MSRVTT_JSFUSION_test.csv", "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["key", "vid_key", "video_id", "sentence"])
        for i, e in enumerate(e for e in entries if e["video_id"] in test_ids):
            writer.writerow([f"ret{i}", f"msr{e['video_id'][5:]}", e["video_id"], e["captions"][0]])
    _generate_kinetics(root / "kinetics", seed, cue, counts["kinetics_per_class"], workers,
                       progress)
    _generate_audioset(root / "audioset", seed, cue, counts["audioset"], workers, progress)
    _generate_youcook2(root / "youcook2", seed, cue, counts["youcook2"], workers, progress)
    _generate_imagenet(root / "imagenet", seed, cue, counts["imagenet_per_class"], workers,
                       progress)
    done.write_text(json.dumps(stamp))
    return root


def _generate_kinetics(root: Path, seed: int, cue: str, per_class: tuple[int, int, int],
                       workers: int, progress: bool) -> None:
    """Kinetics-400 style: <split>/<class>/<ytid>_<start>_<end>.mp4 and train/validate/test.csv
    (label,youtube_id,time_start,time_end,split); label = motion."""
    splits = [split for split, n in zip(("train", "val", "test"), per_class) for _ in range(n)]
    tasks = [{"seed": seed, "cue": cue, "index": c * len(splits) + j, "class": c, "split": split,
              "root": str(root)} for c in range(len(KINETICS_CLASSES))
             for j, split in enumerate(splits)]
    rows = _run(_kinetics_video, tasks, workers, "synthetic kinetics", progress)
    for split, file in (("train", "train.csv"), ("val", "validate.csv"), ("test", "test.csv")):
        with open(root / file, "w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
            for r in rows:
                if r["split"] == split:
                    writer.writerow([r["label"], r["youtube_id"], r["time_start"], r["time_end"],
                                     split])


def _generate_audioset(root: Path, seed: int, cue: str, counts: tuple[int, int, int],
                       workers: int, progress: bool) -> None:
    """AudioSet style: class_labels_indices.csv, balanced_train / unbalanced_train / eval
    segment CSVs (three # lines, then YTID, start, end, "mid,mid"), segments/<YTID>_30.000.mp4."""
    (root / "segments").mkdir(parents=True, exist_ok=True)
    lists = [name for name, n in zip(("balanced_train", "unbalanced_train", "eval"), counts)
             for _ in range(n)]
    rows = _run(_audioset_clip, [{"seed": seed, "cue": cue, "index": i, "list": name,
                                  "root": str(root)} for i, name in enumerate(lists)],
                workers, "synthetic audioset", progress)
    mids = [f"/m/0syn{i}" for i in range(len(SOUNDS))]
    with open(root / "class_labels_indices.csv", "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["index", "mid", "display_name"])
        for i, (mid, kind) in enumerate(zip(mids, SOUNDS)):
            writer.writerow([i, mid, kind.capitalize()])
    for name in ("balanced_train", "unbalanced_train", "eval"):
        mine = [r for r in rows if r["list"] == name]
        lines = [f"# Segments csv created by vatt.data.synthetic (generator {GENERATOR_VERSION})",
                 f"# num_ytids={len(mine)}, num_segs={len(mine)}, num_unique_labels={len(SOUNDS)}",
                 "# YTID, start_seconds, end_seconds, positive_labels"]
        lines += [f'{r["ytid"]}, 30.000, 34.000, "{",".join(mids[k] for k in r["labels"])}"'
                  for r in mine]
        (root / f"{name}_segments.csv").write_text("\n".join(lines) + "\n")


def _generate_youcook2(root: Path, seed: int, cue: str, counts: tuple[int, int], workers: int,
                       progress: bool) -> None:
    """YouCook2 style: raw_videos/<subset>/<recipe>/<vid>.mp4 and
    youcookii_annotations_trainval.json; every video has three annotated segments."""
    subsets = ["training"] * counts[0] + ["validation"] * counts[1]
    database: dict = {}
    for entry in _run(_youcook_video, [{"seed": seed, "cue": cue, "index": i, "subset": subset,
                                        "root": str(root)} for i, subset in enumerate(subsets)],
                      workers, "synthetic youcook2", progress):
        database.update(entry)
    (root / "youcookii_annotations_trainval.json").write_text(
        json.dumps({"database": database}, sort_keys=True))


def _generate_imagenet(root: Path, seed: int, cue: str, per_class: tuple[int, int],
                       workers: int, progress: bool) -> None:
    """ILSVRC2012 as distributed for the localisation challenge: ILSVRC/Data/CLS-LOC/train/<wnid>/
    and val/ILSVRC2012_val_<n>.JPEG, LOC_synset_mapping.txt, LOC_val_solution.csv; class =
    shape. The first three training images of the first class are a PNG, a greyscale and a
    CMYK image named .JPEG, as real ImageNet has."""
    train, val = per_class
    tasks = []
    for c in range(len(IMAGENET_SYNSETS)):
        for j in range(train + val):
            index = c * (train + val) + j
            task = {"seed": seed, "cue": cue, "index": index, "class": c, "root": str(root),
                    "split": "train" if j < train else "val",
                    "number": 1 + c * val + (j - train)}
            if c == 0 and j < 3:
                task["kind"] = ("png", "grey", "cmyk")[j]
            tasks.append(task)
    rows = _run(_imagenet_image, tasks, workers, "synthetic imagenet", progress)
    (root / "LOC_synset_mapping.txt").write_text(
        "".join(f"{wnid} {names}\n" for wnid, names in IMAGENET_SYNSETS))
    with open(root / "LOC_val_solution.csv", "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["ImageId", "PredictionString"])
        for r in sorted((r for r in rows if r["split"] == "val"), key=lambda r: r["name"]):
            writer.writerow([r["name"], f"{r['wnid']} {' '.join(map(str, r['box']))} "])


__all__ = ["generate", "generator_stamp", "LAYOUTS", "SHAPES", "SOUNDS", "MOTIONS", "make_scene",
           "render", "soundtrack", "describe", "sound_events", "default_counts", "Video",
           "howto_video", "ucf_video"]
