"""Palette, colourising, the prediction grid and its command-line tool."""

import cv2
import numpy as np
import pytest

from demo import data as demo_data
from libs import visualize
from tests.datagen import write_dataset
from tools import visualize_predictions

NAMES = ['background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow',
         'diningtable', 'dog', 'horse', 'motorbike', 'person', 'potted_plant', 'sheep', 'sofa', 'train', 'tv']
SEEN, UNSEEN = list(range(1, 16)), list(range(16, 21))


def test_palette_known_colours():
    pal = visualize.label_palette()
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    assert pal[0].tolist() == [0, 0, 0]
    assert pal[255].tolist() == [255, 255, 255]
    # VOC colour map, stored BGR: aeroplane RGB (128, 0, 0), person RGB (192, 128, 128), sheep RGB (128, 64, 0).
    assert pal[1].tolist() == [0, 0, 128]
    assert pal[15].tolist() == [128, 128, 192]
    assert pal[17].tolist() == [0, 64, 128]
    assert len({tuple(c) for c in pal[:21]}) == 21


def test_colorize_and_errors():
    labels = np.array([[0, 1], [17, 255]])
    img = visualize.colorize(labels)
    assert img.shape == (2, 2, 3) and img.dtype == np.uint8
    assert img[0, 1].tolist() == [0, 0, 128] and img[1, 1].tolist() == [255, 255, 255]
    with pytest.raises(ValueError, match='label map'):
        visualize.colorize(np.zeros((2, 2, 3), int))
    with pytest.raises(ValueError, match='0..255'):
        visualize.colorize(np.array([[300]]))


def test_mask_unevaluated():
    gt = np.array([[0, 3], [255, 17]])
    pred = np.array([[5, 4], [6, 17]])
    assert visualize.mask_unevaluated(pred, gt).tolist() == [[0, 4], [255, 17]]


def test_grid_size_cells_and_legend(tmp_path):
    h = w = 16
    image = np.full((h, w, 3), (10, 200, 30), np.uint8)
    gt = np.zeros((h, w), np.int64)
    gt[:, :8] = 1
    gt[:, 8:] = 17
    pred_low = np.array([[15, 15], [17, 17]])       # metric resolution: half the image
    rows = [[image, gt, pred_low], [image, gt, pred_low]]
    out = tmp_path / 'grid.png'
    layout = visualize.draw_prediction_grid(rows, ['input', 'ground truth', 'mixed'], NAMES, SEEN, UNSEEN, out,
                                            scale=4)
    canvas = cv2.imread(str(out), cv2.IMREAD_COLOR)
    cell = 16 * 4
    width = visualize.PAD + 3 * (cell + visualize.PAD) + visualize.LEGEND_W
    grid_h = visualize.TITLE_H + 2 * (cell + visualize.PAD) + visualize.PAD
    assert canvas.shape[1] == width and canvas.shape[0] >= grid_h
    assert canvas.shape[:2] == layout['size']
    pal = visualize.label_palette()
    y, x = layout['cells'][1][0]
    assert canvas[y + 5, x + 5].tolist() == [10, 200, 30]
    y, x = layout['cells'][1][1]
    assert canvas[y + 5, x + 5].tolist() == pal[1].tolist()
    assert canvas[y + 5, x + cell - 5].tolist() == pal[17].tolist()
    y, x = layout['cells'][0][2]
    assert canvas[y + 5, x + 5].tolist() == pal[15].tolist()            # pred upsampled by nearest
    assert canvas[y + cell - 5, x + 5].tolist() == pal[17].tolist()
    # Legend: a swatch for each class present (aeroplane, person, sheep) to the right of the grid.
    legend = canvas[:, width - visualize.LEGEND_W:]
    for cid in (1, 15, 17):
        assert np.all(legend == pal[cid], axis=-1).sum() >= (visualize.SWATCH - 2) ** 2
    assert not np.all(legend == pal[2], axis=-1).any()                 # bicycle absent: no swatch


def test_grid_rejects_ragged_rows(tmp_path):
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match='row 0'):
        visualize.draw_prediction_grid([[image, np.zeros((8, 8))]], ['input', 'gt', 'pred'], NAMES, SEEN, UNSEEN,
                                       tmp_path / 'x.png')


def test_choose_images_prefers_unseen():
    gts = {'a': np.array([[1, 2]]), 'b': np.array([[16, 3]]), 'c': np.array([[17, 18]]), 'd': np.array([[16]])}
    assert visualize_predictions.choose_images(gts, SEEN, UNSEEN, 3) == ['c', 'b', 'd']
    assert visualize_predictions.choose_images(gts, SEEN, UNSEEN, 9) == ['c', 'b', 'd', 'a']


def test_cli_writes_grid(tmp_path):
    root = tmp_path / 'demo'
    demo_data.generate_demo(root, n_train=20, n_test=20)
    pred_dirs = []
    for name, shift in (('step1', 0), ('mixed', 1)):
        folder = tmp_path / name
        folder.mkdir()
        for ann in (root / 'annotations' / 'val').glob('*.png'):
            gt = cv2.imread(str(ann), cv2.IMREAD_UNCHANGED)
            pred = cv2.resize(gt, (9, 9), interpolation=cv2.INTER_NEAREST)
            pred[(pred == 0) | (pred == 255)] = 15
            cv2.imwrite(str(folder / ann.name), np.minimum(pred + shift, 20).astype(np.uint8))
        pred_dirs += ['--pred', f'{name}={folder}']
    out = tmp_path / 'out' / 'pred.png'
    assert visualize_predictions.main(['--root', str(root), '--num', '3', '--out', str(out)] + pred_dirs) == 0
    canvas = cv2.imread(str(out), cv2.IMREAD_COLOR)
    assert canvas.shape[1] == visualize.PAD + 4 * (64 * 4 + visualize.PAD) + visualize.LEGEND_W
    assert canvas.shape[0] >= visualize.TITLE_H + 3 * (visualize.ROW_TITLE_H + 64 * 4 + visualize.PAD)
    with pytest.raises(FileNotFoundError, match='nope'):
        visualize_predictions.main(['--root', str(root), '--pred', f'x={tmp_path / "nope"}'])


def test_cli_reads_class_names_with_spaces(tmp_path):
    """COCO-Stuff names such as `traffic light` hold a space: the tool reads them with the loader's reader (its old
    copy split on any whitespace and refused the file)."""
    names = ['person', 'bicycle', 'traffic light', 'fire hydrant', 'wall-concrete', 'sky']
    toy = write_dataset(str(tmp_path), name='coco', num_classes=6, seen=(0, 1, 2), unseen=(4, 3),
                        n_train=1, n_test=2, class_names=names, subdirs=('train2017', 'val2017'))
    preds = tmp_path / 'pred'
    preds.mkdir()
    for _, stem in toy.test_entries:
        cv2.imwrite(str(preds / f'{stem}.png'), np.full((9, 9), 3, np.uint8))      # 'fire hydrant' everywhere
    out = tmp_path / 'grid.png'
    assert visualize_predictions.main(['--root', toy.root, '--split', 'val2017', '--num', '2', '--out', str(out),
                                       '--pred', f'model={preds}']) == 0
    assert cv2.imread(str(out)).shape[0] > 2 * 40
