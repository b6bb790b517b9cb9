"""Benches, each a Hydra app over conf/ writing through one results writer (dart.bench.common):

    python -m dart.bench            decode speed of dense, masked and compacted FFN execution (dart.bench.decode;
                                    conf/bench.yaml)
    python -m dart.bench.scoring    lm-eval scoring speed and exactness per strategy (conf/bench_scoring.yaml)
    python -m dart.bench.batch      eval=ten's harness at several batch sizes: nothing may change (conf/bench_batch.yaml)
    python -m dart.bench.evals      wall time of whole evaluations per strategy (conf/bench_evals.yaml)
    python -m dart.bench.fused      a fused gate/up projection against two matmuls (conf/bench_fused.yaml)
    python -m dart.bench.overhead   the engine's state bytes and FLOPs ratio, analytic (conf/bench_overhead.yaml)
"""
