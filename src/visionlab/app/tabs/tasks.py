"""The one explicit task -> app pieces table: which Image tab a run's task gets, what the webcam draws on each frame
for it, and whether its predictions get a guide's information card. A new task adds one module in tabs/ and one row
below; nothing else in the app branches on task names."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ...utils import UserError
from . import detection, image, segmentation


@dataclass(frozen=True)
class TaskTab:
    build_image_tab: Callable    # (runs of the task, picker, downloads, title, tab id) -> None: adds the Image tab
    frame_view: Callable         # (app run, RGB frame) -> (frame to show, {class: score} for the webcam's bars)
    cards: bool                  # shows a guide's information card for the predicted class (guide.py)


TASK_TABS = {
    "classification": TaskTab(image.build_image_tab, image.frame_view, cards=True),
    "ssl": TaskTab(image.build_image_tab, image.frame_view, cards=True),      # a classifier trained on few labels
    "dg": TaskTab(image.build_image_tab, image.frame_view, cards=True),       # a classifier for unseen domains
    "segmentation": TaskTab(segmentation.build_tab, segmentation.frame_view, cards=False),
    "detection": TaskTab(detection.build_tab, detection.frame_view, cards=False),
}


def tab_for(task: str) -> TaskTab:
    """The row of ``task``; a UserError naming the tasks the app shows otherwise."""
    if task not in TASK_TABS:
        raise UserError(f"the app shows {', '.join(TASK_TABS)} runs (and generative runs on the Generate tab), "
                        f"not task={task}")
    return TASK_TABS[task]


def shows_cards(task: str) -> bool:
    """Whether ``task``'s predictions get a guide's information card (False for tasks without a row)."""
    return task in TASK_TABS and TASK_TABS[task].cards
