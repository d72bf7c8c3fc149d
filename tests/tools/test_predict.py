"""tools/predict.py: one's own images of any size and format, the model's classes, a chosen subset, and classes
scored by word vectors (a new CaGNet head trained on generated features); libs/engine/new_classes.py."""
import json
import os
import pickle

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from libs.checkpoint import atomic_save, snapshot
from libs.config import load_config
from libs.datasets import ZeroShotSegmentation, collate_test, load_class_splits, load_split_list
from libs.engine.evaluation import evaluate
from libs.engine.methods import get_method
from libs.engine.new_classes import HeadTraining, embedding_predictor, retrain_classifier
from libs.visualize import label_palette
from models.initialization import init_weights
from tests.datagen import write_dataset
from tests.e2e_config import write_tiny_config
from tools import predict


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A toy benchmark, a tiny config and a (He-initialised) checkpoint of its model."""
    tmp = tmp_path_factory.mktemp("predict")
    toy = write_dataset(str(tmp / "data"), n_train=2, n_test=3, image_size=[(40, 56), (60, 48), (33, 71)])
    config = write_tiny_config(str(tmp / "tiny.yaml"), "voc12", toy, str(tmp / "Results"))
    cfg = load_config(config)
    splits = load_class_splits(toy.datadir, toy.name)
    torch.manual_seed(3)
    model = get_method("cagnet").build_model(cfg, splits)
    init_weights(model, "kaiming")
    checkpoint = str(tmp / "model.pth")
    atomic_save(snapshot(model, 0), checkpoint)
    return dict(tmp=tmp, toy=toy, config=config, cfg=cfg, splits=splits, checkpoint=checkpoint)


def run_predict(trained, out, *inputs, extra=()):
    args = ["--config", trained["config"], "--checkpoint", trained["checkpoint"], "--out", str(out), "--device",
            "cpu", *[str(i) for i in inputs], *extra]
    assert predict.main(args) == 0
    return out


def test_test_images_get_the_labels_of_full_mode_evaluation(trained, tmp_path):
    toy, splits = trained["toy"], trained["splits"]
    out = run_predict(trained, tmp_path / "out", os.path.join(toy.root, "images", "val"), extra=["--shares"])
    model = get_method("cagnet").build_model(trained["cfg"], splits)
    from libs.checkpoint import load_model_weights
    load_model_weights(model, trained["checkpoint"])
    data = ZeroShotSegmentation(toy.root, load_split_list(toy.datadir, toy.name, "test"), splits, train=False,
                                base_size=65, originals=True)
    evaluate(model, torch.utils.data.DataLoader(data, batch_size=2, collate_fn=collate_test), splits,
             torch.device("cpu"), mode="full", predictions_dir=str(tmp_path / "val"))
    palette = label_palette()
    for _, stem in toy.test_entries:
        labels = np.array(Image.open(out / f"{stem}.png"))
        assert labels.shape == toy.labels[stem].shape
        assert np.array_equal(labels, np.array(Image.open(tmp_path / "val" / f"{stem}.png"))), stem
        colour = cv2.imread(str(out / "colour" / f"{stem}.png"), cv2.IMREAD_COLOR)
        assert np.array_equal(colour, palette[labels])
        assert cv2.imread(str(out / "overlay" / f"{stem}.png")) is not None
        record = json.load(open(out / "shares" / f"{stem}.json"))
        assert sum(record["shares"].values()) == pytest.approx(1.0)
        values, counts = np.unique(labels, return_counts=True)
        for value, count in zip(values, counts):
            name = "no class" if value == 255 else toy.class_names[value]
            assert record["shares"][name] == pytest.approx(count / labels.size)
    classes = json.load(open(out / "classes.json"))["classes"]
    assert [c["id"] for c in classes] == toy.seen + toy.unseen
    assert [c["group"] for c in classes] == ["seen"] * 3 + ["unseen"] * 2


def test_any_folder_of_images_of_any_size_and_format(trained, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(folder / "photo.jpg"), rng.integers(0, 255, (37, 91, 3), dtype=np.uint8))
    cv2.imwrite(str(folder / "grey.png"), rng.integers(0, 255, (120, 30), dtype=np.uint8))
    cv2.imwrite(str(folder / "alpha.png"), rng.integers(0, 255, (17, 17, 4), dtype=np.uint8))
    cv2.imwrite(str(folder / "scan.bmp"), rng.integers(0, 255, (64, 48, 3), dtype=np.uint8))
    (folder / "notes.txt").write_text("not an image")
    out = run_predict(trained, tmp_path / "out", folder, extra=["--classes", "class5,class1", "--batch_size", "3"])
    for name, size in (("photo", (37, 91)), ("grey", (120, 30)), ("alpha", (17, 17)), ("scan", (64, 48))):
        labels = np.array(Image.open(out / f"{name}.png"))
        assert labels.shape == size
        assert set(np.unique(labels)) <= {5, 1}                  # only the chosen classes
    assert not (out / "notes.png").exists()
    assert [c["name"] for c in json.load(open(out / "classes.json"))["classes"]] == ["class5", "class1"]


def test_unreadable_inputs_and_bad_options_are_clear_errors(trained, tmp_path):
    text = tmp_path / "a.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="a.txt: not an image OpenCV can read"):
        run_predict(trained, tmp_path / "out", text)
    broken = tmp_path / "broken.jpg"
    good = cv2.imencode(".jpg", np.zeros((40, 40, 3), np.uint8))[1].tobytes()
    broken.write_bytes(good[:30])
    with pytest.raises(ValueError, match="broken.jpg could not be read by OpenCV"):
        run_predict(trained, tmp_path / "out", broken)
    with pytest.raises(FileNotFoundError, match="missing.png: no such file"):
        run_predict(trained, tmp_path / "out", tmp_path / "missing.png")
    image = tmp_path / "x.png"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="'sky' is not one of the model's classes: class1, class2"):
        run_predict(trained, tmp_path / "out", image, extra=["--classes", "class1,sky"])
    (tmp_path / "sub").mkdir()
    cv2.imwrite(str(tmp_path / "sub" / "x.jpg"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="would both write x.png"):
        run_predict(trained, tmp_path / "out", image, tmp_path / "sub" / "x.jpg")


@pytest.fixture(scope="module")
def word_vectors(tmp_path_factory):
    """Tiny gensim models (300-d, a few words) for fastText and word2vec, and the .pkl pair of the same vectors."""
    from gensim.models import KeyedVectors
    folder = tmp_path_factory.mktemp("kv")
    words = ["class1", "zebra", "giraffe", "striped", "horse"]
    rng = np.random.default_rng(5)
    paths = {}
    for part in ("fasttext", "word2vec"):
        kv = KeyedVectors(vector_size=300)
        kv.add_vectors(words, rng.normal(size=(len(words), 300)).astype(np.float32))
        paths[part] = str(folder / f"{part}.kv")
        kv.save(paths[part])
        rows = np.stack([kv["class1"], kv["zebra"], (kv["striped"] + kv["horse"]) / 2]).astype(np.float64)
        with open(folder / f"{part}.pkl", "wb") as handle:
            pickle.dump(rows / np.linalg.norm(rows, axis=1, keepdims=True), handle)
        paths[f"{part}_pkl"] = str(folder / f"{part}.pkl")
    names = folder / "names.txt"
    names.write_text("0\tclass1\n1\tzebra\n2\tstriped horse\n")
    paths["names"] = str(names)
    return paths


def test_classes_named_by_word_vectors_get_a_new_head(trained, word_vectors, tmp_path):
    toy = trained["toy"]
    images = os.path.join(toy.root, "images", "val")
    args = ["--class_names", word_vectors["names"], "--head_iters", "30", "--shares"]
    out = run_predict(trained, tmp_path / "kv", images,
                      extra=[*args, "--word_vectors", word_vectors["fasttext"], word_vectors["word2vec"]])
    summary = json.load(open(out / "classes.json"))
    assert [(c["id"], c["name"], c["group"]) for c in summary["classes"]] == [
        (0, "class1", "seen"), (1, "zebra", "new"), (2, "striped horse", "new")]
    assert "new classifier head trained for 30 iterations" in summary["how"]
    for _, stem in toy.test_entries:
        labels = np.array(Image.open(out / f"{stem}.png"))
        assert labels.shape == toy.labels[stem].shape and set(np.unique(labels)) <= {0, 1, 2}
        assert sum(json.load(open(out / "shares" / f"{stem}.json"))["shares"].values()) == pytest.approx(1.0)
    # the .pkl pair of the same (unit-row) vectors gives the same embedding, hence the same head and labels
    pkl = run_predict(trained, tmp_path / "pkl", images,
                      extra=[*args, "--word_vectors", word_vectors["fasttext_pkl"], word_vectors["word2vec_pkl"]])
    for _, stem in toy.test_entries:
        assert np.array_equal(np.array(Image.open(pkl / f"{stem}.png")), np.array(Image.open(out / f"{stem}.png")))
    with pytest.raises(ValueError, match="fastnvec.*pass 2 file"):
        run_predict(trained, tmp_path / "x", images,
                    extra=["--class_names", word_vectors["names"], "--word_vectors", word_vectors["fasttext"]])
    with pytest.raises(ValueError, match="has 3 rows but --class_names names 2"):
        two = tmp_path / "two.txt"
        two.write_text("0\tclass1\n1\tzebra\n")
        run_predict(trained, tmp_path / "x", images, extra=["--class_names", str(two), "--word_vectors",
                                                            word_vectors["fasttext_pkl"], word_vectors["word2vec_pkl"]])


def test_the_new_head_learns_the_generated_features_of_the_new_classes(tiny_model):
    model = tiny_model().eval()
    # A generator that ignores its latent code (the noise columns of its first layer zeroed): the features of a
    # class then depend on its embedding only (and dropout), as a trained generator's largely do.
    with torch.no_grad():
        model.gen.mlp[0].conv.weight[:, 12:] = 0
    g = torch.Generator().manual_seed(1)
    embeddings = torch.nn.functional.normalize(torch.randn(4, 12, generator=g), dim=1)
    settings = HeadTraining(iterations=40, pixels=256, lr=3e-2, weight_decay=0.0, seed=0)
    dis_before = {k: v.clone() for k, v in model.dis.state_dict().items()}
    head, accuracy = retrain_classifier(model, embeddings, [0, None, None, None], settings)
    assert accuracy > 0.8                       # chance is 0.25: the classes are told apart from generated features
    assert all(torch.equal(v, model.dis.state_dict()[k]) for k, v in dis_before.items())   # model untouched
    untrained, _ = retrain_classifier(model, embeddings, [0, None, None, None],
                                      HeadTraining(iterations=1, pixels=16, lr=0.0, seed=0))
    assert torch.equal(untrained.cls.weight[0], model.dis.cls.weight[0])     # a known class starts from its row
    assert torch.equal(untrained.fc.conv.weight, model.dis.fc.conv.weight)
    # fresh generated features, as prediction would see them through the new head
    with torch.no_grad():
        labels = torch.arange(4).repeat_interleave(200)
        fake = model.gen.train()(embeddings[labels], torch.randn(800, model.latent_dim, generator=g))
        assert (head.logits(fake).argmax(1) == labels).float().mean() > 0.8
    predictor, note = embedding_predictor(model, embeddings, [0, None, None, None], settings)
    with torch.no_grad():
        logits = predictor.predict(torch.zeros(2, 3, 33, 33))
    assert logits.shape == (2, 4, 5, 5) and "new classifier head" in note
    assert model.dis.cls.weight.shape[0] == 6          # the model's own classifier is back in place


def test_projection_models_score_embeddings_directly_and_others_cannot():
    class Projection(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def predict_embeddings(self, images, embeddings):
            return torch.einsum("nchw,kc->nkhw", images, embeddings)

    embeddings = torch.eye(3)
    predictor, note = embedding_predictor(Projection(), embeddings, [None] * 3)
    images = torch.randn(1, 3, 4, 4)
    assert torch.equal(predictor.predict(images), images) and "projection" in note
    with pytest.raises(ValueError, match="cannot score classes by word embeddings"):
        embedding_predictor(torch.nn.Linear(2, 2), embeddings, [None] * 3)
