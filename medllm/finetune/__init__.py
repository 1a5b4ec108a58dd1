"""QLoRA fine-tuning: task formats (PubMedQA, NLI, MCQ, instructions), config dataclasses,
and backends (Unsloth on CUDA in ``backends/unsloth.py``, PEFT + TRL + bitsandbytes
elsewhere)."""
