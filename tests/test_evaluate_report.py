"""The report folder: results.json, report.md and valid PNG plots."""

import json

import numpy as np

from vatt.config import ProbeConfig
from vatt.evaluate.probes import linear_probe
from vatt.evaluate.report import write_report
from vatt.evaluate.retrieval import text_to_video
from vatt.storage import ObjectStore


def test_report_folder(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 8)), rng.integers(0, 4, 60)
    probe = linear_probe(x, y, np.arange(60), x, y, np.arange(60), 4,
                         settings=ProbeConfig(rank=4, epochs=3))
    emb = rng.normal(size=(20, 8))
    retrieval = text_to_video(emb, np.arange(20), emb + 0.1 * rng.normal(size=(20, 8)), np.arange(20))
    results = {
        "checkpoint": "runs/x/checkpoint_00000010", "step": 10,
        "metrics": {"action_linear.top1": probe.metrics["top1"],
                    "text_video_retrieval.R@10": retrieval.metrics["R@10"]},
        "tasks": {"action_linear": {"metrics": probe.metrics, "per_class": probe.per_class,
                                    "confusion": probe.confusion},
                  "text_video_retrieval": {"metrics": retrieval.metrics, "ranks": retrieval.ranks}},
    }
    write_report(results, str(tmp_path / "eval"), ObjectStore())
    folder = tmp_path / "eval"
    assert json.loads((folder / "results.json").read_text()) == json.loads(json.dumps(results))
    report = (folder / "report.md").read_text()
    pngs = sorted(p.name for p in folder.glob("*.png"))
    assert pngs == ["action_linear_confusion.png", "action_linear_per_class_accuracy.png",
                    "text_video_retrieval_ranks.png"]
    for name in pngs:
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in report
    assert "| action_linear | top1 |" in report and "checkpoint_00000010" in report
