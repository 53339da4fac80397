"""The README's commands as a user types them, from the project folder of the session's
`vatt pipeline` run, with the default relative paths (data/, runs/, artifacts/): after the
pipeline, `vatt evaluate --checkpoint latest` finds the pipeline's checkpoint under runs/,
evaluates it again through the real loader and gives the report's numbers again, and the gate
does not promote the same model twice. (`vatt sweep tuning/<space>.yaml` and `vatt pretrain
--config sweeps/<space>/best.yaml` from the same folder are in test_sweep.py.) No run of its own
beyond the evaluation: the pipeline's is shared with the rest of the session."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import vatt_command

pytestmark = pytest.mark.slow


def run_in_project(project: Path, *args: str, timeout_s: float = 20 * 60) -> str:
    """`vatt ARGS` in `project` as typed there (no Prefect profile or Ray address of the
    caller's); fails with the output's end unless it exits 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RAY_ADDRESS"))}
    env["PREFECT_HOME"] = str(project / ".prefect")
    done = subprocess.run([*vatt_command(), *args], cwd=project, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout_s)
    assert done.returncode == 0, (f"vatt {' '.join(args)} failed ({done.returncode}):\n"
                                  f"{done.stdout[-6000:]}")
    return done.stdout


def test_evaluate_latest_gives_the_pipelines_numbers_again_and_is_not_promoted(default_pipeline):
    from vatt.evaluate.registry import Registry
    from vatt.storage import ObjectStore

    project = default_pipeline.project
    output = run_in_project(project, "evaluate", "--checkpoint", "latest")
    # "latest": the pipeline's checkpoint, found under the default train.storage_path, runs/
    latest = default_pipeline.checkpoint.relative_to(project)
    assert latest.parts[0] == "runs", latest
    assert f"evaluating checkpoint {latest} on " in output, output[-3000:]
    report = next(line.split(": ", 1)[1] for line in output.splitlines()
                  if line.startswith("report: "))
    assert not Path(report).is_absolute()  # under the default eval.output_path, artifacts/eval
    again = json.loads((project / report / "results.json").read_text())["metrics"]
    first = json.loads((default_pipeline.report / "results.json").read_text())["metrics"]
    # the same checkpoint read afresh through Ray Data: the same numbers (to the 4 decimals
    # `vatt evaluate` prints; threads may reorder a float sum)
    assert set(again) == set(first) and len(first) > 10
    assert again == {name: pytest.approx(value, abs=5e-5) for name, value in first.items()}
    assert "not promoted: text_video_retrieval.MRR" in output

    registry = Registry(str(project / "artifacts" / "registry"), ObjectStore())
    decisions = json.loads(registry.path.read_text())["decisions"]
    # the pipeline's model was promoted; the same model again is no improvement beyond the
    # tiny preset's margin (its noise)
    assert [d["promoted"] for d in decisions] == [True, False]
    assert decisions[1]["candidate_value"] == pytest.approx(decisions[1]["promoted_value"],
                                                            abs=5e-5)
    assert decisions[1]["reason"].startswith("not better than the promoted model by the margin")
    assert decisions[1]["promoted_value_source"] == "stored" and decisions[1]["margin"] == 0.06
    # compared like with like: the same clips (by content), settings and evaluation code
    used = decisions[1]["evaluation"]["tasks"]["text_video_retrieval"]
    assert used["dataset"] == "synthetic-msrvtt" and len(used["splits"]["test"]) == 64
    assert used["settings"]["data.num_text_candidates"] == 5 and len(used["code"]) == 16
    assert decisions[1]["evaluation"] == decisions[0]["evaluation"]
