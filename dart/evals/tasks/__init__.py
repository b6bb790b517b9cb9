"""The ten lm-eval benchmarks dart evaluates, their offline stand-ins, and real-format fixtures.

Real benchmarks (`BENCHMARKS`, in report order) need the Hugging Face hub. Where it cannot be reached, each has an
OFFLINE STAND-IN `offline_<bench>`: an lm-eval task (data: YAML + JSONL in ./offline, written by
scripts/build_offline_tasks.py) that uses the real task's prompt format (doc_to_text / doc_to_choice /
doc_to_target / process_docs / description / metrics / few-shot count copied from the installed lm_eval YAMLs,
rows in the real schema) on REAL items that ship offline. They are not the real benchmarks: far fewer items,
different sources, scores not comparable with published numbers. Report them under their own names.

| real benchmark        | shots | offline twin (items)       | real items used (all shipped offline)                  |
|-----------------------|-------|----------------------------|--------------------------------------------------------|
| boolq                 | 0     | offline_boolq (12)         | BBH few-shot yes/no items (causal_judgement, navigate, |
|                       |       |                            | web_of_lies, sports_understanding) as passage +        |
|                       |       |                            | question                                               |
| rte                   | 0     | offline_rte (9)            | BBH formal_fallacies (premises => conclusion; valid =  |
|                       |       |                            | entailment) and boolean_expressions ("Let x = expr."   |
|                       |       |                            | => "x is True." / "x is False.")                       |
| hellaswag             | 0     | offline_hellaswag (133)    | news cloze on ABC news articles 0-149: first 2-3       |
|                       |       |                            | sentences => the true next sentence or one of 3        |
|                       |       |                            | length-matched sentences of other articles (fixed      |
|                       |       |                            | seed); hellaswag schema, real process_docs             |
| winogrande            | 0     | offline_winogrande (131)   | news cloze on articles 150-299: "S1 _ S3", option =    |
|                       |       |                            | the true S2 or another article's sentence; the real    |
|                       |       |                            | winogrande functions (partial scoring of S3)           |
| arc_easy              | 0     | offline_arc_easy (45)      | MMLU dev, school-level STEM subjects (high_school_*,   |
|                       |       |                            | elementary_mathematics, astronomy, conceptual_physics) |
| arc_challenge         | 0     | offline_arc_challenge (42) | MMLU dev, the other non-medical STEM subjects          |
|                       |       |                            | (college_*, abstract_algebra, machine_learning, ...)   |
| openbookqa            | 0     | offline_openbookqa (158)   | MMLU dev, all remaining non-medical subjects           |
|                       |       |                            | (humanities, social sciences, other)                   |
| mmlu (57 subjects,    | 5     | offline_mmlu (group, 280)  | MMLU dev questions of all 57 subjects (3-5 each) from  |
| macro average)        |       |                            | lm_eval's flan_cot_fewshot prompts; shots: the 5 dev   |
|                       |       |                            | questions of a partner subject of the same category    |
| gpqa                  | 5     | offline_gpqa (16; shot     | BBH lettered items with >= 4 options, cut to 4         |
| (gpqa_main_n_shot,    |       | pool 8)                    | choices; shots from a disjoint dev split (each BBH     |
| gpqa_diamond_n_shot,  |       |                            | task's first example)                                  |
| gpqa_extended_n_shot) |       |                            |                                                        |
| medmcqa               | 5     | offline_medmcqa (28; shot  | MMLU dev, medical subjects (anatomy,                   |
|                       |       | pool 7)                    | clinical_knowledge, college_medicine,                  |
|                       |       |                            | medical_genetics, nutrition, professional_medicine,    |
|                       |       |                            | virology); shots: each subject's first question (a     |
|                       |       |                            | disjoint dev split)                                    |

Item counts are those the generator writes today (offline/README.md lists them with every source).
MMLU dev items also feed the arc/openbookqa/medmcqa twins (in other formats), so those twins overlap offline_mmlu.
offline_mmlu reports the macro average (weight_by_size: false) under "acc,none"; lm-eval keys a group's aggregate
by metric name, so one group cannot also carry the micro average: `micro_average()` computes it from the results.

Paths: lm-eval resolves a YAML's relative `data_files` against the current working directory, not the YAML, so
`offline_task_manager()` copies the task YAMLs once per process into a temporary folder with every data file
made absolute (the JSONL files themselves stay in the package) and indexes that folder only.

`upstream_fixture_config(bench)` returns the REAL lm-eval task config (read from lm-eval's own YAML with its
process_docs / doc_to_text functions) pointed at ./fixtures/upstream/<bench>.jsonl (shipped with the package), a few
hand-written rows in the real upstream schema: format fixtures for tests, not data.
"""
from __future__ import annotations

import atexit
import dataclasses
import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from dart.errors import ConfigError, UnavailableError, choice_error

OFFLINE_DIR = Path(__file__).resolve().parent / "offline"


@dataclasses.dataclass(frozen=True)
class Benchmark:
    name: str
    lm_eval_tasks: tuple[str, ...]  # the real lm-eval task (or group) names run for this benchmark
    num_fewshot: int
    offline_twin: str
    fixture_task: str  # the real leaf task upstream_fixture_config builds by default
    metrics: tuple[str, ...] = ("acc",)


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("boolq", ("boolq",), 0, "offline_boolq", "boolq"),
    Benchmark("rte", ("rte",), 0, "offline_rte", "rte"),
    Benchmark("hellaswag", ("hellaswag",), 0, "offline_hellaswag", "hellaswag", ("acc", "acc_norm")),
    Benchmark("winogrande", ("winogrande",), 0, "offline_winogrande", "winogrande"),
    Benchmark("arc_easy", ("arc_easy",), 0, "offline_arc_easy", "arc_easy", ("acc", "acc_norm")),
    Benchmark("arc_challenge", ("arc_challenge",), 0, "offline_arc_challenge", "arc_challenge", ("acc", "acc_norm")),
    Benchmark("openbookqa", ("openbookqa",), 0, "offline_openbookqa", "openbookqa", ("acc", "acc_norm")),
    Benchmark("mmlu", ("mmlu",), 5, "offline_mmlu", "mmlu_anatomy"),
    Benchmark("gpqa", ("gpqa_main_n_shot", "gpqa_diamond_n_shot", "gpqa_extended_n_shot"), 5, "offline_gpqa",
              "gpqa_main_n_shot", ("acc", "acc_norm")),
    Benchmark("medmcqa", ("medmcqa",), 5, "offline_medmcqa", "medmcqa", ("acc", "acc_norm")),
)
BENCHMARK_NAMES: list[str] = [b.name for b in BENCHMARKS]
REAL_TASKS: dict[str, list[str]] = {b.name: list(b.lm_eval_tasks) for b in BENCHMARKS}
NUM_FEWSHOT: dict[str, int] = {b.name: b.num_fewshot for b in BENCHMARKS}
OFFLINE_TWIN: dict[str, str] = {b.name: b.offline_twin for b in BENCHMARKS}


def benchmark(name: str) -> Benchmark:
    for b in BENCHMARKS:
        if b.name == name:
            return b
    raise choice_error("benchmark", name, BENCHMARK_NAMES)


# ----------------------------------------------------------------------------- offline stand-ins
class _FunctionTag(str):
    """A `!function module.fn` scalar carried through load/dump unchanged."""


class _KeepTagsLoader(yaml.SafeLoader):
    pass


class _KeepTagsDumper(yaml.SafeDumper):
    pass


_KeepTagsLoader.add_constructor("!function", lambda loader, node: _FunctionTag(loader.construct_scalar(node)))
_KeepTagsDumper.add_representer(_FunctionTag, lambda dumper, v: dumper.represent_scalar("!function", str(v)))


def _absolute_yaml(src: Path) -> str:
    """The YAML text of `src` with every dataset_kwargs.data_files path made absolute (relative to src's folder)."""
    text = src.read_text(encoding="utf-8")
    cfg = yaml.load(text, Loader=_KeepTagsLoader)  # noqa: S506 (a SafeLoader subclass)
    files = (cfg.get("dataset_kwargs") or {}).get("data_files") if isinstance(cfg, dict) else None
    if not files:
        return text
    for split, rel in list(files.items()):
        path = (src.parent / rel).resolve()
        if not path.is_file():
            raise UnavailableError(f"offline task {src.name}: data file {path} is missing; run "
                                   "`python scripts/build_offline_tasks.py`")
        files[split] = str(path)
    comments = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
    return comments + yaml.dump(cfg, Dumper=_KeepTagsDumper, sort_keys=False, allow_unicode=True, width=1000)


@functools.lru_cache(maxsize=1)
def offline_tasks_dir() -> Path:
    """A per-process copy of ./offline's task YAMLs with absolute data paths (removed at exit)."""
    if not (OFFLINE_DIR / "offline_mmlu.yaml").is_file():
        raise UnavailableError(f"no offline tasks in {OFFLINE_DIR}; run `python scripts/build_offline_tasks.py`")
    dst = Path(tempfile.mkdtemp(prefix="dart-offline-tasks-"))
    atexit.register(shutil.rmtree, dst, ignore_errors=True)
    for src in sorted(OFFLINE_DIR.rglob("*")):
        if src.is_file() and (src.suffix == ".yaml" or src.name.endswith("_yaml")):
            out = dst / src.relative_to(OFFLINE_DIR)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(_absolute_yaml(src), encoding="utf-8")
    return dst


def _no_download_counts() -> None:
    """`datasets` sends a download-count HEAD request to the hub on every load_dataset, even of local JSON files
    (0.1 s each where the hub is refused, up to a 3 s timeout where it hangs: minutes over the 66 offline tasks).
    Local files need no counting, so switch that telemetry off for this process."""
    import datasets

    datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False


def offline_task_manager(**kwargs: Any):
    """An lm-eval TaskManager that knows only the offline stand-ins (offline_boolq, ..., offline_mmlu, ...)."""
    from lm_eval.tasks import TaskManager

    _no_download_counts()
    return TaskManager(include_path=str(offline_tasks_dir()), include_defaults=False, **kwargs)


def micro_average(results: dict, group: str = "offline_mmlu", metric: str = "acc,none") -> float | None:
    """Size-weighted (micro) average of `metric` over a group's leaf tasks, from lm_eval.simple_evaluate's output."""
    res, n_samples = results.get("results", {}), results.get("n-samples", {})
    leaves, todo = [], list(results.get("group_subtasks", {}).get(group, []))
    while todo:
        name = todo.pop(0)
        subs = results.get("group_subtasks", {}).get(name)
        if subs:
            todo.extend(subs)
        else:
            leaves.append(name)
    pairs = [(res[t][metric], n_samples[t]["effective"]) for t in leaves
             if t in res and metric in res[t] and t in n_samples]
    total = sum(n for _, n in pairs)
    return sum(v * n for v, n in pairs) / total if total else None


# ----------------------------------------------------------------------------- real-format fixtures
FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures" / "upstream"


@functools.lru_cache(maxsize=1)
def lm_eval_task_manager():
    """lm-eval's default TaskManager (indexes every built-in task: a few seconds, so built once per process)."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


def real_task_config(task: str) -> dict:
    """The real lm-eval task's config as its YAML defines it (includes merged, !function resolved to callables)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = lm_eval_task_manager().task_index.get(task)
    if entry is None or entry.yaml_path is None:
        raise ConfigError(f"lm-eval has no task {task!r} defined by a YAML file")
    cfg = dict(load_yaml(entry.yaml_path, resolve_func=True))
    for key in ("tag", "group", "task_list"):  # index-only keys, not task config
        cfg.pop(key, None)
    return cfg


def upstream_fixture_config(bench: str, task: str | None = None, fixture_dir: str | Path | None = None) -> dict:
    """The REAL lm-eval task config of `bench` (by default its `fixture_task`; any of its real tasks, or any
    mmlu_<subject> for mmlu, via `task`) with the dataset pointed at <fixture_dir>/<bench>.jsonl, hand-written rows
    in the task's upstream schema. Every split the real task names (train / validation / test / few-shot) reads that
    one file, so the real process_docs, doc_to_text, ... run unchanged. num_fewshot is left as the real YAML has it
    (unset): the fixtures hold 3-4 rows, so pass at most 3 shots."""
    b = benchmark(bench)
    name = task or b.fixture_task
    if name not in b.lm_eval_tasks and name != b.fixture_task and not (bench == "mmlu" and name.startswith("mmlu_")):
        raise choice_error(f"task for benchmark {bench}", name, b.lm_eval_tasks)
    path = Path(fixture_dir or FIXTURE_DIR) / f"{bench}.jsonl"
    if not path.is_file():
        raise UnavailableError(f"no upstream-format fixture {path}")
    _no_download_counts()
    cfg = real_task_config(name)
    splits = sorted({cfg[k] for k in ("training_split", "validation_split", "test_split", "fewshot_split")
                     if cfg.get(k)})
    cfg.update(dataset_path="json", dataset_name=None,
               dataset_kwargs={"data_files": {split: str(path.resolve()) for split in splits}})
    cfg["metadata"] = {**(cfg.get("metadata") or {}),
                       "fixture": f"hand-written format fixture {path.name}, not benchmark data"}
    return cfg
