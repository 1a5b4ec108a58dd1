"""A medllm LoRA adapter reaches llama.cpp: ``medllm finetune export-gguf`` writes a GGUF LoRA
that llama.cpp applies to the packaged SmolLM2 GGUF with the same effect as PEFT on the
transformers copy of the same weights (issue 12).

The adapter is a real PEFT LoRA (``get_peft_model`` + ``save_pretrained``, the files
``medllm finetune`` writes) on all seven projections of the packaged SmolLM2, with random
non-zero B matrices so that it changes the model a lot (a trained adapter of a few steps barely
moves a 135M model, and a test of "no change" could not fail)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from medllm.config import Settings

PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LABELS = ("yes", "no", "maybe")
MSGS = [
    {
        "role": "user",
        "content": "Is aspirin effective for the secondary prevention of cardiovascular "
        "events?\n\nAnswer with yes, no or maybe.",
    }
]


def _cli(*args: str) -> Any:
    from medllm.cli.main import app

    return CliRunner().invoke(app, list(args))


def _make_adapter(out: Path, scale: float = 1.0, **lora: Any) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model

    from medllm.models import load_hf_model

    s = Settings.load(config_file=False)
    model, tok, _ = load_hf_model("smollm2-135m-instruct", models_dir=s.paths.models_dir)
    torch.manual_seed(0)
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules=PROJ, init_lora_weights=False, **lora)
    pm = get_peft_model(model, cfg)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.mul_(scale)
    pm.save_pretrained(str(out))
    acfg = json.loads((out / "adapter_config.json").read_text())
    acfg["base_model_name_or_path"] = "HuggingFaceTB/SmolLM2-135M-Instruct"  # finetune
    (out / "adapter_config.json").write_text(json.dumps(acfg))
    return pm, tok


def _last_logits(gguf: Path, ids: list[int], lora: Path | None = None) -> Any:
    import llama_cpp

    m = llama_cpp.Llama(
        model_path=str(gguf),
        n_ctx=512,
        n_threads=2,
        logits_all=True,
        verbose=False,
        lora_path=str(lora) if lora else None,
    )
    m.eval(ids)
    out = np.array(m.scores[len(ids) - 1])
    m.close()
    return out


# ~85 s on the 2-core machine: transformers + PEFT + five llama.cpp loads (default suite)
def test_exported_gguf_lora_matches_peft(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gguf
    import torch

    from medllm.errors import ModelNotAvailableError
    from medllm.finetune import gguf_lora
    from medllm.models.backend import check_adapter_fits, resolve_backend
    from medllm.models.llamacpp import LlamaCppBackend, gguf_path
    from medllm.models.transformers import TransformersBackend

    ad = tmp_path / "adapter"
    pm, tok = _make_adapter(ad)
    out = tmp_path / "adapter.gguf"
    r = _cli("finetune", "export-gguf", str(ad), "--output", str(out), "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert summary["tensors"] == 30 * 7 and summary["qk_permuted"] is True
    fields = gguf.GGUFReader(str(out)).fields
    assert fields["general.type"].contents() == "adapter"
    assert fields["adapter.type"].contents() == "lora"
    assert fields["adapter.lora.alpha"].contents() == 16.0
    # the same file again: refused without --overwrite, nothing changed
    before = out.read_bytes()
    r = _cli("finetune", "export-gguf", str(ad), "--output", str(out))
    assert r.exit_code != 0 and "--overwrite" in r.output and out.read_bytes() == before

    # The effect of the adapter on the next-token logits, PEFT vs llama.cpp, same token ids.
    ids = list(
        tok.apply_chat_template(MSGS, add_generation_prompt=True, return_dict=True)["input_ids"]
    )
    with torch.no_grad():
        h_ad = pm(torch.tensor([ids])).logits[0, -1].numpy()
        with pm.disable_adapter():
            h_base = pm(torch.tensor([ids])).logits[0, -1].numpy()
    base = gguf_path("smollm2-135m-instruct", Settings.load(config_file=False))
    l_base = _last_logits(base, ids)
    l_ad = _last_logits(base, ids, out)
    shift = float(np.abs(h_ad - h_base).mean())
    corr = float(np.corrcoef(h_ad - h_base, l_ad - l_base)[0, 1])
    # without the Q/K row permutation (what a naive export writes) the effect lands elsewhere
    monkeypatch.setattr(gguf_lora, "PERMUTED_ARCHS", set())
    naive = tmp_path / "naive.gguf"
    gguf_lora.export_gguf_lora(ad, naive, base_gguf=base)
    corr_naive = float(np.corrcoef(h_ad - h_base, _last_logits(base, ids, naive) - l_base)[0, 1])
    print(f"adapter shift {shift:.2f} logits; corr(delta) {corr:.4f}, unpermuted {corr_naive:.4f}")
    assert shift > 0.5  # the adapter really changes the model
    assert corr > 0.98
    assert corr_naive < corr - 0.03
    top_h, top_l = set(np.argsort(-h_ad)[:10]), set(np.argsort(-l_ad)[:10])
    print(f"top-10 next tokens in common: {len(top_h & top_l)}")
    assert len(top_h & top_l) >= 7

    # Through medllm's backends: --adapter FILE.gguf on llama.cpp, --adapter DIR on transformers.
    s_lc = Settings.load(config_file=False, models={"adapter": str(out)})
    s_hf = Settings.load(config_file=False, models={"adapter": str(ad)})
    assert resolve_backend(s_lc) == "llama-cpp" and resolve_backend(s_hf) == "transformers"
    with pytest.raises(ModelNotAvailableError, match="GGUF LoRA"):
        check_adapter_fits("transformers", out)
    lc, lc0 = (
        LlamaCppBackend("smollm2-135m-instruct", settings=s_lc),
        LlamaCppBackend("smollm2-135m-instruct", settings=Settings.load(config_file=False)),
    )
    hf = TransformersBackend("smollm2-135m-instruct", settings=s_hf)
    p_lc, p_lc0 = lc.score_options(MSGS, LABELS), lc0.score_options(MSGS, LABELS)
    p_hf = hf.score_options(MSGS, LABELS)
    print("llama.cpp+lora", p_lc, "llama.cpp", p_lc0, "transformers+lora", p_hf)
    assert max(abs(p_lc[o] - p_hf[o]) for o in LABELS) < 0.1
    assert max(abs(p_lc[o] - p_lc0[o]) for o in LABELS) > 0.1  # the adapter was applied
    lc.close()
    lc0.close()


def _tiny_base(path: Path, hidden: int = 64) -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_uint32("llama.attention.head_count", 4)
    w.add_uint32("llama.attention.head_count_kv", 4)
    w.add_tensor("blk.0.attn_q.weight", np.zeros((hidden, hidden), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _tiny_adapter(path: Path, cfg: dict[str, Any], hidden: int = 64, r: int = 4) -> Path:
    from safetensors.numpy import save_file

    path.mkdir()
    (path / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": r, "lora_alpha": 8, **cfg})
    )
    pre = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file(
        {
            f"{pre}.lora_A.weight": np.ones((r, hidden), dtype=np.float32),
            f"{pre}.lora_B.weight": np.arange(hidden * r, dtype=np.float32).reshape(hidden, r),
        },
        str(path / "adapter_model.safetensors"),
    )
    return path


def test_export_checks_and_permutes(tmp_path: Path) -> None:
    """No model needed: shapes, the rsLoRA scale, the Q row permutation, clear refusals."""
    import gguf

    from medllm.finetune.gguf_lora import GgufExportError, export_gguf_lora

    base = _tiny_base(tmp_path / "base.gguf")
    ad = _tiny_adapter(tmp_path / "ad", {"use_rslora": True})
    s = export_gguf_lora(ad, tmp_path / "a.gguf", base_gguf=base)
    assert s["tensors"] == 1 and s["alpha"] == pytest.approx(8 * 2.0)  # 8 * sqrt(4)
    t = {x.name: np.asarray(x.data) for x in gguf.GGUFReader(str(tmp_path / "a.gguf")).tensors}
    b = np.arange(64 * 4, dtype=np.float32).reshape(64, 4)
    # llama.cpp's converter permutation (rotary halves → interleaved pairs), per head of 16 rows
    head = b[:16]
    want = np.stack([head[:8], head[8:]], axis=1).reshape(16, 4)
    assert np.array_equal(t["blk.0.attn_q.weight.lora_b"][:16], want)
    assert np.array_equal(t["blk.0.attn_q.weight.lora_a"], np.ones((4, 64), dtype=np.float32))
    export_gguf_lora(ad, tmp_path / "h.gguf", base_gguf=base, dtype="f16")
    t16 = {x.name: x for x in gguf.GGUFReader(str(tmp_path / "h.gguf")).tensors}
    assert t16["blk.0.attn_q.weight.lora_b"].tensor_type == gguf.GGMLQuantizationType.F16
    b16 = np.asarray(t16["blk.0.attn_q.weight.lora_b"].data)
    assert b16.dtype == np.float16 and np.array_equal(b16[:16], want.astype(np.float16))

    cases: list[tuple[dict[str, Any], str]] = [
        ({"use_dora": True}, "DoRA"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"alpha_pattern": {"q_proj": 4}}, "alpha_pattern"),
    ]
    for cfg, msg in cases:
        bad = _tiny_adapter(tmp_path / f"bad-{msg}", cfg)
        with pytest.raises(GgufExportError, match=msg):
            export_gguf_lora(bad, tmp_path / f"{msg}.gguf", base_gguf=base)
        assert not (tmp_path / f"{msg}.gguf").exists()
    wrong = _tiny_base(tmp_path / "wrong.gguf", hidden=32)
    with pytest.raises(GgufExportError, match="different model"):
        export_gguf_lora(ad, tmp_path / "w.gguf", base_gguf=wrong)
    assert not (tmp_path / "w.gguf").exists() and not (tmp_path / "w.gguf.tmp").exists()
    r = _cli("finetune", "export-gguf", str(tmp_path / "nothing"), "--output", "x.gguf")
    assert r.exit_code != 0 and "adapter directory not found" in r.output
    (tmp_path / "empty").mkdir()
    r = _cli("finetune", "export-gguf", str(tmp_path / "empty"), "--output", "x.gguf")
    assert r.exit_code != 0 and "not a LoRA adapter directory" in r.output
