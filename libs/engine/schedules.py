"""The one table of training schedules (`--schedule`): what each name means, everywhere it matters.

Every other module asks this table instead of testing the schedule name: which config keys hold its learning
rates and iteration budget, where its outputs go (docs/method.md §5.1, the original's output layout), whether
step-1 and step-2 iterations alternate, and whether step-1 labels come from self-training pseudo-labels.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    """name: the --schedule value. suffix: of the config keys `ITER_MAX<SUFFIX>` and `<net>_opt.lr<suffix>`.
    model_dir / log_file / config_copy: inside Results/<dataset>/<experimentid>/. alternates: step-1 and step-2
    blocks (interval_step1 / interval_step2 / first). pseudo_labels: step 1 trains on self-training labels.
    shipped_config: the config file meant for it, as a pattern over the dataset name {ds} or the original release's
    short name {st} of the self-training configs (voc, context, coco), for error messages."""
    name: str
    suffix: str
    model_dir: str
    log_file: str
    config_copy: str
    alternates: bool
    pseudo_labels: bool
    shipped_config: str

    @property
    def iter_max_key(self) -> str:
        return f"ITER_MAX{self.suffix.upper()}"

    def lr_key(self, net: str) -> str:
        return f"{net}_opt.lr{self.suffix}"


SCHEDULES = {s.name: s for s in (
    Schedule("step1", "", "models", "logs.txt", "configs.yaml", alternates=False, pseudo_labels=False,
             shipped_config="{ds}.yaml"),
    Schedule("mixed", "_transfer", "models_transfer", "logs_transfer.txt", "configs_transfer.yaml",
             alternates=True, pseudo_labels=False, shipped_config="{ds}_finetune.yaml"),
    Schedule("st", "_st", "models_st", "logs_st.txt", "configs_st.yaml", alternates=False, pseudo_labels=True,
             shipped_config="configs_st_{st}.yaml"),
    Schedule("st_mixed", "_st_transfer", "models_st_transfer", "logs_st_transfer.txt", "configs_st_transfer.yaml",
             alternates=True, pseudo_labels=False, shipped_config="configs_st_transfer_{st}.yaml"),
)}
SCHEDULE_NAMES = tuple(SCHEDULES)
# Log and folder of `--val` runs, inside Results/<dataset>/ (the original appends every evaluation there).
TEST_LOG = "logs_test.txt"


def get_schedule(name: str) -> Schedule:
    if name not in SCHEDULES:
        raise ValueError(f"--schedule {name!r} is unknown; expected one of {', '.join(SCHEDULE_NAMES)}")
    return SCHEDULES[name]
