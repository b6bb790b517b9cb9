"""Paper tables and figures from finished runs: `python -m dart.tables multirun/<sweep_name>`.

    collect.py      results.json files under sweep/run folders (+ failed, killed and never-started jobs)
    wandb_runs.py   the same from a W&B project (online, needs an API key)
    labels.py       row labels ("DART 70%", "... (ranking=max)") and the order of rows and models
    published.py    the paper's published numbers, beside ours where a cell matches
    build.py        the tables: ten benchmarks, DART-vs-GRIFFIN gain, summarization ROUGE-L, any other metrics
    render.py       Markdown and LaTeX
    plots.py        accuracy vs sparsity, ROUGE-L bars, drift cosine traces
    report.py       all of it into one folder (tables.md, tables.tex, *.png)
Nothing here imports torch, transformers or lm-eval (dart.evals.tasks only for the benchmark list).
"""
