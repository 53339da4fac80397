"""The wheel is what the image installs (`pip install .`, not editable): it must carry the presets
and the search spaces, and `vatt` must run from it with no source tree in sight.

The test builds a wheel of this checkout, installs it (without dependencies) into a fresh venv and
runs that venv's `vatt` from a folder outside the source tree. The dependencies come from the test
interpreter's site-packages on PYTHONPATH: a PYTHONPATH folder's .pth files are not processed, so
the editable install's finder stays off and `import vatt` must resolve to the fresh copy (asserted).
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# source folder -> the package it installs as (flows/ and tuning/ under names of their own, so
# that no other distribution's `flows` or `tuning` can collide with them)
PACKAGE_ROOTS = {"vatt": "vatt", "flows": "vatt_flows", "tuning": "vatt_tuning"}


def _source_files() -> list[str]:
    """What a commit of this checkout would hold: tracked and not-ignored files."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                         cwd=REPO, check=True, capture_output=True, text=True).stdout
    return [name for name in out.split("\0") if name and (REPO / name).is_file()]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a clean copy of the checkout (no stale build/ or egg-info of its own)."""
    root = tmp_path_factory.mktemp("packaging")
    source = root / "source"
    for name in _source_files():
        target = source / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((REPO / name).read_bytes())
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps",
                            "--quiet", "-w", str(root / "dist")], capture_output=True, text=True)
    assert built.returncode == 0, f"pip wheel failed:\n{built.stdout}\n{built.stderr}"
    (found,) = (root / "dist").glob("vatt-*.whl")
    return found


def test_wheel_holds_every_package_the_presets_and_the_search_spaces(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    # every package of the source tree: pyproject.toml lists them by hand
    for root, package in PACKAGE_ROOTS.items():
        for init in (REPO / root).rglob("__init__.py"):
            installed = Path(package, init.relative_to(REPO / root)).as_posix()
            assert installed in names, (
                f"{init.parent.relative_to(REPO)} is not in the wheel: add it to "
                "[tool.setuptools] packages in pyproject.toml")
    presets = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))
    assert presets, "no presets under configs/"
    for preset in presets:
        assert f"vatt/configs/{preset}" in names, f"preset {preset} is not in the wheel"
    assert "vatt_tuning/droptoken_sharing.yaml" in names
    assert not any(name.startswith(("flows/", "tuning/")) for name in names)


def test_installed_wheel_runs_vatt_info_outside_the_source_tree(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python, vatt = env_dir / "bin" / "python", env_dir / "bin" / "vatt"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                    "--no-deps", str(wheel)], check=True)

    paths = sysconfig.get_paths()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([paths["purelib"], paths["platlib"]]))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    where = subprocess.run(
        [str(python), "-c", "import vatt, vatt.config as c; print(vatt.__file__); "
                            "print(c.CONFIG_DIR); print(' '.join(c.available_presets()))"],
        cwd=elsewhere, env=env, check=True, capture_output=True, text=True).stdout.splitlines()
    module_file, config_dir, presets = Path(where[0]), Path(where[1]), where[2].split()
    assert module_file.is_relative_to(env_dir), f"vatt imported from {module_file}, not the wheel"
    assert config_dir.is_relative_to(env_dir), f"presets read from {config_dir}, not the wheel"
    assert presets == sorted(p.stem for p in (REPO / "configs").glob("*.yaml"))
    # the flows and the search spaces import under their installed names, from the wheel
    found = subprocess.run(
        [str(python), "-c", "import vatt_flows, vatt_tuning; print(vatt_flows.__file__); "
                            "print(vatt_tuning.__file__)"],
        cwd=elsewhere, env=env, check=True, capture_output=True, text=True).stdout.splitlines()
    assert all(Path(file).is_relative_to(env_dir) for file in found), found

    info = subprocess.run([str(vatt), "info", "--preset", "tiny"], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=300)
    assert info.returncode == 0, f"vatt info failed:\n{info.stdout}\n{info.stderr}"
    assert "tiny" in info.stdout
