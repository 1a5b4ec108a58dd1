"""Multiple choice (MedMCQA-style A-D), scored by likelihood over the four letters with the
prompt of :mod:`medllm.finetune.tasks`."""

from __future__ import annotations

from pathlib import Path

from medllm.eval.label import LabelItem, LabelTask


def mcq_task(path: Path) -> LabelTask:
    from medllm.finetune import tasks

    examples = tasks.load_mcq(Path(path))
    items = [LabelItem(ex.id, ex.label or "", ex.messages) for ex in examples]
    return LabelTask(
        name="mcq",
        variant="",
        data_path=Path(path),
        options=tasks.MCQ_OPTIONS,
        items=items,
        baselines={"uniform chance": 0.25},
    )
