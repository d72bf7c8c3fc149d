"""Scoring classes a model was not trained on, by their word embeddings (tools/predict.py --class_names
--word_vectors; docs/predict.md).

What that can honestly mean depends on how a method's classifier uses embeddings:
* Projection methods (SPNet): a pixel's score for a class is its feature projected onto the class embedding, so
  any embedding is scored directly, without training. A model that implements
  `predict_embeddings(images, embeddings (K, E)) -> logits (N, K, h, w)` is used as it is.
* Generative methods (CaGNet): the classifier has one fixed output channel per training class; a class embedding
  only reaches it through the generator. A new class set gets a new classifier head trained as CaGNet's step 2
  trains its classifier (docs/method.md §3.9): on features that the trained generator makes from the classes'
  word embeddings and noise latent codes, and on nothing else (`retrain_classifier`). The backbone, the
  contextual module and the generator stay as trained.
* Any other model: a ValueError that says so.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn

from libs.losses import classification_loss
from libs.optimizers import make_optimizer
from models.cagnet import CaGNet
from models.classifier import Classifier
from models.initialization import init_weights


@dataclass(frozen=True)
class HeadTraining:
    """The short step 2 of a new classifier head: iterations of `pixels` generated features each, with the
    classes drawn uniformly, optimizer `optimizer` at `lr` (the config's dis_opt), seeded by `seed`."""
    iterations: int = 200
    pixels: int = 8 * 47 * 47           # N*h*w of a VOC step-1 batch: what step 2 generates per iteration
    optimizer: str = "adam"
    lr: float = 2.5e-4
    weight_decay: float = 5e-4
    seed: int = 0


class _NewHead(nn.Module):
    """The model's own `predict` with its classifier swapped for `head` during the call."""

    def __init__(self, model: CaGNet, head: Classifier):
        super().__init__()
        self.model, self.head = model, head

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        trained = self.model.dis
        self.model.dis = self.head
        try:
            return self.model.predict(images)
        finally:
            self.model.dis = trained


def retrain_classifier(model: CaGNet, embeddings: torch.Tensor, known: Sequence[Optional[int]],
                       settings: HeadTraining = HeadTraining(), progress=None) -> tuple:
    """A classifier head for K classes given by their embeddings (K, E), trained on generated features only.

    known: per new class, the test id of the same class in the model (its trained logit row and bias start the
    new row), or None (a freshly He-initialised row). The trunk and the real/fake head start from the trained
    classifier. Each iteration draws `settings.pixels` class labels uniformly, generates their features with the
    trained generator in training mode (dropout on, as in step 2) from the embeddings and N(0, I) latent codes,
    and takes one optimizer step on the cross-entropy. Returns (head in eval mode, its accuracy on one more batch
    of generated features: how well the new classes are told apart in the generator's feature space).
    """
    if embeddings.ndim != 2 or embeddings.shape[1] != model.Em_all.weight.shape[1]:
        raise ValueError(f"the class embeddings are {tuple(embeddings.shape)} but the model's generator takes "
                         f"{model.Em_all.weight.shape[1]}-d embeddings")
    if len(known) != embeddings.shape[0]:
        raise ValueError(f"known has {len(known)} entries for {embeddings.shape[0]} classes")
    device = model.Em_all.weight.device
    trained = model.dis
    k = embeddings.shape[0]
    torch.manual_seed(settings.seed)
    head = Classifier(trained.fc.conv.in_channels, trained.fc.conv.out_channels, k, trained.fc.dropout)
    init_weights(head, "kaiming")
    head.fc.load_state_dict(trained.fc.state_dict())
    head.pred.load_state_dict(trained.pred.state_dict())
    with torch.no_grad():
        for row, test_id in enumerate(known):
            if test_id is not None:
                head.cls.weight[row] = trained.cls.weight[test_id]
                head.cls.bias[row] = trained.cls.bias[test_id]
    head.to(device)
    embeddings = embeddings.to(device=device, dtype=torch.float32)
    optimizer = make_optimizer(settings.optimizer, [{"params": list(head.parameters())}], settings.lr,
                               settings.weight_decay)
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    was_training = model.gen.training
    model.gen.train()

    def generated():
        labels = torch.randint(0, k, (settings.pixels,), device=device, generator=generator)
        noise = torch.randn(settings.pixels, model.latent_dim, device=device, generator=generator)
        with torch.no_grad():
            return model.gen(embeddings[labels], noise), labels

    head.train()
    steps = range(settings.iterations)
    for _ in (progress(steps) if progress else steps):
        fake, labels = generated()
        loss, _ = classification_loss(head.logits(fake), labels, ignore_index=-1)   # every pixel counts
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    head.eval()
    fake, labels = generated()
    with torch.no_grad():
        accuracy = float((head.logits(fake).argmax(1) == labels).float().mean())
    model.gen.train(was_training)
    return head, accuracy


def embedding_predictor(model, embeddings: torch.Tensor, known: Sequence[Optional[int]],
                        settings: HeadTraining = HeadTraining(), progress=None) -> tuple:
    """(an object with `predict(images) -> logits (N, K, h, w)` for the K classes of `embeddings`, a note on how
    they are scored); ValueError for a model that cannot score classes by their embeddings."""
    if hasattr(model, "predict_embeddings"):
        table = embeddings.to(next(model.parameters()).device)

        class _Projection:
            def predict(self, images):
                return model.predict_embeddings(images, table)
        return _Projection(), "scored directly by projection onto their embeddings"
    if isinstance(model, CaGNet):
        head, accuracy = retrain_classifier(model, embeddings, known, settings, progress)
        return _NewHead(model, head), (f"a new classifier head trained for {settings.iterations} iterations on "
                                       f"generated features (accuracy on fresh generated features {accuracy:.3f})")
    raise ValueError(f"{type(model).__name__} cannot score classes by word embeddings: its classifier has fixed "
                     "output channels and it has neither a generator to train a new head on (as CaGNet) nor a "
                     "projection onto class embeddings (as SPNet, `predict_embeddings`); use --classes to choose "
                     "among its own classes")

