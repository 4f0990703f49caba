"""Attention rollout and transformer attribution: hand-computed cases, references written from the papers on tiny
ViT / DeiT models (attention recomputed by hand from the blocks' weights), the fused-attention switch, applicability
and the target-sensitivity conformance check.
"""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

import interpbench as ib
from interpbench.core.base import Model, NotApplicable
from interpbench.models.weights import seeded
from interpbench.ops.hooks import capture_attention
from interpbench.ops.tokens import attention_relevance, attention_rollout, class_row

# --------------------------------------------------------------------------------------------- hand-computed


def test_rollout_of_two_hand_computed_blocks():
    # block 1: two heads averaging to A1 = [[.5, .5, 0], [0, 1, 0], [.2, .2, .6]]; block 2: one head A2
    a1 = torch.tensor([[[1, 0, 0], [0, 1, 0], [.4, 0, .6]], [[0, 1, 0], [0, 1, 0], [0, .4, .6]]])[None]
    a2 = torch.tensor([[[0, 0, 1], [.5, .5, 0], [0, 0, 1]]], dtype=torch.float32)[None]
    # A1' = (A1 + I) / 2 = [[.75, .25, 0], [0, 1, 0], [.1, .1, .8]]; A2' = [[.5, 0, .5], [.25, .75, 0], [0, 0, 1]]
    # R = A2' A1': row 0 = .5 [.75, .25, 0] + .5 [.1, .1, .8] = [.425, .175, .4]
    #              row 1 = .25 [.75, .25, 0] + .75 [0, 1, 0] = [.1875, .8125, 0]; row 2 = [.1, .1, .8]
    expected = torch.tensor([[.425, .175, .4], [.1875, .8125, 0], [.1, .1, .8]])
    rollout = attention_rollout([a1.float(), a2])
    assert torch.allclose(rollout[0], expected, atol=1e-6)
    assert torch.allclose(class_row(rollout, prefix=1), torch.tensor([[.175, .4]]), atol=1e-6)
    # residual 0: the plain product of the head-averaged attention, A2 A1
    assert torch.allclose(attention_rollout([a1.float(), a2], residual=0.0)[0], a2.mean(1)[0] @ a1.float().mean(1)[0])


def test_chefer_rule_on_hand_computed_blocks():
    # block 1, two heads with opposite gradients: (G * A)^+ per head, then the head mean (the mean first would
    # cancel to 0): head 1 [[.6, 0], [.15, .7]], head 2 [[0, .8], [0, 0]] -> Abar1 = [[.3, .4], [.075, .35]]
    a = torch.tensor([[.6, .4], [.3, .7]])
    g = torch.tensor([[1.0, -2.0], [.5, 1.0]])
    att1, grad1 = torch.stack([a, a])[None], torch.stack([g, -g])[None]
    # block 2, one head: Abar2 = (G2 * A2)^+ = [[1, 1], [0, 0]]
    att2, grad2 = torch.full((1, 1, 2, 2), 0.5), torch.tensor([[[[2.0, 2.0], [0.0, 0.0]]]])
    # R1 = I + Abar1 = [[1.3, .4], [.075, 1.35]]; R2 = R1 + Abar2 R1 = R1 + [[1.375, 1.75], [0, 0]]
    expected = torch.tensor([[2.675, 2.15], [.075, 1.35]])
    assert torch.allclose(attention_relevance([att1, att2], [grad1, grad2])[0], expected, atol=1e-6)


# --------------------------------------------------------------------------------------------- tiny transformers


def tiny(arch: str, size: int = 16, patch: int = 8, classes: int = 3, depth: int = 2) -> Model:
    with seeded(0):
        net = timm.create_model(arch, pretrained=False, img_size=size, patch_size=patch, num_classes=classes,
                                embed_dim=16, depth=depth, num_heads=2, mlp_ratio=2.0)
    return Model(net, spec=f"test:{arch}", mean=(0.5,) * 3, std=(0.25,) * 3, input_size=(size, size),
                 class_names=[f"c{i}" for i in range(classes)], cam_layer=f"blocks.{depth - 1}.norm1",
                 label_space="test", default_dataset="none", weights={"tag": "test"}).eval()


def attention_by_hand(model: Model, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits and per-block attention weights, recomputed from the blocks' weights (no hooks)."""
    net = model.net
    t = net.norm_pre(net.patch_drop(net._pos_embed(net.patch_embed(model.normalize(images)))))
    attentions = []
    for blk in net.blocks:
        y = blk.norm1(t)
        b, n, c = y.shape
        heads = blk.attn.num_heads
        q, k, v = blk.attn.qkv(y).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-2, -1) * (c // heads) ** -0.5, dim=-1)
        attentions.append(a)
        t = t + blk.attn.proj((a @ v).transpose(1, 2).reshape(b, n, c))
        t = t + blk.mlp(blk.norm2(t))
    return net.forward_head(net.norm(t)), attentions


def grid_maps(rows: np.ndarray, grid: int, size: int) -> torch.Tensor:
    maps = torch.as_tensor(rows, dtype=torch.float32).reshape(-1, 1, grid, grid)
    return F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False)[:, 0]


@pytest.mark.parametrize("arch,prefix", [("vit_tiny_patch16_224", 1), ("deit_tiny_distilled_patch16_224", 2)])
def test_methods_match_references_from_the_papers(arch, prefix):
    model = tiny(arch)
    torch.manual_seed(0)
    x, targets = torch.rand(2, 3, 16, 16), torch.tensor([0, 2])
    x.requires_grad_(True)
    logits, attentions = attention_by_hand(model, x)
    assert torch.allclose(logits, model(x), atol=1e-5)  # the hand forward is the model's
    grads = torch.autograd.grad(logits[torch.arange(2), targets].sum(), attentions)
    att = [a.detach().double().numpy() for a in attentions]
    grd = [g.double().numpy() for g in grads]
    n = att[0].shape[-1]
    roll_rows, chefer_rows = [], []
    for i in range(2):
        # Abar & Zuidema: per block, mean over heads, 0.5 A + 0.5 I, rows renormalised; R = A'_2 A'_1
        rollout = np.eye(n)
        # Chefer et al. 2021 eq. 5-6: R = I; per block R += E_h[(grad * A)^+] R
        relevance = np.eye(n)
        for a, g in zip(att, grd):
            mixed = 0.5 * a[i].mean(axis=0) + 0.5 * np.eye(n)
            mixed /= mixed.sum(axis=1, keepdims=True)
            rollout = mixed @ rollout
            relevance = relevance + np.maximum(g[i] * a[i], 0).mean(axis=0) @ relevance
        roll_rows.append(rollout[0, prefix:])  # the class token's row over the 2 x 2 patches
        chefer_rows.append(relevance[0, prefix:])
    x = x.detach()
    ours_roll = ib.load_method("attention_rollout")(model, x, targets)
    ours_chefer = ib.load_method("transformer_attribution")(model, x, targets)
    assert torch.allclose(ours_roll, grid_maps(np.stack(roll_rows), 2, 16), atol=1e-5)
    assert torch.allclose(ours_chefer, grid_maps(np.stack(chefer_rows), 2, 16), rtol=1e-4, atol=1e-7)
    assert float(ours_chefer.std()) > 0


def test_fused_attention_is_switched_off_while_explaining_and_restored():
    model = tiny("vit_tiny_patch16_224")
    x, t = torch.rand(1, 3, 16, 16), torch.tensor([1])
    for blk in model.net.blocks:
        blk.attn.fused_attn = False
    unfused = [ib.load_method(m)(model, x, t) for m in ("attention_rollout", "transformer_attribution")]
    for blk in model.net.blocks:
        blk.attn.fused_attn = True
    fused = [ib.load_method(m)(model, x, t) for m in ("attention_rollout", "transformer_attribution")]
    assert all(blk.attn.fused_attn is True for blk in model.net.blocks)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(fused, unfused))
    with pytest.raises(RuntimeError), capture_attention(model.net):  # restored also when the body raises
        raise RuntimeError("boom")
    assert all(blk.attn.fused_attn is True for blk in model.net.blocks)
    assert not any(blk.attn.attn_drop._forward_hooks for blk in model.net.blocks)


def test_rollout_reads_the_mean_of_patch_rows_for_an_average_pooled_model():
    with seeded(0):
        net = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=8, num_classes=3,
                                embed_dim=16, depth=2, num_heads=2, class_token=False, global_pool="avg")
    model = Model(net, spec="test:avg", mean=(0.5,) * 3, std=(0.25,) * 3, input_size=(16, 16),
                  class_names=["a", "b", "c"], cam_layer="blocks.1", label_space="test", default_dataset="none",
                  weights={}).eval()
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad(), capture_attention(net, detach=True) as weights:
        model(x)
    expected = attention_rollout(weights).mean(dim=1)  # no prefix: every token is a patch the pool averages
    maps = ib.load_method("attention_rollout")(model, x, torch.tensor([0]))
    assert torch.allclose(maps, grid_maps(expected.numpy(), 2, 16), atol=1e-6)


@pytest.mark.parametrize("method", ["attention_rollout", "transformer_attribution"])
def test_not_applicable_to_cnns_and_windowed_attention(method):
    cnn = ib.load_model("shapes:cnn")
    with pytest.raises(NotApplicable, match="no ViT-style self-attention"):
        ib.load_method(method)(cnn, torch.rand(1, 3, *cnn.input_size), torch.tensor([0]))
    from interpbench.models.timm_source import wrap_timm

    with seeded(0):
        swin = wrap_timm(timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=32,
                                           window_size=2, depths=(1, 1), num_heads=(1, 2), embed_dim=8,
                                           num_classes=2), "timm:swin@random", {})
    with pytest.raises(NotApplicable, match="windowed"):
        ib.load_method(method)(swin, torch.rand(1, 3, 32, 32), torch.tensor([0]))


# --------------------------------------------------------------------------------------------- conformance


def test_target_sensitivity_rollout_is_class_agnostic_attribution_is_not():
    from interpbench.testing.methods import (
        ORACLE_REGIONS,
        ORACLE_SIZE,
        check_method,
        region_masks,
    )

    model = tiny("vit_tiny_patch16_224", size=32, patch=4, classes=2)
    # the target checks run on a transformer standing in for the oracle (regions attached so the checks can run);
    # its random weights give no region-bound evidence, so only target sensitivity is asserted
    stand_in = tiny("vit_tiny_patch16_224", size=ORACLE_SIZE, patch=4, classes=len(ORACLE_REGIONS))
    stand_in.regions, stand_in.region_masks = ORACLE_REGIONS, region_masks(ORACLE_SIZE, ORACLE_REGIONS)
    statuses = {}
    for name in ("attention_rollout", "transformer_attribution"):
        report = check_method(name, model=model, oracle=stand_in)
        statuses[name] = {r.name: (r.status, r.message) for r in report.results}
        general = ("contract", "output", "inputs_unchanged", "model_unchanged", "batch_independence", "determinism",
                   "invalid_target")
        assert all(statuses[name][c][0] == "passed" for c in general), str(report)
    status, message = statuses["attention_rollout"]["target_sensitivity"]
    assert status == "not_applicable" and "expected failure" in message and "differ by only 0" in message
    assert statuses["transformer_attribution"]["target_sensitivity"][0] == "passed"
