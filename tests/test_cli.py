"""The `vatt` command in-process (vatt.cli.main): what it answers before any heavy work starts."""

from __future__ import annotations

from vatt.cli import main


def test_pretrain_refuses_an_unusable_storage_path_before_starting_ray(tmp_path, capsys):
    # the preflight's refusal is the command's answer: exit 2, the key named, nothing written
    code = main(["pretrain", "train.storage_path=ftp://host/runs", f"data.path={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("vatt pretrain: cannot start: train.storage_path='ftp://host/runs'")
    assert "s3://bucket/prefix" in err
    assert not list(tmp_path.iterdir())


def test_there_is_one_command_line_interface():
    # `python -m vatt.train` was a second CLI beside `vatt pretrain`; a RayJob runs `vatt ...`
    import importlib.util

    assert importlib.util.find_spec("vatt.train.__main__") is None
    import vatt.train.pretrain as pretrain

    assert not hasattr(pretrain, "main")
