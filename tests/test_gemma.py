"""The packaged Gemma 3 270M: its GGUF tokenizer matches llama.cpp, prompts carry one <bos>,
and the converted model generates sensible text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from medllm.config import Settings
from medllm.models import GEMMA_CHAT_TEMPLATE, KNOWN_MODELS, MANIFEST, load_hf_model
from medllm.scoring import chat_prompt

SPEC = KNOWN_MODELS["gemma3-270m"]
pytestmark = pytest.mark.skipif(not SPEC.installed(), reason=f"needs {SPEC.install_hint()}")

TEXTS = [
    "The capital of France is",
    "Patients with type 2 diabetes mellitus (T2DM) had HbA1c ≥ 6.5% after 12 weeks; p<0.001.",
    "Is laparoscopic cholecystectomy safe in the elderly? Answer yes, no or maybe.",
    "IL-6, TNF-α and CRP ↑ in COVID-19 (SARS-CoV-2); dose: 0.5 mg/kg b.i.d.",
    "Ünïcödé façade — naïve café, 日本語のテキスト, Ελληνικά, русский, 🤖🧬",
    " leading space, trailing space ",
    "a  b   c\tt\t\td    end",
    "line1\nline2\n\nline3\r\n",
    "3.14159 1,000,000 1e-5 0x1F 2024-01-31 #42 @user $9.99",
    "<b>bold</b> and <start_of_turn>user\nhi<end_of_turn>\n",
    "x" * 40 + " " + "ab" * 20,
]


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return SPEC.locate(tmp_path_factory.mktemp("gemma"))


@pytest.fixture(scope="module")
def tok(gguf: Path) -> Any:
    from medllm.models.gguf_tokenizer import spm_bpe_tokenizer

    return spm_bpe_tokenizer(gguf, chat_template=GEMMA_CHAT_TEMPLATE)


def test_token_ids_match_llama_cpp(gguf: Path, tok: Any) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    ref = llama_cpp.Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    try:
        for text in TEXTS:
            want = ref.tokenize(text.encode(), add_bos=False, special=True)
            assert tok(text, add_special_tokens=False)["input_ids"] == want, text
    finally:
        ref.close()
    # Word pieces, not characters.
    assert tok.tokenize("The capital of France is") == ["The", "▁capital", "▁of", "▁France", "▁is"]


def test_decode_round_trips(tok: Any) -> None:
    for text in TEXTS:
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_chat_prompt_has_exactly_one_bos(tok: Any) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    prompt = chat_prompt(tok, messages)
    assert prompt.startswith("<bos><start_of_turn>user\n") and prompt.count("<bos>") == 1
    # medllm.scoring encodes without special tokens, LlamaIndex's HuggingFaceLLM with them.
    for special in (False, True):
        ids = tok(prompt, add_special_tokens=special)["input_ids"]
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
    assert enc["input_ids"][:2] == [2, 105]  # TRL-style tokenization: also one <bos>


def test_converted_model_generates_sensibly(tok: Any) -> None:
    import torch

    s = Settings.load(config_file=False)
    model, loaded, _ = load_hf_model("gemma3-270m", models_dir=s.paths.models_dir, device="cpu")
    target = s.paths.models_dir / SPEC.name
    assert json.loads((target / MANIFEST).read_text())["converter"] == 2
    assert 106 in model.generation_config.eos_token_id  # <end_of_turn> stops a turn
    for text in TEXTS:  # the saved tokenizer is the one built from the GGUF
        assert loaded(text)["input_ids"] == tok(text)["input_ids"]

    def greedy(text: str, n: int) -> str:
        ids = loaded(loaded.bos_token + text, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=n, do_sample=False)
        return str(loaded.decode(out[0, ids["input_ids"].shape[1] :]))

    assert greedy("The Eiffel Tower is in the city of", 3).strip().startswith("Paris")
    assert greedy("Paris is the capital of", 2).strip().startswith("France")
    with torch.inference_mode():
        ids = loaded(loaded.bos_token + "The capital of France is", return_tensors="pt")
        top = model(**ids).logits[0, -1].topk(5).indices.tolist()
    assert "Paris" in [loaded.decode([i]).strip() for i in top]
