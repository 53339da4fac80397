"""Config loading: presets, dotlist overrides, and errors that name the key."""

import pytest

from vatt.config import (BackboneSharing, ConfigError, available_presets, from_dict, load_config,
                         replace, to_dict)


def test_presets_exist_and_load():
    assert {"tiny", "bbs", "mbs", "lbs", "ma-medium"} <= set(available_presets())
    for name in ("tiny", "bbs", "mbs", "lbs", "ma-medium"):
        assert load_config(name).name == name


def test_spec_defaults_in_full_presets():
    cfg = load_config("mbs")
    assert cfg.model.video.size == "medium" and cfg.model.audio.size == "base"
    assert cfg.model.video.drop_rate == 0.5 and cfg.model.audio.drop_rate == 0.5
    assert cfg.model.audio.patch_size == 128 and cfg.model.audio.input_scale == 1.0
    assert cfg.data.eval_num_windows == 4 and cfg.eval.finetune.test_crops == 3  # 4 clips x 3 crops
    assert cfg.data.num_frames == 32 and cfg.data.fps == 10 and cfg.data.frame_size == 224
    assert cfg.data.audio_samples == 153_600
    assert cfg.train.optim.warmup_steps == 10_000  # paper, not the code's 5k
    assert cfg.loss.average_pair_losses is False  # paper: plain sum
    assert cfg.model.heads.bn_after_audio_text is False  # code: no BN
    assert cfg.model.droptoken_sampling.value == "batch"
    assert load_config("ma-medium").model.sharing == BackboneSharing.agnostic


def test_dotlist_override():
    cfg = load_config("tiny", ["model.video.drop_rate=0.25", "model.sharing=agnostic"])
    assert cfg.model.video.drop_rate == 0.25
    assert cfg.model.sharing == BackboneSharing.agnostic


def test_unknown_key_names_key_and_allowed():
    with pytest.raises(ConfigError, match=r"model\.video\.dropout_rate.*drop_rate"):
        load_config("tiny", ["model.video.dropout_rate=0.1"])


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match=r"model\.video\.drop_rate.*float"):
        load_config("tiny", ["model.video.drop_rate=half"])


def test_bad_enum_lists_allowed_values():
    with pytest.raises(ConfigError, match=r"specific, agnostic"):
        load_config("tiny", ["model.sharing=shared"])


def test_drop_rate_is_a_drop_rate():
    with pytest.raises(ConfigError, match=r"drop_rate=1\.0 .*share of tokens dropped"):
        load_config("tiny", ["model.audio.drop_rate=1.0"])


def test_unknown_preset_lists_presets(tmp_path):
    with pytest.raises(ConfigError, match=r"Available presets: .*mbs"):
        load_config("nope")


def test_unknown_size():
    with pytest.raises(ConfigError, match=r"model\.video\.size='huge'.*medium"):
        load_config("tiny", ["model.video.size=huge"])


def test_round_trip_dict():
    cfg = load_config("tiny", ["model.video.drop_rate=0.75"])
    assert from_dict(to_dict(cfg)) == cfg


def test_loading_a_config_does_not_import_torch():
    # `vatt data push` and the flows' first task load configs: they must not pay torch's import
    import subprocess
    import sys

    code = ("import sys; from vatt.config import load_config; "
            "load_config('tiny', ['model.video.size=base']); print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_relative_local_paths_are_made_absolute_and_urls_kept(tmp_path, monkeypatch):
    from vatt.config import LOCAL_PATH_FIELDS, with_absolute_paths

    cfg = load_config("tiny", ["data.path=data", "train.storage_path=s3://bucket/runs",
                               "eval.output_path=../reports", "model.text.word2vec_path=w2v.txt"])
    monkeypatch.chdir(tmp_path)
    absolute = with_absolute_paths(cfg)
    assert absolute.data.path == str(tmp_path / "data")
    assert absolute.train.storage_path == "s3://bucket/runs"  # a URL is no local path
    assert absolute.eval.output_path == str(tmp_path.parent / "reports")
    assert absolute.eval.registry_path == str(tmp_path / "artifacts" / "registry")
    assert absolute.model.text.word2vec_path == str(tmp_path / "w2v.txt")
    assert with_absolute_paths(absolute, root=tmp_path / "elsewhere") == absolute
    only = with_absolute_paths(cfg, root=tmp_path / "p", fields=("data.path",))
    assert only.data.path == str(tmp_path / "p" / "data") and only.eval.output_path == "../reports"
    assert "model.text.word2vec_path" in LOCAL_PATH_FIELDS


# ---------------------------------------------------------------------------------------------
# No secret leaves the environment: nothing that reaches a config is resolved against it

CANARY = "canary-7f3a9c1e-not-a-real-key"


@pytest.mark.parametrize("override", [
    "eval.output_path=${oc.env:VATT_TEST_CANARY}",
    "eval.datasets.action_linear=[ucf101,'${oc.env:VATT_TEST_CANARY}']",
    "data.path=s3://bucket/${oc.env:VATT_TEST_CANARY}",
    "eval.output_path=${data.path}",  # even a reference: an override is a literal value
])
def test_an_override_never_resolves_an_interpolation(override, monkeypatch):
    from vatt.config import replace

    monkeypatch.setenv("VATT_TEST_CANARY", CANARY)
    key = override.partition("=")[0]
    for apply in (lambda: load_config("tiny", ["train.seed=1", override]),
                  lambda: replace(load_config("tiny"), [override])):
        with pytest.raises(ConfigError) as refused:
            apply()
        message = str(refused.value)
        assert f"override '{override}'" in message and f"{key}=VALUE" in message
        assert "AWS_SECRET_ACCESS_KEY" in message  # how credentials reach the storage layer
        assert CANARY not in message


def test_a_config_file_may_refer_to_keys_but_calls_no_resolver(tmp_path, monkeypatch):
    monkeypatch.setenv("VATT_TEST_CANARY", CANARY)
    referring = tmp_path / "referring.yaml"
    referring.write_text("train:\n  optim:\n    lr_peak: 3.0e-3\n    lr_end: ${train.optim.lr_peak}\n")
    cfg = load_config(referring)
    assert cfg.train.optim.lr_end == 3.0e-3  # config values only: saved resolved, no secret

    for value in ("${oc.env:VATT_TEST_CANARY}", "s3://b/${oc.env:VATT_TEST_CANARY,x}",
                  "${oc.decode:${oc.env:VATT_TEST_CANARY}}", "x${data.${oc.env:VATT_TEST_CANARY}}"):
        calling = tmp_path / "calling.yaml"
        calling.write_text(f"eval:\n  output_path: '{value}'\n")
        with pytest.raises(ConfigError, match=r"calling\.yaml: eval\.output_path calls a resolver"
                                              r".*AWS_SECRET_ACCESS_KEY") as refused:
            load_config(calling)
        assert CANARY not in str(refused.value)


def test_a_config_file_that_is_missing_or_does_not_parse_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"config file .*best\.yaml does not exist.*best\.yaml "
                                          r"of `vatt sweep`"):
        load_config(tmp_path / "best.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml does not parse as YAML.*line 1"):
        load_config(broken)
    listed = tmp_path / "listed.yml"
    listed.write_text("- model.sharing=agnostic\n")
    with pytest.raises(ConfigError, match=r"listed\.yml holds a list, not a mapping"):
        load_config(listed)


def test_a_saved_whole_config_loads_back_as_it_was(tmp_path):
    """What a sweep's best.yaml holds (to_yaml of the trial's config) is a config file."""
    from vatt.config import to_yaml

    cfg = load_config("tiny", ["model.video.drop_rate=0.25", "model.sharing=agnostic"])
    saved = tmp_path / "best.yaml"
    saved.write_text(to_yaml(cfg))
    assert load_config(saved) == cfg
    assert load_config(saved, ["train.seed=3"]).train.seed == 3


def test_a_config_saved_with_flat_or_retired_eval_settings_still_loads():
    """A checkpoint saved before the eval groups (eval.probe_rank, ...) or before
    eval.promote_incomparable and eval.finetune_cache_mb went is evaluated again (and a promoted
    model re-measured) with its own config: the flat values move into their groups."""
    cfg = load_config("tiny", ["eval.probe.epochs=7", "eval.promotion.margin=0.5"])
    saved = to_dict(cfg)
    flat = {key: value for key, value in saved["eval"].items()
            if key not in ("probe", "finetune", "promotion")}
    for group in ("probe", "finetune", "promotion"):
        flat.update({f"{group}_{name}": value for name, value in saved["eval"][group].items()})
    saved["eval"] = {**flat, "promote_incomparable": True, "finetune_cache_mb": 512.0}
    assert from_dict(saved) == cfg
    saved["eval"]["finetune_cach_mb"] = 1.0  # a misspelt key is still an error, named
    with pytest.raises(ConfigError, match="finetune_cach_mb"):
        from_dict(saved)


@pytest.mark.parametrize("old, new", [("eval.probe_epochs", "eval.probe.epochs"),
                                      ("eval.finetune_steps", "eval.finetune.steps"),
                                      ("eval.promotion_margin", "eval.promotion.margin")])
def test_an_old_flat_eval_key_fails_naming_its_new_key(old, new, tmp_path):
    with pytest.raises(ConfigError, match=rf"override: config key '{old}' is retired; set {new} "):
        load_config("tiny", [f"{old}=3"])
    with pytest.raises(ConfigError, match=rf"'{old}' is retired; set {new} "):
        replace(load_config("tiny"), [f"{old}=3"])
    group, name = new.split(".")[1:]
    written = tmp_path / "old.yaml"  # a config file written before the groups
    written.write_text(f"eval:\n  {group}_{name}: 3\n")
    with pytest.raises(ConfigError, match=rf"old\.yaml: config key '{old}' is retired; set {new}"):
        load_config(written)
    # the new key, nested, from the command line
    assert getattr(getattr(load_config("tiny", [f"{new}=3"]).eval, group), name) == 3


def test_train_bf16_is_retired_naming_train_precision():
    with pytest.raises(ConfigError, match=r"'train\.bf16' is retired; set train\.precision"):
        load_config("tiny", ["train.bf16=true"])
    saved = to_dict(load_config("tiny"))
    saved["train"]["bf16"] = True  # as written by runs before train.precision existed
    with pytest.raises(ConfigError, match=r"saved config: .*'train\.bf16'.*train\.precision"):
        from_dict(saved)


@pytest.mark.parametrize("override, message", [
    ("eval.probe.rank=0", r"eval\.probe: rank=0, .*at least 1"),
    ("eval.probe.lr=0", r"eval\.probe: .*lr=0\.0 positive"),
    ("eval.probe.weight_decay=-1", r"eval\.probe\.weight_decay=-1\.0: use 0 or more"),
    ("eval.finetune.steps=0", r"eval\.finetune: steps=0 .*at least 1"),
    ("eval.finetune.warmup_steps=-1", r"eval\.finetune: .*warmup_steps=-1 0 or more"),
    ("eval.finetune.test_crops=0", r"eval\.finetune\.test_crops=0: .*at least one crop"),
    ("eval.finetune.shuffle_mb=0", r"eval\.finetune\.shuffle_mb=0\.0: .*at least a batch"),
    ("eval.promotion.margin=-0.1", r"eval\.promotion\.margin=-0\.1: .*0 or more"),
    ("eval.promotion.noise_z=-1", r"eval\.promotion\.noise_z=-1\.0: .*0 or more"),
])
def test_each_eval_group_checks_its_own_fields(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", [override])


def test_each_group_checks_itself_without_a_whole_config():
    from vatt.config import FinetuneConfig, ProbeConfig, PromotionConfig, ValidationConfig

    for group in (ProbeConfig(), FinetuneConfig(), PromotionConfig(), ValidationConfig()):
        group.check()  # the defaults are valid
    with pytest.raises(ConfigError, match=r"eval\.finetune: steps=0"):
        FinetuneConfig(steps=0).check()
    with pytest.raises(ConfigError, match=r"train\.validation\.split='test'"):
        ValidationConfig(split="test").check()


@pytest.mark.parametrize("key, value, allowed", [
    ("eval.audioset_train", "all", "balanced, unbalanced, both"),
    ("eval.device", "gpu", "auto, cpu, cuda")])
def test_closed_sets_are_enums_that_list_their_values(key, value, allowed):
    with pytest.raises(ConfigError, match=rf"'{key}'.*'{value}'.*Allowed values: {allowed}\."):
        load_config("tiny", [f"{key}={value}"])


def test_the_default_preset_is_named_once():
    from vatt.config import DEFAULT_PRESET

    assert load_config() == load_config(DEFAULT_PRESET) and DEFAULT_PRESET == "tiny"