"""The steps of a campaign iteration as plain functions (no parsl): paths and small dicts in and out.

:mod:`ubmd.pipeline` wraps the ``*_task`` functions into parsl apps; the others run in the driver.
Every task writes its one artefact atomically, and every random choice is seeded from the
campaign seed and the task's place (iteration, member, explorer), so a resumed campaign
computes exactly what an uninterrupted one would. The functions live in the modules below;
this module is the one place the pipeline looks them up.
"""

from ubmd.campaign.common import resolve_device, task_seed
from ubmd.campaign.evaluation import report_task
from ubmd.campaign.exploring import explore_task, select_task, write_starts
from ubmd.campaign.frames import count_frames, read_frames, structure_key, write_frames
from ubmd.campaign.labels import (
    append_label,
    count_labels,
    import_labelled,
    label_task,
    stored_hashes,
    write_failed_label,
    write_initial_selection,
)
from ubmd.campaign.learning import bundle_task, train_task, training_split, warm_start_model
from ubmd.campaign.streaming import segment_task, select_stream_task

__all__ = [
    "append_label",
    "bundle_task",
    "count_frames",
    "count_labels",
    "explore_task",
    "import_labelled",
    "label_task",
    "read_frames",
    "report_task",
    "resolve_device",
    "segment_task",
    "select_stream_task",
    "select_task",
    "stored_hashes",
    "structure_key",
    "task_seed",
    "train_task",
    "training_split",
    "warm_start_model",
    "write_failed_label",
    "write_frames",
    "write_initial_selection",
    "write_starts",
]
