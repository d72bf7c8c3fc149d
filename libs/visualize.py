"""Colour label maps, draw a grid of input / ground truth / predictions with a seen/unseen legend, and one
prediction blended into its image with a legend (the pictures of --save_colour and tools/predict.py). The one
palette of every tool is `label_palette`.

Everything here works on OpenCV-style images: uint8 (H, W, 3) in **BGR** order. Label maps hold raw label
ids (0 = background, 255 = void/ignored).
"""
from pathlib import Path

import cv2
import numpy as np

from libs.datasets.splits import VOID_LABEL as VOID
from models.ops import nearest_resize

PAD = 6                 # gap between cells and around the grid, pixels
TITLE_H = 24            # column-title strip above the grid
ROW_TITLE_H = 16        # strip above each row when row titles are given
LEGEND_W = 230          # legend panel on the right
LEGEND_LINE_H = 18      # one legend entry
SWATCH = 12             # legend colour square
FONT = cv2.FONT_HERSHEY_SIMPLEX
TEXT = (20, 20, 20)
WHITE = (255, 255, 255)


def label_palette():
    """(256, 3) uint8 BGR colours for raw ids: the PASCAL VOC colour map (0 black), with 255 (void) white."""
    palette = np.zeros((256, 3), np.uint8)
    for idx in range(256):
        rgb = [0, 0, 0]
        value = idx
        for shift in range(7, -1, -1):
            for ch in range(3):
                rgb[ch] |= ((value >> ch) & 1) << shift
            value >>= 3
        palette[idx] = rgb[::-1]
    palette[VOID] = WHITE
    return palette


def colorize(labels, palette=None):
    """Label map (H, W) of ids in 0..255 -> (H, W, 3) uint8 BGR image."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f'colorize: expected a (H, W) label map, got shape {labels.shape}')
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f'colorize: label ids must lie in 0..255, got {labels.min()}..{labels.max()}')
    palette = label_palette() if palette is None else np.asarray(palette, np.uint8)
    if palette.shape != (256, 3):
        raise ValueError(f'colorize: expected a (256, 3) palette, got shape {palette.shape}')
    return palette[labels.astype(np.intp)]


def mask_unevaluated(pred, gt, ignored=(0, VOID)):
    """Copy the ground truth into `pred` wherever the ground truth is not evaluated (background, void).

    pred, gt: (H, W) raw ids of the same size. The method never predicts background, so unmasked
    predictions paint the whole background; masking shows only what the metrics score.
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f'mask_unevaluated: prediction {pred.shape} and ground truth {gt.shape} differ in size')
    out = pred.copy()
    keep = np.isin(gt, ignored)
    out[keep] = gt[keep]
    return out


def grid_layout(n_rows, n_cols, cell_hw, n_legend_lines, row_titles=False):
    """Geometry of the grid: {'size': (H, W), 'cells': [[(y, x) of each cell]], 'legend_xy': (x, y)}."""
    cell_h, cell_w = cell_hw
    row_h = (ROW_TITLE_H if row_titles else 0) + cell_h + PAD
    grid_w = PAD + n_cols * (cell_w + PAD)
    grid_h = TITLE_H + n_rows * row_h + PAD
    legend_h = PAD + (n_legend_lines + 1) * LEGEND_LINE_H + PAD
    cells = []
    for r in range(n_rows):
        y = TITLE_H + r * row_h + (ROW_TITLE_H if row_titles else 0)
        cells.append([(y, PAD + c * (cell_w + PAD)) for c in range(n_cols)])
    return {'size': (max(grid_h, legend_h), grid_w + LEGEND_W), 'cells': cells, 'legend_xy': (grid_w, PAD)}


def _legend_lines(present, class_names, seen_ids, unseen_ids, masked, other_title='other', not_scored=True):
    """[(text, colour id or None)] for the legend: a seen block then an unseen block, present classes only; ids
    in neither list under `other_title`; with `not_scored` the background and void entries of a label grid,
    otherwise a void entry only when void is present (a prediction of no class)."""
    lines = []
    seen = [c for c in seen_ids if c in present]
    unseen = [c for c in unseen_ids if c in present]
    if seen:
        lines.append(('seen classes', None))
        lines += [(class_names[c], c) for c in seen]
    if unseen:
        lines.append(('unseen classes (no labels)', None))
        lines += [(f'{class_names[c]} (unseen)', c) for c in unseen]
    others = sorted(c for c in present if c not in seen_ids and c not in unseen_ids and c not in (0, VOID))
    if others:
        lines.append((other_title, None))
        lines += [(class_names[c] if c < len(class_names) else str(c), c) for c in others]
    if not_scored:
        lines.append(('not scored', None))
        lines.append(('background' + (' (masked)' if masked else ''), 0))
        lines.append(('void / ignored', VOID))
    elif VOID in present:
        lines.append(('no class (void)', VOID))
    return lines


def _draw_legend(canvas, legend, lx, ly, palette, heading='legend'):
    cv2.putText(canvas, heading, (lx, ly + LEGEND_LINE_H - 5), FONT, 0.5, TEXT, 1, cv2.LINE_AA)
    for i, (text, cid) in enumerate(legend, start=1):
        y = ly + i * LEGEND_LINE_H
        if cid is None:
            cv2.putText(canvas, text, (lx, y + LEGEND_LINE_H - 5), FONT, 0.42, TEXT, 1, cv2.LINE_AA)
            continue
        sy = y + (LEGEND_LINE_H - SWATCH) // 2
        canvas[sy:sy + SWATCH, lx + 8:lx + 8 + SWATCH] = palette[cid]
        cv2.rectangle(canvas, (lx + 8, sy), (lx + 8 + SWATCH - 1, sy + SWATCH - 1), (120, 120, 120), 1)
        cv2.putText(canvas, text, (lx + 8 + SWATCH + 6, y + LEGEND_LINE_H - 5), FONT, 0.42, TEXT, 1,
                    cv2.LINE_AA)


def blend(image, labels, alpha=0.5, palette=None):
    """The image (H, W, 3) uint8 BGR with each labelled pixel mixed with its class colour: (1 - alpha) * image
    + alpha * colour; void (255) pixels keep the image. labels: (H, W) ids, resized by nearest neighbour to the
    image when their size differs (e.g. a prediction at the metric resolution)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f'blend: expected a (H, W, 3) uint8 image, got shape {image.shape} dtype {image.dtype}')
    if not 0 <= alpha <= 1:
        raise ValueError(f'blend: alpha must lie in [0, 1], got {alpha}')
    labels = nearest_resize(np.asarray(labels), image.shape[:2])
    colours = colorize(labels, palette).astype(np.float32)
    mixed = (1.0 - alpha) * image.astype(np.float32) + alpha * colours
    out = np.where((labels == VOID)[..., None], image.astype(np.float32), mixed)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def draw_overlay(image, labels, class_names, seen_ids, unseen_ids, alpha=0.5, min_side=256,
                 other_title='other classes', heading='prediction', with_input=True):
    """One picture of a prediction: the image (with `with_input`), the image with the class colours blended in
    (`blend`) beside it, and a legend on the right listing the classes present, seen and unseen apart (unseen
    marked), ids in neither list under `other_title`, and void (no class) when present.

    image: (H, W, 3) uint8 BGR; labels: (h, w) ids of `class_names` (raw ids), any size. An image whose longer
    side is below `min_side` is enlarged by an integer factor (nearest neighbour) so the legend fits beside it.
    Returns the (H', W', 3) uint8 BGR canvas: panels at x = PAD and (with the input) x = 2 * PAD + width.
    """
    palette = label_palette()
    panels = [np.asarray(image, np.uint8)] if with_input else []
    panels.append(blend(image, labels, alpha, palette))
    h, w = panels[0].shape[:2]
    factor = max(1, -(-int(min_side) // max(h, w)))
    if factor > 1:
        panels = [cv2.resize(p, (w * factor, h * factor), interpolation=cv2.INTER_NEAREST) for p in panels]
    present = {int(v) for v in np.unique(np.asarray(labels))}
    legend = _legend_lines(present, class_names, seen_ids, unseen_ids, False, other_title, not_scored=False)
    legend_h = PAD + (len(legend) + 1) * LEGEND_LINE_H + PAD
    oh, ow = panels[0].shape[:2]
    width = PAD + len(panels) * (ow + PAD)
    canvas = np.full((max(oh + 2 * PAD, legend_h), width + LEGEND_W, 3), 255, np.uint8)
    for i, panel in enumerate(panels):
        x = PAD + i * (ow + PAD)
        canvas[PAD:PAD + oh, x:x + ow] = panel
    _draw_legend(canvas, legend, width, PAD, palette, heading)
    return canvas


def write_png(path, image):
    """cv2.imwrite with the folder created and an error naming the file when it fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.asarray(image)):
        raise OSError(f'could not write {path}')


def draw_prediction_grid(rows, column_titles, class_names, seen_ids, unseen_ids, out_path, scale=4,
                         row_titles=None, masked=False):
    """Write a PNG grid: one row per test image, columns input / ground truth / predictions.

    rows: list of sequences [image (H, W, 3) uint8 BGR, label map, label map, ...]; label maps are raw ids of
      any size (e.g. predictions at the metric resolution) and are resized by nearest neighbour to the cell.
    column_titles: one title per column. class_names: name per raw id. seen_ids / unseen_ids: raw ids.
    scale: cells are the first row's image size times `scale`. row_titles: optional text above each row.
    masked: only changes the legend text (say so when predictions were masked with `mask_unevaluated`).
    Returns the layout dict of `grid_layout` (size and cell positions), for callers and tests.
    """
    if not rows:
        raise ValueError('draw_prediction_grid: no rows to draw')
    n_cols = len(column_titles)
    for i, row in enumerate(rows):
        if len(row) != n_cols:
            raise ValueError(f'draw_prediction_grid: row {i} has {len(row)} entries, expected {n_cols} '
                             f'(one per column title)')
        if np.asarray(row[0]).ndim != 3 or np.asarray(row[0]).shape[2] != 3:
            raise ValueError(f'draw_prediction_grid: row {i} must start with a (H, W, 3) image, '
                             f'got shape {np.asarray(row[0]).shape}')
    if row_titles is not None and len(row_titles) != len(rows):
        raise ValueError(f'draw_prediction_grid: {len(row_titles)} row titles for {len(rows)} rows')
    if int(scale) != scale or scale < 1:
        raise ValueError(f'draw_prediction_grid: scale must be a positive integer, got {scale!r}')
    img_h, img_w = np.asarray(rows[0][0]).shape[:2]
    cell_h, cell_w = img_h * int(scale), img_w * int(scale)

    present = set()
    for row in rows:
        for labels in row[1:]:
            present.update(int(v) for v in np.unique(np.asarray(labels)))
    legend = _legend_lines(present, class_names, seen_ids, unseen_ids, masked)
    layout = grid_layout(len(rows), n_cols, (cell_h, cell_w), len(legend), row_titles is not None)
    canvas = np.full(layout['size'] + (3,), 255, np.uint8)
    palette = label_palette()

    for c, title in enumerate(column_titles):
        x = layout['cells'][0][c][1]
        cv2.putText(canvas, str(title), (x + 2, TITLE_H - 8), FONT, 0.5, TEXT, 1, cv2.LINE_AA)
    for r, row in enumerate(rows):
        if row_titles is not None:
            y, x = layout['cells'][r][0]
            cv2.putText(canvas, str(row_titles[r]), (x + 2, y - 4), FONT, 0.4, TEXT, 1, cv2.LINE_AA)
        for c, item in enumerate(row):
            y, x = layout['cells'][r][c]
            if c == 0:
                tile = cv2.resize(np.asarray(item, np.uint8), (cell_w, cell_h), interpolation=cv2.INTER_NEAREST)
            else:
                tile = colorize(nearest_resize(np.asarray(item), (cell_h, cell_w)), palette)
            canvas[y:y + cell_h, x:x + cell_w] = tile

    lx, ly = layout['legend_xy']
    _draw_legend(canvas, legend, lx, ly, palette)
    write_png(out_path, canvas)
    return layout
