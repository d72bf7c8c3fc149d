"""Zero-shot segmentation data at run time: class splits, word embeddings, the loader, the sampler and the stream."""
from .embeddings import build_embedding_tables, load_word_embeddings
from .loader import ImageFiles, Original, ZeroShotSegmentation, collate_test
from .sampler import EpochPermutationSampler
from .splits import ClassSplits, load_class_splits, load_split_list, read_class_names

__all__ = [
    'ClassSplits', 'load_class_splits', 'load_split_list', 'read_class_names', 'load_word_embeddings',
    'build_embedding_tables', 'ZeroShotSegmentation', 'EpochPermutationSampler', 'ImageFiles', 'Original',
    'collate_test',
]
