"""ZS3Net's model (models/zs3net.py): GMMN shapes and init, feature range, prediction contract, parameter groups."""
import math

import torch

from models.backbone import feature_size
from models.zs3net import GMMN, build_zs3net
from tests.conftest import tiny_embeddings

TINY_ZS3 = dict(feat_dim=16, n_blocks=(1, 1, 1, 1), base_width=4, atrous_rates=(1, 2, 3, 4), noise_dim=8,
                gen_hidden=12, gen_dropout=0.5)


def tiny_zs3net(num_seen=3, num_unseen=2, seed=0, **overrides):
    torch.manual_seed(seed)
    seen, all_rows = tiny_embeddings(num_seen, num_unseen)
    return build_zs3net(seen, all_rows, num_seen, **{**TINY_ZS3, **overrides})


def test_gmmn_shapes_and_zs3_init():
    gen = GMMN(embed_dim=12, noise_dim=8, hidden_dim=16, out_dim=10, dropout=0.5)
    assert gen.fc1.weight.shape == (16, 20) and gen.fc2.weight.shape == (10, 16)
    for layer, (fan_out, fan_in) in ((gen.fc1, (16, 20)), (gen.fc2, (10, 16))):
        bound = math.sqrt(6.0 / (fan_in + fan_out))           # Xavier-uniform
        assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.5 * bound
        assert torch.all(layer.bias == 0.01)
    gen.eval()
    out = gen(torch.randn(5, 12), torch.rand(5, 8))
    assert out.shape == (5, 10)
    assert (out < 0).any() and (out > 1).any() or (out < 0).any()      # no output activation: not in (0, 1)
    # train mode: dropout 0.5 changes the output, eval mode does not
    gen.train()
    x, z = torch.randn(5, 12), torch.rand(5, 8)
    assert not torch.equal(gen(x, z), gen(x, z))


def test_noise_laws():
    model = tiny_zs3net()
    z = model.noise(1000, "cpu")
    assert z.shape == (1000, 8) and z.min() >= 0 and z.max() < 1       # U[0, 1) (ZS3's code)
    gauss = tiny_zs3net(noise="gaussian").noise(1000, "cpu")
    assert gauss.min() < 0


def test_features_in_unit_interval_and_predict_over_seen_and_unseen():
    model = tiny_zs3net().eval()
    images = torch.randn(2, 3, 33, 41)
    x = model.features(images)
    assert x.shape == (2, 16, feature_size(33), feature_size(41))
    assert x.min() > 0 and x.max() < 1                                   # x = sigmoid(h)
    logits = model.predict(images)
    assert logits.shape == (2, 5, feature_size(33), feature_size(41))   # S + U channels, no dead one
    expected = torch.einsum("nfhw,cf->nchw", x, model.cls.weight[:, :, 0, 0]) + model.cls.bias[None, :, None, None]
    assert torch.allclose(logits, expected, atol=1e-6)


def test_param_groups_cover_every_trained_parameter_once_and_keys_are_cagnets():
    model = tiny_zs3net()
    groups = model.param_groups()
    assert groups["contextual"] == []
    ids = [id(p) for g in groups.values() for p in g]
    assert len(ids) == len(set(ids))
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert set(ids) == trainable
    keys = list(model.state_dict())
    assert "back.scale.backbone.layer1.conv1.conv.weight" in keys and "back.scale.backbone.aspp.stages.c0.bias" in keys
    assert "cls.weight" in keys and "gen.fc1.weight" in keys and "Em_all.weight" in keys


def test_reset_classifier_draws_from_unit_interval():
    model = tiny_zs3net()
    model.reset_classifier()
    for t in (model.cls.weight, model.cls.bias):
        assert t.min() >= 0 and t.max() < 1 and t.std() > 0.1
