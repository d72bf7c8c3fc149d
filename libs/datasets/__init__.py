"""Zero-shot segmentation data: class splits, word embeddings, the loader and a resumable sampler."""
from .embeddings import build_embedding_tables, build_word_vectors, load_word_embeddings
from .loader import ZeroShotSegmentation
from .sampler import EpochPermutationSampler
from .splits import (ClassSplits, build_split_list, load_class_splits, load_split_list, read_class_names,
                     save_split_list, verify_split_list)

__all__ = [
    'ClassSplits', 'load_class_splits', 'load_split_list', 'read_class_names', 'build_split_list',
    'save_split_list', 'verify_split_list', 'load_word_embeddings', 'build_embedding_tables', 'build_word_vectors',
    'ZeroShotSegmentation', 'EpochPermutationSampler',
]
