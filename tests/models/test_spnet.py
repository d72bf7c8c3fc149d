"""SPNet's model (baselines-spec §1.1): the projection score, the multi-scale max over projected scores, the
prediction over S+U classes and the CaGNet-compatible state-dict layout."""
import pytest
import torch
import torch.nn.functional as F

from libs.checkpoint import load_model_weights, ours_to_original, snapshot
from models.cagnet import build_cagnet
from models.spnet import build_spnet, project
from tests.conftest import TINY, tiny_embeddings

TINY_SPNET = dict(n_blocks=(1, 1, 1, 1), base_width=4, atrous_rates=(1, 2, 3, 4))


def tiny_spnet(dim=12, seed=0, num_seen=3, num_unseen=2):
    seen, all_rows = tiny_embeddings(num_seen, num_unseen, dim)
    torch.manual_seed(seed)
    return build_spnet(seen, all_rows, num_seen, **TINY_SPNET)


def test_projection_score_of_two_classes_by_hand():
    """score_c = h . e_c: no bias, no scale, h not normalised."""
    h = torch.tensor([2.0, -1.0, 0.5]).reshape(1, 3, 1, 1)
    e = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0]])
    scores = project(h, e)
    assert scores.shape == (1, 2, 1, 1)
    assert scores.flatten().tolist() == pytest.approx([2.0, 2.0 * 0.6 - 0.8])


def test_embeddings_are_normalised_buffers_and_training_scores_only_seen_classes():
    seen, all_rows = tiny_embeddings(3, 2, 12)
    model = build_spnet(3 * seen, 2 * all_rows, 3, **TINY_SPNET)
    assert torch.allclose(model.Em_all.weight.norm(dim=1), torch.ones(5))
    assert torch.allclose(model.seen_table().norm(dim=1), torch.ones(3))
    assert torch.equal(model.Em_vis.weight[3:], torch.zeros(253, 12))
    assert "Em_all.weight" in dict(model.named_buffers()) and not any("Em_" in n for n, _ in model.named_parameters())
    x = torch.randn(2, 3, 33, 33)
    assert all(s.shape[1] == 3 for s in model.train_scores(x))
    assert model.predict(x).shape == (2, 5, 5, 5)


def test_multi_scale_output_is_the_max_over_projected_scores():
    """[full, 0.5, 0.75, max]: max = pixel-wise max of the full scores and the bilinearly upsampled pyramid
    scores (SPNet msc.py), which is not the projection of the max over features (CaGNet's fusion)."""
    model = tiny_spnet().eval()
    x = torch.randn(1, 3, 41, 41)
    full, half, three_quarters, fused = model.train_scores(x)
    e = model.seen_table()
    deeplab = model.deeplab
    with torch.no_grad():
        maps = [project(deeplab(x), e)]
        for p in (0.5, 0.75):
            small = F.interpolate(x, size=(int(41 * p), int(41 * p)), mode="bilinear", align_corners=False)
            maps.append(project(deeplab(small), e))
        up = [maps[0]] + [F.interpolate(m, size=maps[0].shape[-2:], mode="bilinear", align_corners=False)
                          for m in maps[1:]]
        expected = torch.max(torch.max(up[0], up[1]), up[2])
    assert torch.allclose(full, maps[0], atol=1e-6)
    assert torch.allclose(half, maps[1], atol=1e-6) and torch.allclose(three_quarters, maps[2], atol=1e-6)
    assert torch.allclose(fused, expected, atol=1e-6)
    # the fused map is at least every scale's score, and strictly above the full scale somewhere
    assert (fused >= up[1] - 1e-6).all() and (fused > full + 1e-4).any()
    # predict = the fused map over all S+U classes
    with torch.no_grad():
        assert torch.allclose(model.predict(x)[:, :3], fused, atol=1e-6)


def test_state_dict_layout_is_cagnets_backbone():
    """Saved keys are CaGNet's original `back.scale.layer*` / `back.scale.aspp.*`: an SPNet checkpoint gives
    CaGNet its backbone (non-strict) and nothing else."""
    model = tiny_spnet(dim=16)
    saved = ours_to_original(model.state_dict())
    assert "back.scale.layer1.conv1.conv.weight" in saved and "back.scale.aspp.stages.c0.bias" in saved
    seen, all_rows = tiny_embeddings(3, 2, 16)
    model = build_spnet(seen, all_rows, 3, **TINY_SPNET)
    cagnet = build_cagnet(seen, all_rows, 6, **TINY)      # 16-d embeddings as the 16-d features (600 / 600)
    report = load_model_weights(cagnet, snapshot(model, 5, method="spnet"), "spnet.pth", strict=False)
    assert report.kind == "spnet checkpoint as init weights" and not report.unexpected
    assert all(k.startswith(("gen.", "dis.", "back.scale.context.")) for k in report.missing)
    assert torch.equal(cagnet.back.scale.backbone.aspp.stages.c1.weight, model.deeplab.aspp.stages.c1.weight)


def test_param_groups_cover_every_trained_weight_once():
    model = tiny_spnet()
    groups = model.param_groups()
    trained = [p for ps in groups.values() for p in ps]
    assert len({id(p) for p in trained}) == len(trained)
    assert {id(p) for p in model.parameters() if p.requires_grad} == {id(p) for p in trained}
    assert len(groups["aspp_weight"]) == len(groups["aspp_bias"]) == 4
