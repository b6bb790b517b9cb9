"""Offline lm-eval stand-ins (dart/evals/tasks/offline) and the real tasks' prompt code on upstream-format fixtures.

Everything here runs without the Hugging Face hub. lm-eval's default TaskManager (a few seconds to index) and the
loaded offline tasks are built once for the module."""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from dart.evals import tasks as T

REPO = Path(__file__).resolve().parents[1]
OFFLINE = REPO / "dart" / "evals" / "tasks" / "offline"
FIXTURES = REPO / "dart" / "evals" / "tasks" / "fixtures" / "upstream"
FEWSHOT_TWINS = [b.offline_twin for b in T.BENCHMARKS if b.num_fewshot]

# data file of each offline twin's evaluated split, how many choices (= loglikelihood requests) a row has, and
# which choice is right according to the row as written
TWIN_DATA = {
    "offline_boolq": ("boolq.jsonl", lambda r: 2, lambda r: r["label"]),
    "offline_rte": ("rte.jsonl", lambda r: 2, lambda r: r["label"]),
    "offline_hellaswag": ("hellaswag.jsonl", lambda r: len(r["endings"]), lambda r: int(r["label"])),
    "offline_winogrande": ("winogrande.jsonl", lambda r: 2, lambda r: int(r["answer"]) - 1),
    "offline_arc_easy": ("arc_easy.jsonl", lambda r: len(r["choices"]["text"]), lambda r: "ABCD".index(r["answerKey"])),
    "offline_arc_challenge": ("arc_challenge.jsonl", lambda r: len(r["choices"]["text"]),
                              lambda r: "ABCD".index(r["answerKey"])),
    "offline_openbookqa": ("openbookqa.jsonl", lambda r: len(r["choices"]["text"]),
                           lambda r: "ABCD".index(r["answerKey"])),
    "offline_gpqa": ("gpqa_test.jsonl", lambda r: 4, lambda r: "ABCD".index(r["answer"][1])),
    "offline_medmcqa": ("medmcqa_test.jsonl", lambda r: 4, lambda r: r["cop"]),
}


def assert_scores_gold(task, golds: list[int], n_choices: list[int]) -> None:
    """Scoring a doc with its gold choice most likely gives acc (and acc_norm) 1; any other choice gives 0."""
    for doc, gold, n in zip(task.eval_docs, golds, n_choices):
        for pick in (gold, (gold + 1) % n):
            scores = task.process_results(doc, [(0.0 if i == pick else -50.0, False) for i in range(n)])
            want = float(pick == gold)
            assert scores["acc"] == want and scores.get("acc_norm", want) == want, (task.config.task, doc)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """All offline twins loaded through offline_task_manager() from an unrelated working directory."""
    old = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("elsewhere"))
    try:
        loaded = T.offline_task_manager().load(list(T.OFFLINE_TWIN.values()))
        for task in loaded["tasks"].values():
            task.set_fewshot_seed(1234)
            task.build_all_requests()
    finally:
        os.chdir(old)
    return loaded


def test_registry():
    assert T.BENCHMARK_NAMES == ["boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge",
                                 "openbookqa", "mmlu", "gpqa", "medmcqa"]
    assert T.REAL_TASKS["gpqa"] == ["gpqa_main_n_shot", "gpqa_diamond_n_shot", "gpqa_extended_n_shot"]
    assert {b for b, n in T.NUM_FEWSHOT.items() if n} == {"mmlu", "gpqa", "medmcqa"}
    assert set(T.NUM_FEWSHOT.values()) == {0, 5}
    assert T.OFFLINE_TWIN == {b: f"offline_{b}" for b in T.BENCHMARK_NAMES}
    with pytest.raises(ValueError, match="allowed"):
        T.benchmark("piqa")


def test_generator_is_deterministic_and_output_current(tmp_path):
    spec = importlib.util.spec_from_file_location("build_offline_tasks", REPO / "scripts" / "build_offline_tasks.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    gen.build(tmp_path / "offline")
    new = tmp_path / "offline"
    fresh = {p.relative_to(new): p.read_bytes() for p in new.rglob("*") if p.is_file()}
    shipped = {p.relative_to(OFFLINE): p.read_bytes() for p in OFFLINE.rglob("*") if p.is_file()
               and "__pycache__" not in p.parts}
    assert fresh.keys() == shipped.keys()
    assert [k for k in fresh if fresh[k] != shipped[k]] == [], "re-run scripts/build_offline_tasks.py"
    assert sum(len(v) for v in shipped.values()) < 1_000_000


def test_materialized_yamls_are_absolute_and_labelled():
    import yaml

    for path in sorted(T.offline_tasks_dir().rglob("*.yaml")):
        text = path.read_text()
        assert "OFFLINE STAND-IN" in text and "NOT the real benchmark" in text, path.name
        cfg = yaml.load(text, Loader=T._KeepTagsLoader)
        assert cfg["metadata"]["offline_stand_in"] is True and cfg["metadata"]["source"], path.name
        if "group" in cfg:
            continue
        assert cfg["dataset_path"] == "json" and "test" in cfg["dataset_kwargs"]["data_files"], path.name
        for f in cfg["dataset_kwargs"]["data_files"].values():
            assert Path(f).is_absolute() and Path(f).is_file() and Path(f).is_relative_to(OFFLINE), (path.name, f)
    shipped = (OFFLINE / "offline_boolq.yaml").read_text()
    assert "dataset_path: json" in shipped and "test: data/boolq.jsonl" in shipped  # relative in the package


@pytest.mark.parametrize("twin", [t for t in T.OFFLINE_TWIN.values() if t != "offline_mmlu"])
def test_twin_builds_requests(offline, twin):
    task = offline["tasks"][twin]
    fname, n_choices, gold = TWIN_DATA[twin]
    data = rows(OFFLINE / "data" / fname)
    assert len(task.eval_docs) == len(data) >= 9
    assert len(task.instances) == sum(n_choices(r) for r in data)
    assert_scores_gold(task, [gold(r) for r in data], [n_choices(r) for r in data])
    assert {i.request_type for i in task.instances} == {"loglikelihood"}
    assert task.config.num_fewshot == T.NUM_FEWSHOT[twin.removeprefix("offline_")]


def test_offline_mmlu_group(offline):
    subjects = sorted(p.stem for p in (OFFLINE / "data" / "mmlu").glob("*.jsonl"))
    assert len(subjects) == 57
    assert offline["group_map"]["offline_mmlu"] == [f"offline_mmlu_{s}" for s in subjects]
    group = offline["groups"]["offline_mmlu"]
    assert [(a.metric, a.weight_by_size) for a in group.aggregate_metric_list] == [("acc", False)]  # macro
    n_docs = 0
    for s in subjects:
        task = offline["tasks"][f"offline_mmlu_{s}"]
        n = len(rows(OFFLINE / "data" / "mmlu" / f"{s}.jsonl"))
        assert len(task.eval_docs) == n >= 3 and len(task.instances) == 4 * n
        assert_scores_gold(task, [r["answer"] for r in rows(OFFLINE / "data" / "mmlu" / f"{s}.jsonl")], [4] * n)
        assert task.config.num_fewshot == 5
        n_docs += n
    assert n_docs >= 280


def test_twins_copy_the_real_prompt_fields(offline):
    """Each twin renders with the real task's own templates / functions (gpqa: its fields after process_docs)."""
    fields = ("doc_to_text", "doc_to_choice", "doc_to_target", "description", "target_delimiter",
              "fewshot_delimiter", "process_docs")
    for b in T.BENCHMARKS:
        twin = offline["tasks"]["offline_mmlu_anatomy" if b.name == "mmlu" else b.offline_twin].config
        real = T.real_task_config(b.fixture_task)
        for f in fields:
            if b.name == "gpqa" and f == "process_docs":
                assert twin.process_docs is None  # rows are stored already processed (deterministic order)
                continue
            mine, theirs = getattr(twin, f), real.get(f, getattr(twin.__class__, f, None))
            if callable(theirs):
                assert (mine.__module__, mine.__name__) == (theirs.__module__, theirs.__name__), (b.name, f)
            else:
                assert mine == theirs, (b.name, f)
        assert [m["metric"] for m in twin.metric_list] == [m["metric"] for m in real["metric_list"]]
        assert [m["metric"] for m in twin.metric_list] == list(b.metrics)


def test_mmlu_prompt_matches_real_format_exactly(offline):
    task = offline["tasks"]["offline_mmlu_anatomy"]
    doc = task.eval_docs[0]
    expected = ("Which of the following is the body cavity that contains the pituitary gland?\n"
                "A. Abdominal\nB. Cranial\nC. Pleural\nD. Spinal\nAnswer:")
    assert task.doc_to_text(doc) == expected
    assert task.doc_to_choice(doc) == ["A", "B", "C", "D"] and task.doc_to_target(doc) == 1
    # the real mmlu_anatomy task (lm-eval's own YAML) renders the same doc identically
    from lm_eval.api.task import ConfigurableTask

    real = ConfigurableTask(config=T.upstream_fixture_config("mmlu"))
    assert real.doc_to_text(doc) == expected
    ctx = task.fewshot_context(doc, num_fewshot=5)
    assert ctx.startswith("The following are multiple choice questions (with answers) about anatomy.\n\n")
    assert ctx.endswith("\n\n" + expected) and ctx.count("\nAnswer: ") == 5
    first = task.instances[0]
    assert first.args == (ctx, " A") and first.doc_id == 0


@pytest.mark.parametrize("twin", FEWSHOT_TWINS)
def test_fewshot_examples_never_include_the_evaluated_doc(offline, twin):
    names = [t for t in offline["group_map"].get(twin, [twin])]
    for name in names:
        task = offline["tasks"][name]
        dev_texts = {task.doc_to_text(d) for d in task.fewshot_docs()}
        assert len(dev_texts) >= 5
        for inst in task.instances:
            if inst.idx != 0:
                continue
            prompt = task.doc_to_text(inst.doc)
            assert prompt not in dev_texts, (name, prompt[:60])
            shots = inst.args[0][: -len(prompt)]
            assert shots.count("\nAnswer: ") == 5 and prompt not in shots, name


def test_upstream_fixtures_ship_with_the_package():
    """The format fixtures are package data (pyproject: evals/tasks/**/*), never read from tests/."""
    assert T.FIXTURE_DIR == FIXTURES and {p.stem for p in FIXTURES.glob("*.jsonl")} == set(T.BENCHMARK_NAMES)
    assert "tests" not in T.FIXTURE_DIR.relative_to(REPO).parts
    assert '"evals/tasks/**/*"' in (REPO / "pyproject.toml").read_text()


@pytest.mark.parametrize("bench", T.BENCHMARK_NAMES)
def test_upstream_fixture_runs_real_prompt_code(bench):
    from lm_eval.api.task import ConfigurableTask

    cfg = T.upstream_fixture_config(bench)
    assert cfg["dataset_path"] == "json" and "fixture" in cfg["metadata"]
    task = ConfigurableTask(config=cfg)
    task.set_fewshot_seed(1234)
    task.build_all_requests()
    data = rows(FIXTURES / f"{bench}.jsonl")
    assert 3 <= len(data) <= 4 and len(task.eval_docs) == len(data)
    n_choices = 2 if bench in ("boolq", "rte", "winogrande") else 4
    assert len(task.instances) == n_choices * len(data)
    ctx, cont = task.instances[0].args
    expected = {
        "boolq": ("Fixture passage. Water is a liquid at room temperature and wets most surfaces it touches.\n"
                  "Question: is water wet at room temperature?\nAnswer:", " no"),
        "rte": ("Fixture premise: the red car was parked outside the bakery all morning.\n"
                "Question: A car was parked outside the bakery. True or False?\nAnswer:", " True"),
        # real hellaswag process_docs: "label: ctx_a Ctx_b", "[title]" and double spaces cleaned from endings
        "hellaswag": ("Making tea: A person fills a kettle with water and switches it on. Then, the person",
                      " pours the hot water over a tea bag in a cup."),
        # real winogrande functions: one context per option, the rest of the sentence is the continuation
        "winogrande": ("The trophy did not fit in the fixture suitcase because the trophy", " was too big."),
        "arc_easy": ("Question: Which fixture object is a source of light?\nAnswer:", " a rock"),
        "arc_challenge": ("Question: Which fixture object is a source of light?\nAnswer:", " a rock"),
        "openbookqa": ("A fixture magnet will stick to", " wood"),
        "mmlu": ("The following are multiple choice questions (with answers) about anatomy.\n\n"
                 "Which fixture bone protects the brain?\nA. Femur\nB. Skull\nC. Tibia\nD. Radius\nAnswer:", " A"),
        "medmcqa": ("Question: Which fixture vitamin deficiency causes scurvy?\nChoices:\nA. Vitamin A\n"
                    "B. Vitamin B12\nC. Vitamin C\nD. Vitamin D\nAnswer:", " A"),
    }
    if bench == "gpqa":  # the real process_docs shuffles with a module-level RNG: check the shape, not the order
        head = ("Here are some example questions from experts. Answer the final question yourself, following the "
                "format of the previous questions exactly.\nQuestion: What is 2 + 2 in this fixture?\nChoices:\n(A) ")
        assert ctx.startswith(head) and ctx.endswith("\nAnswer:") and cont == " (A)"
        doc = task.eval_docs[1]  # " Hydrogen " is stripped by the real preprocess
        assert "Hydrogen" in [doc[f"choice{i}"] for i in range(1, 5)]
        assert doc[f"choice{'ABCD'.index(doc['answer'][1]) + 1}"] == "Hydrogen"
    else:
        assert (ctx, cont) == expected[bench]
    if bench == "arc_easy":  # numeric ARC labels ("1".."4") resolve through the real doc_to_target template
        assert task.doc_to_target(task.eval_docs[2]) == 2
    if T.NUM_FEWSHOT[bench]:  # the few-shot path of the real config also runs (fixtures hold 3-4 rows)
        doc = task.eval_docs[0]  # eval_docs re-runs process_docs on each access (gpqa re-shuffles): take it once
        shots_ctx = task.fewshot_context(doc, num_fewshot=2)
        assert shots_ctx.count("Answer:") == 3 and shots_ctx.endswith(task.doc_to_text(doc))


def test_upstream_fixture_other_real_tasks():
    cfg = T.upstream_fixture_config("gpqa", task="gpqa_diamond_n_shot")
    assert cfg["task"] == "gpqa_diamond_n_shot" and cfg["dataset_kwargs"]["data_files"] == {
        "train": str((FIXTURES / "gpqa.jsonl").resolve())}
    assert T.upstream_fixture_config("mmlu", task="mmlu_virology")["description"].endswith("about virology.\n\n")
    with pytest.raises(ValueError):
        T.upstream_fixture_config("gpqa", task="hellaswag")


def test_simple_evaluate_tiny_llama_on_offline_mmlu():
    import lm_eval
    import torch
    import transformers
    from lm_eval.models.huggingface import HFLM

    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(REPO / "dart" / "assets" / "tiny_bpe_1k.json"),
                                               eos_token="<|endoftext|>", pad_token="<|pad|>")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=1024, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                                   eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = transformers.LlamaForCausalLM(cfg).eval()
    # 5-shot MMLU prompts are ~4k tokens with a 1k vocabulary: cap the window (left-truncation) to keep this fast
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=4, max_length=256)
    out = lm_eval.simple_evaluate(model=lm, tasks=["offline_mmlu"], task_manager=T.offline_task_manager(), limit=2)
    res = out["results"]
    assert 0.0 <= res["offline_mmlu"]["acc,none"] <= 1.0
    assert res["offline_mmlu"]["alias"] == "mmlu (offline stand-in)"
    leaves = out["group_subtasks"]["offline_mmlu"]
    assert len(leaves) == 57 and all(0.0 <= res[t]["acc,none"] <= 1.0 for t in leaves)
    assert all(out["n-shot"][t] == 5 and out["n-samples"][t]["effective"] == 2 for t in leaves)
    assert out["configs"]["offline_mmlu_anatomy"]["metadata"]["offline_stand_in"] is True
    micro = T.micro_average(out)
    assert 0.0 <= micro <= 1.0
    macro = sum(res[t]["acc,none"] for t in leaves) / len(leaves)
    assert res["offline_mmlu"]["acc,none"] == pytest.approx(macro)
