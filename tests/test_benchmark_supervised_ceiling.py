"""benchmarks/supervised_ceiling.py, the learnability diagnostic behind BENCHMARKS.md's
"Supervised ceiling" table: it runs, learns an easy attribute, and rejects a target its tower
cannot see."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "supervised_ceiling.py"


@pytest.fixture(scope="module")
def ceiling():
    spec = importlib.util.spec_from_file_location("supervised_ceiling", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # benchmarks/ on the path (its synthetic_clips.py), as it is when the script runs
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(SCRIPT.parent))
        yield module


def test_video_tower_learns_the_colour_with_labels(ceiling, tmp_path):
    out = tmp_path / "colour.json"
    assert ceiling.main(["--tower", "video", "--target", "colour", "--clips", "256",
                         "--test-clips", "64", "--steps", "80", "--eval-every", "40",
                         "--out", str(out)]) == 0
    found = json.loads(out.read_text())
    assert found["chance"] == pytest.approx(1 / 8)
    assert [point["step"] for point in found["curve"]] == [40, 80]
    # colour is one linear read of the pixels: far above chance in 80 steps (0.98 in 300)
    assert found["curve"][-1]["test_top1"] > 3 * found["chance"]


def test_audio_clips_have_the_presets_length(ceiling):
    from vatt.config import load_config

    cfg = load_config("tiny")
    inputs, labels = ceiling.make_clips(cfg, range(2), "audio", seed=0, cue="motion")
    # the evaluation's windows of each labelled video, video i showing motion i % 8
    windows = cfg.data.eval_num_windows
    assert inputs.shape == (2 * windows, cfg.data.audio_samples)
    assert set(labels) == {"motion", "shape", "colour", "sound"}
    assert labels["motion"].tolist() == [0] * windows + [1] * windows


def test_a_target_the_tower_cannot_see_is_refused(ceiling, capsys):
    with pytest.raises(SystemExit):
        ceiling.main(["--tower", "audio", "--target", "colour"])
    assert "pick one of sound, motion" in capsys.readouterr().err
