"""The transformers backend: an in-process causal LM (CPU or CUDA, optionally nf4), with LoRA
adapters and linear label heads; labels scored by :mod:`medllm.scoring.likelihood` on its
logits (or by the head), text generated through LlamaIndex's ``HuggingFaceLLM``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from medllm.models.base import Capabilities, LocalBackend, Messages, OptionProbs

if TYPE_CHECKING:
    from medllm.config import Settings


def hf_llm(model: Any, tok: Any, name: str, settings: Settings) -> Any:
    """A LlamaIndex ``HuggingFaceLLM`` over a loaded model and tokenizer (greedy unless
    ``generation.temperature`` > 0)."""
    from llama_index.llms.huggingface import HuggingFaceLLM

    g = settings.generation
    gen_kwargs: dict[str, Any] = {"pad_token_id": tok.pad_token_id}
    if g.temperature > 0:
        gen_kwargs.update(do_sample=True, temperature=g.temperature, top_p=g.top_p)
    else:
        gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)

    def completion_to_prompt(text: str) -> str:
        return str(
            tok.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
        )

    max_pos = int(getattr(model.config, "max_position_embeddings", 0) or g.context_window)
    return HuggingFaceLLM(
        model=model,
        tokenizer=tok,
        model_name=name,
        tokenizer_name=name,
        context_window=min(g.context_window, max_pos),
        max_new_tokens=g.max_new_tokens,
        generate_kwargs=gen_kwargs,
        is_chat_model=True,
        completion_to_prompt=completion_to_prompt,
        stopping_ids=[i for i in {tok.eos_token_id} if i is not None],
        device_map=str(model.device),
    )


class TransformersBackend(LocalBackend):
    name = "transformers"
    default_capabilities = Capabilities(
        logprobs=True, hidden_states=True, lora=True, tool_calling=False
    )

    def __init__(self, name_or_path: str, *, settings: Settings):
        from medllm.models.registry import load_hf_model

        m = settings.models
        self.hf_model, self.tokenizer, resolved = load_hf_model(
            name_or_path,
            models_dir=settings.paths.models_dir,
            adapter=m.adapter,
            quantization=m.quantization,
            device=m.device,
            trust_remote_code=m.trust_remote_code,
        )
        self.model = resolved.name
        self.capabilities = self.default_capabilities
        self.llm = hf_llm(self.hf_model, self.tokenizer, resolved.name, settings)
        self.batch_size = settings.eval.batch_size
        if getattr(self.hf_model, "medllm_head", None) is not None:
            self.scoring = "linear head (label probabilities from the adapter's head)"
        else:
            self.scoring = "likelihood (next-token log-probabilities of the options, renormalised)"

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0

    def render(self, messages: Messages) -> str:
        from medllm.scoring.likelihood import chat_prompt

        return chat_prompt(self.tokenizer, messages)

    def score_batch(
        self,
        batch: Sequence[Messages],
        options: Sequence[str],
        *,
        batch_size: int = 8,
        progress: bool = False,
    ) -> list[OptionProbs]:
        from medllm.scoring.likelihood import score_options

        prompts = [self.render(m) for m in batch]
        probs = score_options(
            self.hf_model,
            self.tokenizer,
            prompts,
            options,
            batch_size=batch_size,
            progress=progress,
        )
        return [OptionProbs(p) for p in probs]
