"""The paper's table from --val result JSONs: rows = methods, columns hIoU / mIoU / pixel acc. / mean acc. /
S-mIoU / U-mIoU (fractions, 4 decimals), one table per dataset; optionally beside the paper's numbers.

    python -m tools.paper_table Results/voc12/spnet/spnet.json Results/voc12/spnet/spnet_c.json \\
        Results/voc12/0/results_val_voc12_ourbest.json --paper voc12 --markdown table.md --csv table.csv

Row labels come from what each JSON carries (libs/engine/run.py writes it): the method (CaGNet, SPNet, ZS3Net),
"-c" for SPNet with calibration > 0 (SPNet-c), "+ST" when the checkpoint was written by --schedule st or st_mixed.
Two JSONs with the same label are told apart by their eval_mode / calibration / file name. --paper DATASET adds
the paper's row for every label it has (CaGNet's README table for CaGNet(+ST), baselines-spec §4 for the
baselines) and the difference this code - paper.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from typing import Dict, List, Optional, Sequence

if not __package__:  # `python tools/<name>.py`: the repository root on the path, as `python -m tools.<name>` has it
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools import run_cli

COLUMNS = (("hIoU", "hIoU"), ("mIoU", "mIoU"), ("pixel acc.", "pixel_acc"), ("mean acc.", "mean_acc"),
           ("S-mIoU", "S-mIoU"), ("U-mIoU", "U-mIoU"))
METHOD_NAMES = {"cagnet": "CaGNet", "spnet": "SPNet", "zs3net": "ZS3Net"}
SELF_TRAINING_SCHEDULES = ("st", "st_mixed")
ROW_ORDER = ("SPNet", "SPNet-c", "ZS3Net", "ZS3Net+ST", "CaGNet", "CaGNet+ST")

# The paper's tables (the original README): hIoU, mIoU, pixel acc., mean acc., S-mIoU, U-mIoU.
PAPER: Dict[str, Dict[str, tuple]] = {
    "voc12": {
        "SPNet": (0.0002, 0.5687, 0.7685, 0.7093, 0.7583, 0.0001),
        "SPNet-c": (0.2610, 0.6315, 0.7755, 0.7188, 0.7800, 0.1563),
        "ZS3Net": (0.2874, 0.6164, 0.7941, 0.7349, 0.7730, 0.1765),
        "ZS3Net+ST": (0.3328, 0.6302, 0.8095, 0.7382, 0.7802, 0.2115),
        "CaGNet": (0.3972, 0.6545, 0.8068, 0.7636, 0.7840, 0.2659),
        "CaGNet+ST": (0.4366, 0.6577, 0.8164, 0.7560, 0.7859, 0.3031),
    },
    "context": {
        "SPNet": (0.0, 0.2938, 0.5793, 0.4486, 0.3357, 0.0),
        "SPNet-c": (0.0718, 0.3079, 0.5790, 0.4488, 0.3514, 0.0400),
        "ZS3Net": (0.1246, 0.3010, 0.5710, 0.4442, 0.3304, 0.0768),
        "ZS3Net+ST": (0.1488, 0.3102, 0.5725, 0.4532, 0.3398, 0.0953),
        "CaGNet": (0.2061, 0.3347, 0.5924, 0.4900, 0.3610, 0.1442),
        "CaGNet+ST": (0.2252, 0.3352, 0.5961, 0.4962, 0.3644, 0.1630),
    },
    "cocostuff": {
        "SPNet": (0.0140, 0.3164, 0.5132, 0.4593, 0.3461, 0.0070),
        "SPNet-c": (0.1398, 0.3278, 0.5341, 0.4363, 0.3518, 0.0873),
        "ZS3Net": (0.1495, 0.3328, 0.5467, 0.4837, 0.3466, 0.0953),
        "ZS3Net+ST": (0.1620, 0.3367, 0.5631, 0.4862, 0.3489, 0.1055),
        "CaGNet": (0.1819, 0.3345, 0.5658, 0.4845, 0.3549, 0.1223),
        "CaGNet+ST": (0.1946, 0.3372, 0.5676, 0.4854, 0.3555, 0.1340),
    },
}


def row_label(record: dict) -> str:
    """The paper's row name of one --val record: SPNet, SPNet-c, ZS3Net, ZS3Net+ST, CaGNet, CaGNet+ST."""
    method = record.get("method") or "cagnet"       # JSONs written before the method record: CaGNet
    name = METHOD_NAMES.get(method, method)
    calibration = record.get("calibration") or 0.0
    if calibration > 0:
        name = f"{name}-c" if method == "spnet" else f"{name} (calibration {calibration:g})"
    if record.get("schedule") in SELF_TRAINING_SCHEDULES:
        name += "+ST"
    return name


def read_record(path: str) -> dict:
    try:
        with open(path) as handle:
            record = json.load(handle)
    except FileNotFoundError:
        raise FileNotFoundError(f"results JSON {path} does not exist") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not JSON ({error}); expected a --val results file") from None
    missing = [key for _, key in COLUMNS if key not in record]
    if not isinstance(record, dict) or missing:
        raise ValueError(f"{path} lacks the scores {missing}; expected a --val results JSON (train.py --val)")
    return {**record, "_file": path}


def _number(value) -> Optional[float]:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def table_rows(records: Sequence[dict], paper: Optional[str] = None) -> Dict[str, List[dict]]:
    """dataset -> rows {label, values (6 floats or None), kind: 'ours' | 'paper' | 'difference'} in the paper's
    row order; with `paper` each label the paper has is followed by its paper row and the difference."""
    by_dataset: Dict[str, List[dict]] = {}
    for record in records:
        by_dataset.setdefault(record.get("dataset", "?"), []).append(record)
    if paper is not None and paper not in by_dataset:
        by_dataset[paper] = []
    out = {}
    for dataset, recs in by_dataset.items():
        labelled = [(row_label(r), r) for r in recs]
        counts: Dict[str, int] = {}
        for label, _ in labelled:
            counts[label] = counts.get(label, 0) + 1
        rank = {name: i for i, name in enumerate(ROW_ORDER)}
        labelled.sort(key=lambda item: rank.get(item[0], len(ROW_ORDER)))
        numbers = PAPER.get(paper, {}) if paper == dataset else {}
        rows, shown = [], set()
        for label, record in labelled:
            values = [_number(record[key]) for _, key in COLUMNS]
            name = label
            if counts[label] > 1:
                name += f" [{record.get('eval_mode', '?')}, {os.path.basename(record['_file'])}]"
            rows.append({"label": name, "values": values, "kind": "ours"})
            if label in numbers and label not in shown:
                shown.add(label)
                reference = list(numbers[label])
                rows.append({"label": f"{label} (paper)", "values": reference, "kind": "paper"})
                rows.append({"label": f"{label} (this code - paper)", "kind": "difference",
                             "values": [None if v is None else v - p for v, p in zip(values, reference)]})
        for label in ROW_ORDER:
            if label in numbers and label not in shown:
                rows.append({"label": f"{label} (paper)", "values": list(numbers[label]), "kind": "paper"})
        out[dataset] = rows
    return out


def _cell(value: Optional[float], kind: str) -> str:
    if value is None:
        return "—"
    return f"{value:+.4f}" if kind == "difference" else f"{value:.4f}"


def markdown(tables: Dict[str, List[dict]]) -> str:
    parts = []
    for dataset, rows in tables.items():
        lines = [f"### {dataset}", "", "| method | " + " | ".join(c for c, _ in COLUMNS) + " |",
                 "|---|" + "---|" * len(COLUMNS)]
        for row in rows:
            lines.append(f"| {row['label']} | " + " | ".join(_cell(v, row["kind"]) for v in row["values"]) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def write_csv(path: str, tables: Dict[str, List[dict]]) -> None:
    with open(path, "w", newline="") as handle:
        out = csv.writer(handle, lineterminator="\n")
        out.writerow(["dataset", "method", "kind", *[key for _, key in COLUMNS]])
        for dataset, rows in tables.items():
            for row in rows:
                out.writerow([dataset, row["label"], row["kind"],
                              *["" if v is None else f"{v:.6f}" for v in row["values"]]])


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="*", metavar="RESULTS_JSON", help="--val results JSONs")
    parser.add_argument("--paper", choices=sorted(PAPER), default=None,
                        help="add the paper's rows of this dataset and the differences")
    parser.add_argument("--markdown", default=None, metavar="FILE", help="also write the table(s) as Markdown")
    parser.add_argument("--csv", default=None, metavar="FILE", help="also write the rows as CSV")
    args = parser.parse_args(argv)
    if not args.results and args.paper is None:
        parser.error("give RESULTS_JSON files, or --paper DATASET for the paper's numbers alone")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    tables = table_rows([read_record(p) for p in args.results], args.paper)
    text = markdown(tables)
    print(text, end="")
    if args.markdown:
        with open(args.markdown, "w") as handle:
            handle.write(text)
    if args.csv:
        write_csv(args.csv, tables)
    return 0


if __name__ == "__main__":
    run_cli(main)
