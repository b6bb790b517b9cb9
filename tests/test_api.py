"""The Python API (dart.api.prune): the command line's defaults, any strategy and knob, the model restored bit for bit
after the block, and the same generated tokens as `python -m dart.run` gives for the same strategy."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from tests.conftest import run_cli, tiny_llama  # noqa: E402

import dart  # noqa: E402
from dart.compose import build_strategy, compose  # noqa: E402


def test_prune_has_the_run_spec_and_restores_the_model():
    from dart.compose import instantiate

    model = tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(0))
    dense = model(ids).logits
    with dart.prune(model, "dart") as handle:
        run = instantiate(compose(["strategy=dart"]).strategy)  # what `python -m dart.run strategy=dart` builds
        assert dataclasses.asdict(handle.spec) == dataclasses.asdict(run.spec)
        assert (handle.spec.sparsity, handle.spec.retrace_tokens, handle.spec.drift.min_margin) == (0.5, 20, 0.3)
        out = model.generate(ids, max_new_tokens=20, do_sample=False, pad_token_id=0)
        assert out.shape == (1, 32) and handle.controller.compacted  # a single sequence runs compacted
        assert handle.summary()["sparsity"]["effective"] > 0.3
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # every neuron back in its place
    assert torch.equal(model(ids).logits, dense)
    with dart.prune(model, "dart_published", sparsity=0.7, ranking="max", masking_step=3, drift={"window": 4}) as h:
        assert (h.spec.sparsity, h.spec.ranking, h.spec.masking_step, h.spec.drift.window, h.spec.published_quirks) == \
            (0.7, "max", 3, 4, True)
    with pytest.raises(Exception, match="masking_stpe"):
        with dart.prune(model, "dart", masking_stpe=3):
            pass
    assert dart.build_strategy is build_strategy


def test_prune_gives_the_tokens_of_a_run(tmp_path):
    """eval=drift generates greedily under strategy=dart (tiny random Llama): dart.prune + model.generate on the same
    prompt gives the same text."""
    from dart.evals.drift import load_prompts
    from dart.evals.generation import greedy, render_prompt
    from dart.models.loading import load_model

    out = tmp_path / "run"
    proc = run_cli("model=tiny_llama", "eval=drift", "eval.limit=1", "eval.max_new_tokens=40", "eval.reference=false",
                   "strategy=dart", "sparsity=0.5", "logger=none", "print_table=false", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads((out / "drift_samples.jsonl").read_text().splitlines()[0])
    cfg = compose(["model=tiny_llama"])
    loaded = load_model(cfg.model, device="cpu", dtype="float32")
    prompt = render_prompt(loaded.tokenizer, load_prompts()[0], False)
    with dart.prune(loaded.model, "dart", tokenizer=loaded.tokenizer, sparsity=0.5) as handle:
        tokens = greedy(loaded.model, loaded.tokenizer, [prompt], 40, "cpu")[0]
        triggers = [t["step"] for t in handle.drift_log()[1]]
    assert loaded.tokenizer.decode(tokens, skip_special_tokens=True) == row["text"]
    assert triggers == [t["step"] for t in row["triggers"]]
