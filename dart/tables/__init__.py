"""Paper tables and figures from finished runs: `python -m dart.tables multirun/<sweep_name>`.

    collect.py      results.json files under sweep/run folders (+ failed, killed and never-started jobs)
    wandb_runs.py   the same from a W&B project (online, needs an API key)
    labels.py       row labels ("DART 70%", "... (ranking=max)") and the order of rows and models
    published.py    the paper's published numbers, beside ours where a cell matches
    sparsity.py     target and effective sparsity beside every row, marked where effective falls below target
    accuracy.py     accuracies with n and 95% intervals (lm-eval stderr, per-document results), paired differences
    build.py        the tables: ten benchmarks, DART-vs-GRIFFIN gain, summarization ROUGE-L, any other metrics
    summary_gaps.py where a summarization gap comes from: each run against the run it differs from by one thing, paired
    controls.py     the re-trace controls (eval=switch): timing and dense fallback against the detector, paired
    pareto.py       matched compute: quality vs effective sparsity per method, the matched-sparsity table
    decomposition.py  strategy x allocation x protocol: what re-tracing, allocation and protocol each add
    render.py       Markdown and LaTeX
    plots.py        accuracy vs sparsity, quality vs effective sparsity (Pareto), ROUGE-L bars, drift cosine traces
    report.py       all of it into one folder (tables.md, tables.tex, *.png)
Nothing here imports torch, transformers or lm-eval (dart.evals.tasks only for the benchmark list).
"""
