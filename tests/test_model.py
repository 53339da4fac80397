"""The VATT model against the spec: parameter counts, FLOPs, DropToken, input errors."""

import pytest
import torch

from vatt.config import load_config
from vatt.model import InputError, build_model
from vatt.model.flops import count_flops, meta_batch
from vatt.model.summary import random_batch


def meta_model(preset, overrides=()):
    cfg = load_config(preset, list(overrides))
    with torch.device("meta"):
        return build_model(cfg), cfg


def params(module):
    return sum(p.numel() for p in module.parameters())


# --- parameters (paper Table 7, within 1%) ----------------------------------------------------

@pytest.mark.parametrize("preset,paper_millions", [("bbs", 87.9), ("mbs", 155.0), ("lbs", 306.1)])
def test_video_backbone_parameters_match_paper(preset, paper_millions):
    model, _ = meta_model(preset)
    count = params(model.backbones["video"]) / 1e6
    assert abs(count / paper_millions - 1) < 0.01, count


def test_backbone_parameters_match_reference_code():
    model, _ = meta_model("mbs")
    assert round(params(model.backbones["video"]) / 1e6, 2) == 154.34
    assert round(params(model.backbones["audio"]) / 1e6, 2) == 86.08


def test_agnostic_model_shares_one_transformer():
    model, _ = meta_model("ma-medium")
    video, audio, text = (model.backbones[m] for m in ("video", "audio", "text"))
    assert video.transformer is audio.transformer is text.transformer
    shared = params(video.transformer)
    # the whole model counts the shared Transformer once
    own = sum(params(b) - shared for b in (video, audio, text))
    assert params(model) == shared + own + params(model.heads)
    assert abs(shared / 1e6 - 151.2) < 0.5  # 12 Medium layers
    assert video.output_dim == 1024  # post-projection


# --- FLOPs, measured with FlopCounterMode on meta, paper convention (within 3%) ---------------

@pytest.mark.parametrize("drop_rate,paper_gflops",
                         [(0.0, 784.8), (0.25, 574.2), (0.5, 375.4), (0.75, 188.1)])
def test_mbs_flops_match_table5(drop_rate, paper_gflops):
    model, cfg = meta_model("mbs", [f"model.video.drop_rate={drop_rate}",
                                    f"model.audio.drop_rate={drop_rate}"])
    model.train()  # DropToken is on in training only
    flops = count_flops(model, meta_batch(cfg, batch_size=2), per=2)
    assert flops.attention > 0  # attention was counted (SDPA decomposed into bmm on meta)
    assert abs(flops.paper_gflops / paper_gflops - 1) < 0.03, flops.paper_gflops


@pytest.mark.parametrize("frames,size,drop_rate,paper_gflops", [
    (32, 224, 0.0, 548.1), (64, 224, 0.0, 1222.1), (32, 320, 0.0, 1252.3),
    (32, 320, 0.75, 279.8), (32, 320, 0.5, 572.5), (32, 320, 0.25, 898.9)])
def test_medium_video_flops_match_table6(frames, size, drop_rate, paper_gflops):
    model, cfg = meta_model("mbs", [f"model.video.drop_rate={drop_rate}"])
    video = model.backbones["video"].train()
    batch = meta_batch(cfg, batch_size=1, num_frames=frames, frame_size=size)
    flops = count_flops(video, batch["video"])
    assert abs(flops.paper_gflops / paper_gflops - 1) < 0.03, flops.paper_gflops


def test_positions_interpolate_to_a_new_grid():
    cfg = load_config("tiny", ["model.video.drop_rate=0"])
    model = build_model(cfg).eval()
    video = torch.rand(1, 16, 96, 96, 3) * 2 - 1  # twice the frames, 1.5x the size
    assert model.backbones["video"](video).shape == (1, 128)


# --- DropToken ----------------------------------------------------------------------------

def _token_counts(model, batch):
    """Sequence length entering each Transformer, per modality."""
    seen = {}
    for name in ("video", "audio", "text"):
        transformer = model.backbones[name].transformer
        transformer.register_forward_pre_hook(
            lambda mod, args, name=name: seen.__setitem__(name, args[0].shape[1]))
    model(batch)
    return seen


@pytest.mark.parametrize("drop_rate", [0.0, 0.25, 0.5, 0.75])
@pytest.mark.parametrize("sampling", ["batch", "sample"])
def test_droptoken_keeps_int_keep_times_n_in_training(drop_rate, sampling):
    cfg = load_config("tiny", [f"model.video.drop_rate={drop_rate}",
                               f"model.audio.drop_rate={drop_rate}",
                               f"model.droptoken_sampling={sampling}"])
    model = build_model(cfg)
    batch = random_batch(cfg, 2)
    n_video, n_audio = 4 * 4 * 4, 12800 // cfg.model.audio.patch_size
    model.train()
    counts = _token_counts(model, batch)
    assert counts["video"] == 1 + int((1 - drop_rate) * n_video)
    assert counts["audio"] == 1 + int((1 - drop_rate) * n_audio)
    assert counts["text"] == 1 + cfg.data.max_text_tokens  # text is never dropped
    model.eval()
    assert _token_counts(model, batch) == {"video": 1 + n_video, "audio": 1 + n_audio,
                                           "text": 1 + cfg.data.max_text_tokens}


def test_paper_default_keeps_784_of_1568_video_tokens():
    model, cfg = meta_model("mbs")
    model.train()
    counts = _token_counts(model, meta_batch(cfg, batch_size=2))
    assert counts["video"] == 1 + 784 and counts["audio"] == 1 + 600


def test_eval_mode_is_deterministic():
    cfg = load_config("tiny")
    model = build_model(cfg).eval()
    batch = random_batch(cfg, 2)
    with torch.no_grad():
        a, b = model(batch), model(batch)
    for modality in a:
        for key in a[modality]:
            torch.testing.assert_close(a[modality][key], b[modality][key])


def test_per_sample_droptoken_differs_between_samples():
    from vatt.model.tokenizers import drop_tokens

    torch.manual_seed(0)
    tokens = torch.arange(10.0).view(1, 10, 1).repeat(4, 1, 1)  # (4, 10, 1)
    kept = drop_tokens(tokens, 0.5, per_sample=True)
    assert kept.shape == (4, 5, 1)
    assert len({tuple(sorted(row.flatten().tolist())) for row in kept}) > 1
    shared = drop_tokens(tokens, 0.5, per_sample=False)
    assert len({tuple(row.flatten().tolist()) for row in shared}) == 1


# --- text ---------------------------------------------------------------------------------

def test_padding_does_not_change_text_features():
    cfg = load_config("tiny", ["data.max_text_tokens=16"])
    model = build_model(cfg).eval()
    text = torch.zeros(1, 1, 16, dtype=torch.long)
    text[0, 0, :5] = torch.tensor([5, 6, 7, 8, 9])
    with torch.no_grad():
        full = model.backbones["text"](text)
        short = model.backbones["text"](text[..., :5])
    torch.testing.assert_close(full, short, atol=1e-5, rtol=1e-4)


def test_word_embeddings_can_be_frozen():
    cfg = load_config("tiny")
    model = build_model(cfg)
    text = model.backbones["text"]
    assert text.embedding.weight.requires_grad  # trainable without a word2vec file
    table = torch.randn(cfg.data.vocab_size, 300)
    text.load_word_embeddings(table)
    assert not text.embedding.weight.requires_grad
    with pytest.raises(ValueError, match="data.vocab_size"):
        text.load_word_embeddings(torch.randn(10, 300))


def test_word2vec_without_vocabulary_is_an_error():
    cfg = load_config("tiny", ["model.text.word2vec_path=/tmp/vectors.txt"])
    with pytest.raises(ValueError, match="vocabulary"):
        build_model(cfg)


# --- bad input names the modality and the expected shape ------------------------------------

@pytest.fixture(scope="module")
def tiny():
    cfg = load_config("tiny")
    return build_model(cfg).eval(), cfg


@pytest.mark.parametrize("key,value,pattern", [
    ("video", torch.zeros(2, 8, 64, 64), r"video: .*\(B, T, H, W, 3\)"),
    ("video", torch.zeros(2, 8, 60, 64, 3), r"video: .*multiples of 16x16"),
    ("video", torch.zeros(2, 8, 64, 64, 3, dtype=torch.uint8), r"video: got torch.uint8"),
    ("audio", torch.zeros(2, 1, 12800), r"audio: .*\(B, S\)"),
    ("audio", torch.zeros(2, 12801), r"audio: .*multiple of 32"),
    ("text", torch.zeros(2, 5, 16), r"text: got torch.float32 .*int64"),
    ("text", torch.zeros(2, 5, 17, dtype=torch.long), r"text: .*n <= 16"),
    ("text_mask", torch.ones(2, 4), r"text_mask: .*\(2, 5\)"),
])
def test_bad_input_names_modality_and_shape(tiny, key, value, pattern):
    model, cfg = tiny
    batch = random_batch(cfg, 2)
    batch[key] = value
    with pytest.raises(InputError, match=pattern):
        model(batch)


def test_missing_modalities_and_mismatched_batch(tiny):
    model, cfg = tiny
    with pytest.raises(InputError, match="none of the modalities"):
        model({"frames": torch.zeros(1)})
    batch = random_batch(cfg, 2)
    del batch["text_mask"]
    with pytest.raises(InputError, match="text_mask: got missing"):
        model(batch)
    batch = random_batch(cfg, 2)
    batch["audio"] = batch["audio"][:1]
    with pytest.raises(InputError, match="batch sizes differ"):
        model(batch)


def test_single_modality_runs_alone(tiny):
    model, cfg = tiny
    batch = random_batch(cfg, 2)
    out = model({"audio": batch["audio"]})
    assert set(out) == {"audio"} and out["audio"]["va"].shape == (2, 128)


def test_out_of_vocabulary_id(tiny):
    model, cfg = tiny
    batch = random_batch(cfg, 2)
    batch["text"][0, 0, 0] = cfg.data.vocab_size
    with pytest.raises(InputError, match="data.vocab_size"):
        model(batch)


def test_word2vec_file_fills_and_freezes_the_word_table(tmp_path):
    from vatt.text import Vocabulary

    vocabulary = Vocabulary.build(["red ball bounces", "blue cube"], max_size=16)
    vectors = {"red": [0.5] * 300, "cube": [-0.25] * 300}
    lines = [f"{len(vectors)} 300"] + [f"{w} " + " ".join(map(str, v)) for w, v in vectors.items()]
    path = tmp_path / "vectors.txt"
    path.write_text("\n".join(lines) + "\n")
    cfg = load_config("tiny", [f"model.text.word2vec_path={path}"])
    model = build_model(cfg, vocabulary=vocabulary)
    table = model.backbones["text"].embedding.weight
    assert not table.requires_grad  # frozen, as the reference's word2vec table
    for word, vector in vectors.items():
        torch.testing.assert_close(table[vocabulary.encode(word, 1)[0]], torch.tensor(vector))
    assert torch.all(table[0] == 0)  # padding row


def test_audio_input_scale_is_a_gain_before_the_tokenizer():
    """model.audio.input_scale=s gives the same features as the spec model fed s x the audio."""
    cfg = load_config("tiny", ["model.audio.input_scale=8"])
    plain_cfg = load_config("tiny", ["model.audio.input_scale=1"])
    torch.manual_seed(0)
    scaled = build_model(cfg).eval()
    plain = build_model(plain_cfg).eval()
    plain.load_state_dict(scaled.state_dict())  # the gain is not a parameter
    audio = random_batch(cfg, 2)["audio"] * 0.1
    with torch.no_grad():
        got = scaled({"audio": audio})["audio"]["pooled"]
        want = plain({"audio": audio * 8})["audio"]["pooled"]
        unscaled = plain({"audio": audio})["audio"]["pooled"]
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, unscaled)


def test_audio_input_scale_must_be_positive():
    from vatt.config import ConfigError

    with pytest.raises(ConfigError, match=r"model\.audio\.input_scale=0\.0 must be positive"):
        load_config("tiny", ["model.audio.input_scale=0"])
