"""Label scoring: likelihood over a closed set of options (:mod:`medllm.scoring.likelihood`)
and the linear label head (:mod:`medllm.scoring.heads`). The likelihood scorer's public names
are re-exported here."""

from medllm.scoring.likelihood import (
    chat_prompt,
    fit_bias,
    hf_parts,
    normalise,
    score_options,
)

__all__ = ["chat_prompt", "fit_bias", "hf_parts", "normalise", "score_options"]
