"""python -m dart.bench.overhead [model=llama3_8b] [strategy=dart] [ranking=...]: the engine's state bytes and
FLOPs ratio for any model config, from its architecture numbers alone (a weightless "meta" model counts the
parameters; no download, no memory). Same accounting as the measured `overhead` of results.json
(dart.engine.overhead.analytic, checked against measured tensors in the tests). Writes
benchmarks/overhead/<model>-<strategy>-<ranking>.json (conf/bench_overhead.yaml: `out`, `prompt_tokens`,
`new_tokens`, and the run's model, strategy and ranking groups and `sparsity`)."""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from dart.bench.common import Outputs, run_bench, strategy_of
from dart.errors import DartError


def overhead(cfg: DictConfig, prompt_tokens: int, new_tokens: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from dart.engine.overhead import analytic
    from dart.models.architectures import hf_config
    from dart.models.loading import architecture_numbers
    from dart.models.precision import resolve_dtype

    strategy = strategy_of(cfg)
    spec = getattr(strategy, "spec", None)
    if spec is None:
        raise DartError(f"strategy={cfg.strategy.name} does not run on the DART engine: it has no engine overhead")
    device = "cuda" if cfg.device == "auto" and torch.cuda.is_available() else ("cpu" if cfg.device == "auto" else cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config(architecture_numbers(cfg.model)), dtype=dtype)
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is emb
    params = sum(p.numel() for p in model.parameters()) - emb.numel()
    m = cfg.model
    attn = m.num_heads * (m.head_dim or m.hidden_size // m.num_heads)
    res = analytic(m.num_layers, m.intermediate_size, m.hidden_size, params, spec, prompt_tokens, new_tokens,
                   mask_bytes=torch.empty((), dtype=dtype).element_size(), attn_width=attn,
                   tied_vocab_params=emb.numel() if tied else 0)
    return {"model": m.name, "strategy": cfg.strategy.name, "ranking": cfg.ranking.name, "sparsity": cfg.sparsity,
            "dtype": str(dtype).replace("torch.", ""), "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
            "params": params + emb.numel(), **res}


def bench(cfg: DictConfig) -> dict:
    return overhead(cfg, int(cfg.prompt_tokens), int(cfg.new_tokens))


def summary(res: dict) -> str:
    return "\n".join([
        f"{res['model']} ({res['dtype']}), strategy={res['strategy']} ranking={res['ranking']}, "
        f"{res['prompt_tokens']}-token prompt + {res['new_tokens']} new tokens:",
        f"  state_bytes {res['state_bytes'] / 1e6:.2f} MB  "
        + ", ".join(f"{k} {v / 1e6:.2f}" for k, v in res["state_breakdown"].items() if k != "total"),
        f"  flops_ratio {100 * res['flops_ratio']:.4f}%  (engine {res['engine_flops']:.3g} / model {res['model_flops']:.3g} FLOPs)",
    ])


@hydra.main(version_base="1.3", config_path="../../conf", config_name="bench_overhead")
def main(cfg: DictConfig) -> None:
    run_bench(cfg, bench, Outputs(json="{model}-{strategy}-{ranking}.json", render=summary), "overhead")


if __name__ == "__main__":
    main()
