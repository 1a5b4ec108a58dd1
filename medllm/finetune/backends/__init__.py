"""Training backends. ``unsloth`` is imported only when chosen (it raises without a GPU and
must be imported before transformers/peft/trl)."""
