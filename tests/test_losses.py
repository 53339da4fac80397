"""NCE and MIL-NCE: hand-checked cases, gradients, masking and gathered negatives (gloo)."""

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from vatt.config import load_config
from vatt.losses import mil_nce, nce, vatt_loss


def test_nce_matches_formula_by_hand():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    T = 0.5
    s = x @ y.t() / T  # cosine (rows already unit-norm) over temperature
    expected = []
    for i in range(2):
        denominator = torch.logsumexp(torch.cat([s[i, :], s[:, i]]), dim=0)
        expected.append(denominator - s[i, i])
    assert nce(x, y, T).item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-6)


def test_mil_nce_matches_formula_by_hand():
    torch.manual_seed(0)
    B, L, D, T = 3, 2, 4, 0.07
    v = F.normalize(torch.randn(B, D), dim=-1)
    t = F.normalize(torch.randn(B, L, D), dim=-1)
    losses = []
    for i in range(B):
        pos = [v[i] @ t[i, l] / T for l in range(L)]
        terms = [v[i] @ t[j, l] / T for j in range(B) for l in range(L)]
        terms += [v[j] @ t[i, l] / T for j in range(B) for l in range(L)]
        losses.append(torch.logsumexp(torch.stack(terms), 0) - torch.logsumexp(torch.stack(pos), 0))
    assert mil_nce(v, t, torch.ones(B, L), T).item() == pytest.approx(
        torch.stack(losses).mean().item(), rel=1e-5)


def test_aligned_embeddings_beat_shuffled():
    torch.manual_seed(0)
    x = torch.randn(16, 32)
    y = x + 0.1 * torch.randn(16, 32)
    shuffled = y[torch.randperm(16)]
    assert nce(x, y) < nce(x, shuffled)
    text = torch.stack([y, torch.randn(16, 32)], dim=1)  # one matching candidate of two
    assert mil_nce(x, text) < mil_nce(x, text[torch.randperm(16)])


def test_masked_text_changes_nothing():
    torch.manual_seed(0)
    v, t = torch.randn(4, 8), torch.randn(4, 3, 8)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 0, 0]], dtype=torch.float32)
    base = mil_nce(v, t, mask)
    garbage = t.clone()
    garbage[mask == 0] = 100 * torch.randn(int((mask == 0).sum()), 8)
    assert mil_nce(v, garbage, mask).item() == pytest.approx(base.item(), rel=1e-6)


def test_clip_without_text_is_left_out_of_the_mean():
    torch.manual_seed(0)
    v, t = torch.randn(3, 8), torch.randn(3, 2, 8)
    mask = torch.tensor([[1, 1], [1, 0], [0, 0]], dtype=torch.float32)
    with_empty = mil_nce(v, t, mask)
    without = mil_nce(v[:2], t[:2], mask[:2])
    # the text-less clip still serves as a negative video, so compare to a direct computation
    assert torch.isfinite(with_empty)
    assert with_empty.item() != pytest.approx(0.0)
    # all-masked batch: finite, zero loss, zero gradients
    v.requires_grad_(True)
    empty = mil_nce(v, t, torch.zeros(3, 2))
    empty.backward()
    assert empty.item() == 0.0 and torch.all(v.grad == 0)
    assert torch.isfinite(without)


def test_gradients_reach_every_input():
    torch.manual_seed(0)
    v = torch.randn(4, 8, requires_grad=True)
    t = torch.randn(4, 2, 8, requires_grad=True)
    a = torch.randn(4, 8, requires_grad=True)
    (mil_nce(v, t, torch.ones(4, 2)) + nce(v, a)).backward()
    for tensor in (v, t, a):
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0


def test_vatt_loss_weights_and_reduction():
    torch.manual_seed(0)
    out = {"video": {"va": torch.randn(4, 8), "vt": torch.randn(4, 6)},
           "audio": {"va": torch.randn(4, 8)}, "text": {"vt": torch.randn(4, 5, 6)}}
    mask = torch.ones(4, 5)
    paper = vatt_loss(out, mask, load_config("tiny").loss)
    assert paper["total"] == pytest.approx((paper["video_audio"] + paper["video_text"]).item())
    code = vatt_loss(out, mask, load_config("tiny", ["loss.average_pair_losses=true"]).loss)
    assert code["total"].item() == pytest.approx(paper["total"].item() / 2)
    with pytest.raises(ValueError, match="needs video"):
        vatt_loss({"audio": out["audio"]}, mask, load_config("tiny").loss)


def test_loss_is_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    batch = 64
    out = {"video": {"va": F.normalize(torch.randn(batch, 128), dim=-1),
                     "vt": F.normalize(torch.randn(batch, 64), dim=-1)},
           "audio": {"va": F.normalize(torch.randn(batch, 128), dim=-1)},
           "text": {"vt": F.normalize(torch.randn(batch, 5, 64), dim=-1)}}
    mask = torch.ones(batch, 5)
    cfg = load_config("tiny").loss
    fp32 = vatt_loss(out, mask, cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = vatt_loss(out, mask, cfg)
        # what the loss was before: its similarity matmuls in bf16 (the test can tell)
        quantised = nce(out["video"]["va"], out["audio"]["va"], cfg.temperature)
    for key in ("total", "video_audio", "video_text"):
        assert under_autocast[key].dtype == torch.float32
        assert under_autocast[key].item() == pytest.approx(fp32[key].item(), rel=1e-6)
    assert abs(quantised.item() - fp32["video_audio"].item()) > 1e-4


def test_shape_errors():
    with pytest.raises(ValueError, match="nce"):
        nce(torch.randn(4, 8), torch.randn(3, 8))
    with pytest.raises(ValueError, match="mil_nce"):
        mil_nce(torch.randn(4, 8), torch.randn(3, 2, 8))


# --- 2 processes, gloo: gathered negatives equal one process on the concatenated batch --------

def _global_batch():
    g = torch.Generator().manual_seed(1)
    v = torch.randn(8, 16, generator=g)
    t = torch.randn(8, 3, 16, generator=g)
    a = torch.randn(8, 16, generator=g)
    mask = (torch.rand(8, 3, generator=g) > 0.3).float()
    mask[5] = 0  # one clip without text
    return v, t, a, mask


def _loss_and_grads(v, t, a, mask):
    v, t, a = (x.clone().requires_grad_(True) for x in (v, t, a))
    loss = mil_nce(v, t, mask) + nce(v, a)
    loss.backward()
    return loss.detach(), v.grad, t.grad, a.grad


def _worker(rank, world, port, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        v, t, a, mask = _global_batch()
        part = slice(rank * 4, (rank + 1) * 4)
        loss, gv, gt, ga = _loss_and_grads(v[part], t[part], a[part], mask[part])
        # DDP averages parameter gradients over workers, so the share of the global
        # objective that flows through this worker's inputs is its input gradient / world
        results[rank] = (loss, gv / world, gt / world, ga / world)
    finally:
        dist.destroy_process_group()


def test_gathered_negatives_equal_single_process_loss():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_worker, args=(2, port, results), nprocs=2, join=True)
    loss, gv, gt, ga = _loss_and_grads(*_global_batch())
    mean_loss = (results[0][0] + results[1][0]) / 2
    assert mean_loss.item() == pytest.approx(loss.item(), rel=1e-5)
    torch.testing.assert_close(torch.cat([results[0][1], results[1][1]]), gv)
    torch.testing.assert_close(torch.cat([results[0][2], results[1][2]]), gt)
    torch.testing.assert_close(torch.cat([results[0][3], results[1][3]]), ga)
    assert not math.isclose(results[0][0].item(), results[1][0].item())
