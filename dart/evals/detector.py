"""What the drift detector sees (`eval=detector`): on the switch pairs of eval=switch, every layer's self-attention
output, the baseline and thresholds DART would set from the prompt, and every window of the B segment against them.

The detector (dart.engine.drift, docs/method.md section 5) fires on the first window whose cosine to the prompt's
centre falls below tau = mu - max(0.1 sigma, margin); margin 0.1 as published (`dart_published`), 0.3 for
`strategy=dart`. Whether it can fire at all on a model is a property of that model's attention outputs: this eval
measures it without the schedule in the way, for every layer at once, with the engine's own DriftDetector (the
same baseline, windows and thresholds, masking step m = 1: the baseline is the P prompt vectors and the first
decode input's; windows of W = 5 close from there on).

Run it under `strategy=dense` (the model's own signal) or `strategy=static_prompt` (what DART's detector sees until
its first trigger: the B segment runs under the prompt's mask, teacher-forced as eval=switch does).

Per sample and layer: mu (the baseline windows' mean cosine), the thresholds at both margins, the lowest window
cosine of B and the first window below each threshold; the last layer's every window cosine. Metrics (the last
layer, the one DART monitors): the fraction of samples on which a window falls below each threshold (`fire_0.1`,
`fire_0.3`; on controls these are false alarms) and the mean drop mu - min cosine, per kind, with 95% intervals.
results.json's eval section holds the same per layer (`layers`); detector_samples.jsonl the per-sample rows.
"""
from __future__ import annotations

import json

import torch

from dart.evals.switch import Switch

SAMPLES_FILE = "detector_samples.jsonl"
MARGINS = (0.1, 0.3)  # published; strategy=dart
WINDOW = 5
MASKING_STEP = 1


def thresholds(v: torch.Tensor, baseline: int) -> tuple[torch.Tensor, dict[float, torch.Tensor], torch.Tensor]:
    """(mu (B,), {margin: tau (B,)}, window cosines (B, n)) of the signal v (B, T, D) with the first `baseline`
    vectors as the baseline, computed by the engine's DriftDetector (sigma_scale 0.1, as both strategies)."""
    from dart.compose import drift_spec
    from dart.engine.drift import DriftDetector

    B, T, D = v.shape
    n = (T - baseline) // WINDOW
    taus, cos, mu = {}, None, None
    for margin in (0.0, *MARGINS):
        spec = drift_spec(window=WINDOW, sigma_scale=0.0 if margin == 0.0 else 0.1, min_margin=margin,
                          nan_tau_compat=False)
        det = DriftDetector(spec, D, v.device)
        det.reset(B)
        det.collect_trace(v[:, :baseline], torch.ones(B, baseline, device=v.device))
        det.finalize(torch.ones(B, dtype=torch.bool, device=v.device))
        if margin == 0.0:
            mu, cos = det.tau.clone(), det.window_cosines(v[:, baseline:], n)
        else:
            taus[margin] = det.tau.clone()
    return mu, taus, cos


class Detector(Switch):
    name = "detector"

    @torch.no_grad()
    def step(self, batch):
        from dart.engine.adapters import adapter_for
        from dart.evals.decoding import teacher_force

        model, strategy = self.ctx.model, self.ctx.strategy
        ids = self.batch_ids(batch)
        layers = adapter_for(model).layers(model)
        seen: list[list[torch.Tensor]] = [[] for _ in layers]

        def hook(i):
            def fn(_module, _args, output):
                seen[i].append((output[0] if isinstance(output, tuple) else output).float())
            return fn

        handles = [adapter_for(model).attention(layer).register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
        try:
            teacher_force(model, ids, self.prefix if getattr(strategy, "dynamic", False) else None,
                          lambda *a: None, mode=self.forcing, prefix_logits=False)
        finally:
            for h in handles:
                h.remove()
        T = ids.shape[1] - 1  # positions 0 .. T-1 were fed
        base = self.prefix + MASKING_STEP  # the prompt and the first decode input
        out = [{"index": s["index"], "kind": s["kind"], "order": s["order"], "layers": []} for s in batch]
        for i, chunks in enumerate(seen):
            v = torch.cat(chunks, dim=1)
            if v.shape[1] != T:
                raise RuntimeError(f"layer {i}: {v.shape[1]} attention outputs recorded, {T} fed")
            mu, taus, cos = thresholds(v, base)
            for b in range(len(batch)):
                low = cos[b].min()
                row = {"mu": float(mu[b]), "min": float(low), "drop": float(mu[b] - low)}
                for m in MARGINS:
                    below = (cos[b] < taus[m][b]).nonzero()
                    row[f"tau_{m}"] = float(taus[m][b])
                    row[f"first_{m}"] = int(below[0, 0]) if below.numel() else None  # window index, or never
                if i == len(seen) - 1:
                    row["cosines"] = [round(float(x), 5) for x in cos[b]]
                out[b]["layers"].append(row)
        return out

    def finalize(self, outputs):
        from dart.stats import bootstrap_ci

        outputs = [o for batch in outputs for o in batch]
        kinds = list(dict.fromkeys(o["kind"] for o in outputs)) + ["all"]
        n_layers = len(outputs[0]["layers"]) if outputs else 0
        per_layer = []
        for layer in range(n_layers):
            entry = {"layer": layer}
            for kind in kinds:
                rows = [o["layers"][layer] for o in outputs if kind == "all" or o["kind"] == kind]
                entry[kind] = {f"fire_{m}": sum(r[f"first_{m}"] is not None for r in rows) / len(rows) for m in MARGINS}
                entry[kind]["drop"] = sum(r["drop"] for r in rows) / len(rows)
                entry[kind]["mu"] = sum(r["mu"] for r in rows) / len(rows)
            per_layer.append(entry)
        metrics: dict[str, float | None] = {}
        for kind in kinds:
            rows = [o["layers"][-1] for o in outputs if kind == "all" or o["kind"] == kind]
            metrics[f"{kind}/n"] = float(len(rows))
            series = {f"fire_{m}": [float(r[f"first_{m}"] is not None) for r in rows] for m in MARGINS}
            series.update(drop=[r["drop"] for r in rows], mu=[r["mu"] for r in rows])
            for key, vals in series.items():
                m = sum(vals) / len(vals) if vals else None
                lo, hi = bootstrap_ci(vals, resamples=self.resamples, seed=self.seed) if vals else (None, None)
                metrics.update({f"{kind}/{key}": m, f"{kind}/{key}_lo": lo, f"{kind}/{key}_hi": hi})
        with open(self.ctx.run_dir / SAMPLES_FILE, "w") as f:
            for o in outputs:
                f.write(json.dumps(o) + "\n")
        self.extra.update(per_sample=SAMPLES_FILE, layers=per_layer, margins=list(MARGINS), window=WINDOW,
                          masking_step=MASKING_STEP,
                          bootstrap={"method": "percentile", "resamples": self.resamples, "seed": self.seed,
                                     "level": 0.95, "unit": "sample"})
        return metrics
