"""Generation throughput (tokens/s) of each CPU backend on the same model and prompt.

    .venv/bin/python bench/generate.py [--model smollm2-135m-instruct] [--tokens 128]

Backends, measured in one run on the same chat-formatted prompt with greedy decoding:
``transformers`` (fp32, the dequantized GGUF through HuggingFaceLLM's model.generate) and
``llama-cpp`` (the packaged GGUF through llama-cpp-python). One warm-up call each, then the
median of ``--repeats`` timed calls. Writes bench/out/generate.json and prints the ratio of
each backend to llama.cpp.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import date
from pathlib import Path

PROMPT = (
    "Explain in a short paragraph how beta blockers lower blood pressure and name two common "
    "side effects."
)


def bench_transformers(settings, n_tokens: int, repeats: int) -> dict:  # type: ignore[no-untyped-def]
    import torch

    from medllm.models import load_hf_model
    from medllm.scoring import chat_prompt

    model, tok, _ = load_hf_model(
        settings.models.llm, models_dir=settings.paths.models_dir, device="cpu"
    )
    prompt = chat_prompt(tok, [{"role": "user", "content": PROMPT}])
    enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
    kw = dict(
        max_new_tokens=n_tokens,
        min_new_tokens=n_tokens,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
    )
    rates = []
    with torch.inference_mode():
        model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
        for _ in range(repeats):
            t0 = time.perf_counter()
            outp = model.generate(**enc, **kw)
            dt = time.perf_counter() - t0
            rates.append((outp.shape[1] - enc["input_ids"].shape[1]) / dt)
    return {
        "tokens_per_s": statistics.median(rates),
        "runs": rates,
        "threads": torch.get_num_threads(),
    }


def bench_llamacpp(settings, n_tokens: int, repeats: int) -> dict:  # type: ignore[no-untyped-def]
    from medllm.models.llamacpp import load_llamacpp_llm

    llm = load_llamacpp_llm(settings.models.llm, settings=settings)
    model = llm._model  # type: ignore[attr-defined]
    prompt = llm.completion_to_prompt(PROMPT)  # type: ignore[attr-defined,misc]
    eos = model.token_eos()
    kw = dict(max_tokens=n_tokens, temperature=0.0, top_k=1, logit_bias={eos: -1e9})
    model(prompt, max_tokens=8, temperature=0.0)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        r = model(prompt, **kw)
        dt = time.perf_counter() - t0
        rates.append(r["usage"]["completion_tokens"] / dt)
    return {"tokens_per_s": statistics.median(rates), "runs": rates, "threads": model.n_threads}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "generate.json")
    a = ap.parse_args()

    from medllm.config import Settings

    s = Settings.load(models={"llm": a.model})
    results = {
        "transformers": bench_transformers(s, a.tokens, a.repeats),
        "llama-cpp": bench_llamacpp(s, a.tokens, a.repeats),
    }
    ref = results["llama-cpp"]["tokens_per_s"]
    for name, r in results.items():
        r["ratio_to_llamacpp"] = r["tokens_per_s"] / ref
        print(
            f"{name:14s} {r['tokens_per_s']:7.1f} tok/s  ({r['ratio_to_llamacpp']:.2f}x llama.cpp)"
        )
    report = {
        "model": a.model,
        "tokens": a.tokens,
        "date": date.today().isoformat(),
        "machine": platform.processor() or platform.machine(),
        "results": results,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
