"""Per-layer placement of the engine's state (dart.engine.placement): each layer's statistics, masks, neuron order,
priors and counters live on that layer's device, so a model spread over GPUs runs without an op that mixes devices.

Here there is one CPU, so two things are checked:
- the multi-group code paths (one tensor per group of layers, whole-stack operations once per group), forced on
  the CPU by splitting the layers into groups, give EXACTLY what one group gives: logits, masks, triggers,
  effective sparsity, for every strategy family, at batch 1 (compacted) and 3 (union), through re-traces, and
  under chunked teacher forcing;
- a fake two-device layout: the last layers on PyTorch's `meta` device (shapes only: any op that mixes a CPU and
  a meta tensor raises), the engine on it through prefill, mask builds, pruned decoding and drift checks, with
  every per-layer tensor on its layer's device.
"""
from __future__ import annotations


import pytest
import torch

from tests.conftest import MODEL_BUILDERS  # noqa: E402
from dart.engine import controller as controller_module  # noqa: E402
from dart.engine.controller import Controller  # noqa: E402
from dart.engine.forcing import force  # noqa: E402
from dart.engine.overhead import state_bytes  # noqa: E402
from dart.engine.placement import Layered, Spans  # noqa: E402
from dart.compose import auto_spec, drift_spec, engine_spec  # noqa: E402


@pytest.fixture(autouse=True)
def _priors_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DART_CACHE", str(tmp_path / "cache"))


def test_spans_group_consecutive_layers_by_device():
    cpu, meta = torch.device("cpu"), torch.device("meta")
    s = Spans([cpu, cpu, meta, meta, cpu])
    assert s.groups == [(0, 2, cpu), (2, 4, meta), (4, 5, cpu)]
    assert s.remote == [False, False, True, True, False] and s.home == cpu and not s.single
    assert list(s.within(slice(1, 5))) == [(slice(1, 2), cpu), (slice(2, 4), meta), (slice(4, 5), cpu)]
    assert list(s.within(3)) == [(slice(3, 4), meta)]
    assert Spans([cpu] * 4, breaks=(2,)).groups == [(0, 2, cpu), (2, 4, cpu)]
    assert Spans([cpu] * 3).single


def test_layered_split_view_gather_and_per_layer_access():
    s = Spans([torch.device("cpu")] * 5, breaks=(2, 3))
    full = torch.arange(5 * 2 * 3, dtype=torch.float32).reshape(5, 2, 3)
    x = Layered.split(s, full)
    assert [tuple(p.shape) for p in x.parts] == [(2, 2, 3), (1, 2, 3), (2, 2, 3)]
    assert torch.equal(x.gather(), full) and x.shape == (5, 2, 3) and x.nbytes() == full.numel() * 4
    assert torch.equal(x[3], full[3]) and torch.equal(x[4, 1], full[4, 1])
    x[4] = torch.zeros(2, 3)  # writes through to its group's tensor
    x[0, 1] = torch.ones(3)
    assert x.parts[2][1].abs().sum() == 0 and torch.equal(x.parts[0][0, 1], torch.ones(3))
    assert torch.equal(x.view(slice(3, 5)), x.parts[2])
    with pytest.raises(ValueError, match="span device groups"):
        x.view(slice(1, 3))
    y = x.map(lambda p: p.sum(dim=-1))
    assert y.shape == (5, 2) and torch.equal(y.gather(), x.gather().sum(dim=-1))
    assert x.tolist() == x.gather().tolist()


# ---------------------------------------------------------------------------------------------- split == one group
def _model(arch="llama", layers=4):
    model = MODEL_BUILDERS[arch](layers=layers)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def _split(monkeypatch, breaks):
    real = Spans
    monkeypatch.setattr(controller_module, "Spans", lambda devices: real(devices, breaks=breaks))


def _generate(arch, ids, spec, fire=None, fixed=None, scores=None, n=14):
    model = _model(arch)
    c = Controller(model, spec, fixed_masks=fixed, global_scores=scores).attach()
    if fire is not None:
        c.detector.fire_steps = set(fire)
    try:
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                             output_logits=True, return_dict_in_generate=True)
        return {"logits": torch.stack(out.logits, 1), "masks": c.masks().clone(), "triggers": list(c.counts.triggers),
                "effective": c.effective(), "kept": c.kept_sum.tolist(), "state": state_bytes(c),
                "groups": len(c.M.parts), "compacted": c.compacted}
    finally:
        c.detach()


DRIFT = drift_spec(enabled=True, window=3, min_margin=0.3, min_windows=2)
SPECS = {
    "dart": dict(sparsity=0.5, masking_step=2, retrace_tokens=4, drift=DRIFT),
    "dart_auto_max": dict(sparsity=0.6, masking_step=2, allocation="auto", ranking="max", drift=DRIFT),
    "griffin_ema": dict(sparsity=0.5, masking_step=1, statistic="ema", ema_decay=0.9, drift=drift_spec(enabled=False)),
    "budget": dict(sparsity=0.5, masking_step=2, retrace_tokens=3, budget="effective", drift=DRIFT),
    "prior_mix": dict(sparsity=0.5, masking_step=2, prior_mix=0.4, drift=DRIFT),
    "mean_rule": dict(sparsity=0.5, masking_step=1, mask_rule="mean", drift=drift_spec(enabled=False)),
}


@pytest.mark.parametrize("arch", sorted(MODEL_BUILDERS))
@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("B", [1, 3])
def test_layers_split_over_groups_give_exactly_one_groups_results(monkeypatch, arch, name, B):
    ids = torch.randint(3, 128, (B, 9), generator=torch.Generator().manual_seed(B))
    kw = dict(SPECS[name])
    scores = torch.rand(4, 64, generator=torch.Generator().manual_seed(1)) if kw.get("prior_mix") else None
    fire = {5, 11} if kw["drift"].enabled else None
    if B > 1:
        kw["execution"] = "compact"  # the union, whatever its size
    one = _generate(arch, ids, engine_spec(**kw), fire, scores=scores)
    _split(monkeypatch, (1, 3))
    split = _generate(arch, ids, engine_spec(**kw), fire, scores=scores)
    assert one["groups"] == 1 and split["groups"] == 3
    assert torch.equal(split["logits"], one["logits"])
    assert torch.equal(split["masks"], one["masks"])
    assert split["triggers"] == one["triggers"] and split["kept"] == one["kept"]
    assert split["effective"] == one["effective"] and split["state"] == one["state"]
    assert split["compacted"] == one["compacted"]
    if fire:
        assert one["triggers"], "the scripted triggers must fire"


def test_fixed_masks_split_over_groups(monkeypatch):
    fixed = torch.rand(4, 64, generator=torch.Generator().manual_seed(3)) < 0.4
    ids = torch.randint(3, 128, (1, 8), generator=torch.Generator().manual_seed(0))
    spec = engine_spec(sparsity=0.6, drift=drift_spec(enabled=False))
    one = _generate("llama", ids, spec, fixed=fixed)
    _split(monkeypatch, (2,))
    split = _generate("llama", ids, spec, fixed=fixed)
    assert torch.equal(split["logits"], one["logits"]) and torch.equal(split["masks"], one["masks"])
    assert torch.equal(split["masks"][:, 0], fixed) and split["compacted"]


def test_chunked_forcing_split_over_groups(monkeypatch):
    g = torch.Generator().manual_seed(5)
    prefixes = [torch.randint(3, 128, (n,), generator=g).tolist() for n in (7, 11)]
    forced = [torch.randint(3, 128, (n,), generator=g).tolist() for n in (20, 13, 17)]
    group = [0, 0, 1]

    def run():
        model = _model("llama")
        c = Controller(model, engine_spec(sparsity=0.5, masking_step=2, retrace_tokens=3, drift=DRIFT)).attach()
        c.detector.fire_steps = {5, 14}
        got = {}

        def take(rows, j0, logits):
            for i, r in enumerate(rows):
                for t in range(logits.shape[1]):
                    got[r, j0 + t] = logits[i, t].clone()
        try:
            force(model, prefixes, forced, group, take)
        finally:
            c.detach()
        return got, list(c.counts.triggers), c.effective()

    one = run()
    _split(monkeypatch, (1, 2))
    split = run()
    assert one[1] and split[1] == one[1] and split[2] == one[2]
    assert one[0].keys() == split[0].keys()
    for k in one[0]:
        assert torch.equal(one[0][k], split[0][k]), k


# ---------------------------------------------------------------------------------------------- a fake second device
def _to_meta(obj):
    if torch.is_tensor(obj):
        return obj.to("meta")
    if isinstance(obj, tuple):
        return tuple(_to_meta(o) for o in obj)
    if isinstance(obj, list):
        return [_to_meta(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _to_meta(v) for k, v in obj.items()}
    return obj


def _meta_layout(model, first_meta: int):
    """Layers first_meta.. (and the final norm and head) on `meta`; their inputs moved there, as accelerate's
    hooks move them between GPUs."""
    for layer in model.model.layers[first_meta:]:
        layer.to("meta")
        layer.register_forward_pre_hook(lambda m, a, kw: (_to_meta(a), _to_meta(kw)), with_kwargs=True)
    model.model.norm.to("meta")
    model.lm_head.to("meta")


@torch.no_grad()
def test_no_engine_op_mixes_devices_on_a_two_device_layout():
    from transformers import DynamicCache

    model = _model("llama")
    _meta_layout(model, 2)
    # drift on layer 0 (CPU): meta tensors cannot be read, and the detector reads one flag per window;
    # masked execution: compaction reads each layer's kept count
    spec = engine_spec(sparsity=0.5, masking_step=2, retrace_tokens=2, execution="masked",
                      drift=drift_spec(enabled=True, window=2, layers=[0], min_windows=1))
    c = Controller(model, spec).attach()
    c.detector.fire_steps = {6}
    assert [(a, b, d.type) for a, b, d in c.spans.groups] == [(0, 2, "cpu"), (2, 4, "meta")]
    try:
        cache = DynamicCache()
        out = model(input_ids=torch.randint(3, 128, (1, 6)), past_key_values=cache, use_cache=True)
        for _ in range(9):
            out = model(input_ids=torch.randint(3, 128, (1, 1)), past_key_values=cache, use_cache=True)
        assert out.logits.device.type == "meta"
        assert c.counts.triggers and c.counts.builds >= 2  # a re-trace and its new masks ran across both devices
        for name, x in [("M", c.M), ("A", c.stats.A), ("order", c.order), ("kept_sum", c.kept_sum),
                        ("kept_rows", c.tally.kept), ("skipped", c.tally.skipped["decode"])]:
            for l in range(c.L):
                assert x[l].device.type == ("cpu" if l < 2 else "meta"), (name, l)
        assert c.detector.center.device.type == "cpu"
    finally:
        c.detach()
