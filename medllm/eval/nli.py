"""Natural-language inference: MedNLI (``sentence1``/``sentence2``/``gold_label``) or
premise/hypothesis/label files such as NLI4CT. The label set is taken from the data (MedNLI has
three labels, NLI4CT two); the prompt is the fine-tuning format of :mod:`medllm.finetune.tasks`.
"""

from __future__ import annotations

from pathlib import Path

from medllm.eval.label import LabelItem, LabelTask


def nli_task(path: Path, *, split: str | None = None) -> LabelTask:
    from medllm.finetune import tasks

    nli = tasks.read_nli(Path(path), split=split)
    items = [
        LabelItem(rid, label, tasks.nli_messages(premise, hypothesis))
        for rid, premise, hypothesis, label in nli.records
    ]
    return LabelTask(
        name="nli",
        variant=split or "",
        data_path=Path(path),
        options=nli.options,
        items=items,
        identity={"split": split},
    )
