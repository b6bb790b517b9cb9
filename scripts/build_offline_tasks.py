#!/usr/bin/env python
"""Write the offline stand-in lm-eval tasks into dart/evals/tasks/offline/ (YAML task definitions + JSONL data).

The Hugging Face hub cannot be reached here, so the ten real benchmarks (boolq, rte, hellaswag, winogrande,
arc_easy, arc_challenge, openbookqa, mmlu, gpqa, medmcqa) cannot be downloaded. This script builds, from REAL
items that exist offline, one `offline_<bench>` task per benchmark that uses the real task's prompt format:

- MMLU dev questions that ship inside lm_eval (mmlu/flan_cot_fewshot/_cot_prompts.json; 57 subjects, 3-5
  questions each, parsed from "Q: ... (A) .. (B) .. (C) .. (D) .. A: ... The answer is (X)"). These are the MMLU
  *dev* split (the usual few-shot examples), not the test set.
- BIG-Bench Hard few-shot examples that ship inside lm_eval (bbh/fewshot/*.yaml; 81 examples, 69 unique:
  39 lettered multiple choice, 18 yes/no / True-False / valid-invalid, 12 free-form and unused).
- 300 real ABC news articles (dart.data.texts.news_articles, gensim's lee_background.cor) for cloze tasks.

Which source feeds which twin, and how, is tabled in dart/evals/tasks/__init__.py and written to the generated
README.md. Prompt fields (doc_to_text, doc_to_choice, doc_to_target, process_docs, description, metric_list,
few-shot sampler) are COPIED from the installed lm_eval task YAMLs, and the data rows are written in the real
task's schema, so each twin renders prompts with the real template (functions are referenced as importable
`lm_eval.tasks.<dir>.<module>.<fn>`). The output is deterministic: running it twice writes identical bytes.

Usage: python scripts/build_offline_tasks.py [--out DIR]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import shutil
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lm_eval  # noqa: E402

LM_TASKS = Path(lm_eval.__file__).resolve().parent / "tasks"
DEFAULT_OUT = ROOT / "dart" / "evals" / "tasks" / "offline"
GENERATOR = "scripts/build_offline_tasks.py"
VERSION = 1.0

MEDICAL = ("anatomy", "clinical_knowledge", "college_medicine", "medical_genetics", "professional_medicine",
           "nutrition", "virology")
# arc_easy <- school-level STEM subjects; arc_challenge <- the other (college-level) STEM subjects;
# openbookqa <- every remaining non-medical subject (humanities, social sciences, other).
ARC_EASY = ("astronomy", "conceptual_physics", "elementary_mathematics", "high_school_biology",
            "high_school_chemistry", "high_school_computer_science", "high_school_mathematics",
            "high_school_physics", "high_school_statistics")

# BBH few-shot tasks whose targets are binary answers
BOOLQ_BBH = ("causal_judgement", "navigate", "web_of_lies", "sports_understanding")
RTE_BBH = ("formal_fallacies", "boolean_expressions")


# ----------------------------------------------------------------------------- YAML with !function tags
class FunctionRef(str):
    """A `!function module.fn` reference, kept as a tag when dumping."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(FunctionRef, lambda d, v: d.represent_scalar("!function", str(v)))


def dump_yaml(cfg: dict, header: str) -> str:
    body = yaml.dump(cfg, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000, default_flow_style=False)
    return header + body


def real_yaml(rel: str) -> dict:
    """A real lm-eval task YAML (includes merged, functions as importable references)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(LM_TASKS / rel, resolve_func=False)
    out = {}
    for k, v in cfg.items():
        if isinstance(v, str) and v.startswith(str(LM_TASKS)):  # an unresolved !function: absolute file path
            rel_fn = Path(v).relative_to(LM_TASKS).as_posix()  # e.g. hellaswag/utils.process_docs
            out[k] = FunctionRef("lm_eval.tasks." + rel_fn.replace("/", "."))
        else:
            out[k] = v
    return out


PROMPT_KEYS = ("output_type", "process_docs", "doc_to_text", "doc_to_target", "doc_to_choice", "description",
               "target_delimiter", "fewshot_delimiter", "metric_list")


def prompt_fields(real: dict, drop: tuple[str, ...] = ()) -> dict:
    return {k: real[k] for k in PROMPT_KEYS if k in real and k not in drop}


# ----------------------------------------------------------------------------- real offline sources
def mmlu_dev() -> dict[str, list[dict]]:
    """{subject: [{question, subject, choices, answer}]} from lm_eval's flan CoT few-shot prompts (MMLU dev)."""
    raw = json.loads((LM_TASKS / "mmlu" / "flan_cot_fewshot" / "_cot_prompts.json").read_text(encoding="utf-8"))
    ans_re = re.compile(r"The answer is \(([A-Z])\)\.?\s*$")
    out: dict[str, list[dict]] = {}
    seen: set[str] = set()
    for subject in sorted(raw):
        body = raw[subject].split("\n\n", 1)[1]
        items = []
        for block in re.split(r"\n\nQ: ", "\n\n" + body.strip()):
            if not block.strip():
                continue
            head, sep, cot = block.partition("\nA: ")  # question + options, then the chain of thought
            ans = ans_re.search(cot)
            start = head.rfind("\n(A) ")  # options: one line "(A) .. (B) .." or one line each
            if not sep or not ans or start < 0:
                continue
            question, opts, ans = head[:start], head[start + 1:], ans.group(1)
            parts = re.split(r"\s*\(([A-Z])\) ", " " + opts)
            letters, texts = parts[1::2], [t.strip() for t in parts[2::2]]
            if letters != list("ABCD") or ans not in "ABCD":  # one college_chemistry item has five options
                continue
            if question.strip() in seen:  # college_physics lists one question twice
                continue
            seen.add(question.strip())
            items.append({"question": question, "subject": subject, "choices": texts, "answer": "ABCD".index(ans)})
        out[subject] = items
    return out


def mmlu_categories() -> dict[str, str]:
    cats = {}
    for p in sorted((LM_TASKS / "mmlu" / "default").glob("mmlu_*.yaml")):
        cfg = yaml.safe_load(p.read_text())
        if isinstance(cfg, dict) and "dataset_name" in cfg and isinstance(cfg.get("tag"), str):
            cats[cfg["dataset_name"]] = cfg["tag"].removeprefix("mmlu_").removesuffix("_tasks")
    return cats


def bbh_samples() -> list[dict]:
    """Unique BBH few-shot examples: [{task, idx, input, target}] (several tasks share identical examples)."""
    seen, out = set(), []
    for p in sorted((LM_TASKS / "bbh" / "fewshot").glob("*.yaml")):
        if p.name.startswith("_"):
            continue
        cfg = yaml.safe_load(p.read_text())
        for i, s in enumerate(cfg["fewshot_config"]["samples"]):
            if s["input"] in seen:
                continue
            seen.add(s["input"])
            out.append({"task": p.stem, "idx": i, "input": s["input"], "target": s["target"].strip()})
    return out


_BOUNDARY = re.compile(r"(?<=[.!?])([\"'\u201d]?)\s+(?=[\"'\u201c(]?[A-Z0-9])")
_ABBREV = re.compile(r"(?:\b(?:Mr|Mrs|Ms|Dr|St|Jr|Sr|No|vs|Co|Lt|Gen|Sgt|Capt|Col|Prof|Rev|Inc|Ltd|Mt|Ft|Gov|Sen|Rep|"
                     r"Pty|Corp|Jan|Feb|Aug|Sept|Oct|Nov|Dec)|\b[A-Z]|\b(?:[A-Za-z]\.)+[A-Za-z])\.$")


def sentences(text: str) -> list[str]:
    parts = _BOUNDARY.split(text)
    out, buf = [], parts[0]
    for i in range(1, len(parts), 2):
        buf += parts[i]
        if _ABBREV.search(buf):  # "Mr. Smith", "U.S. troops": not a sentence end
            buf += " " + parts[i + 1]
        else:
            out.append(buf.strip())
            buf = parts[i + 1]
    out.append(buf.strip())
    return [s for s in out if s]


def clean_sentence(s: str) -> bool:
    """Usable as a cloze ending or distractor: ordinary length, balanced double quotes."""
    return 40 <= len(s) <= 280 and s.count('"') % 2 == 0 and not s.startswith(('"', "'", "("))


# ----------------------------------------------------------------------------- writers
def rng_for(*key) -> random.Random:
    return random.Random(hashlib.sha256(repr(key).encode()).hexdigest())


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def header(bench: str, real_tasks: list[str], source: str) -> str:
    return (f"# OFFLINE STAND-IN for lm-eval `{bench}` ({', '.join(real_tasks)}): NOT the real benchmark.\n"
            f"# Items: {source}\n"
            f"# Generated by {GENERATOR}; do not edit by hand (re-run the script).\n")


def metadata(bench: str, real_tasks: list[str], source: str, n_test: int, n_fewshot_pool: int | None = None) -> dict:
    md = {"version": VERSION, "offline_stand_in": True, "stands_in_for": bench, "real_lm_eval_tasks": real_tasks,
          "source": source, "n_test": n_test}
    if n_fewshot_pool is not None:
        md["n_fewshot_pool"] = n_fewshot_pool
    md["note"] = (f"Offline stand-in built from real items that ship offline; scores are NOT comparable to the real "
                  f"{bench} benchmark and must not be reported as {bench} results.")
    return md


def task_yaml(out: Path, name: str, bench: str, real_tasks: list[str], source: str, prompt: dict,
              data: dict[str, str], n_test: int, num_fewshot: int, fewshot: dict | None = None,
              alias: str | None = None, n_pool: int | None = None) -> None:
    cfg: dict = {"task": name, "task_alias": alias or f"{bench} (offline stand-in)",
                 "dataset_path": "json", "dataset_kwargs": {"data_files": data}, "test_split": "test"}
    if fewshot is not None:  # a disjoint "dev" split holds the few-shot examples
        cfg["fewshot_split"] = "dev"
        if fewshot.get("sampler"):
            cfg["fewshot_config"] = {"sampler": fewshot["sampler"]}
    cfg.update(prompt)
    cfg["num_fewshot"] = num_fewshot
    cfg["metadata"] = metadata(bench, real_tasks, source, n_test, n_pool)
    (out / f"{name}.yaml").write_text(dump_yaml(cfg, header(bench, real_tasks, source)), encoding="utf-8")


# ----------------------------------------------------------------------------- the ten twins
def build_boolq(out: Path, bbh: list[dict]) -> dict:
    rows = []
    for s in (x for x in bbh if x["task"] in BOOLQ_BBH):
        text = s["input"].split("\nOptions:")[0].strip()
        if s["task"] == "causal_judgement":
            preamble, story = text.split("\n", 1)
            m = re.match(r"(?s)(.*[.!\"'])\s+((?:Did|Does|Do|Is|Was|Were|Will|Would|Could|Can|Has|Have)\b[^\n]*\?)$",
                         story)
            passage, question = preamble + " " + m.group(1), m.group(2)
        elif s["task"] == "navigate":
            question, passage = text.split("? ", 1)
        elif s["task"] == "web_of_lies":
            passage, question = text.removeprefix("Question: ").rsplit(". ", 1)
            passage += "."
        else:  # sports_understanding: Is the following sentence plausible? "..."
            question, passage = text.split("? ", 1)
            passage = passage.strip('"')
            question = "is this sentence plausible"
        question = question.strip().rstrip("?")
        question = question[0].lower() + question[1:]
        rows.append({"passage": passage.strip(), "question": question, "label": int(s["target"].lower() == "yes"),
                     "idx": len(rows), "source": f"bbh/{s['task']}#{s['idx']}"})
    write_jsonl(out / "data" / "boolq.jsonl", rows)
    src = ("BIG-Bench Hard few-shot examples with yes/no answers (causal_judgement, navigate, web_of_lies, "
           "sports_understanding), split into passage + question")
    task_yaml(out, "offline_boolq", "boolq", ["boolq"], src, prompt_fields(real_yaml("super_glue/boolq/default.yaml")),
              {"test": "data/boolq.jsonl"}, len(rows), 0)
    return {"task": "offline_boolq", "n": len(rows), "source": src}


def build_rte(out: Path, bbh: list[dict]) -> dict:
    rows = []
    for s in (x for x in bbh if x["task"] in RTE_BBH):
        if s["task"] == "formal_fallacies":
            arg = s["input"].split("\nIs the argument")[0].strip().strip('"')
            arg = arg.split("The following argument pertains to this question: ", 1)[1]
            m = re.match(r"(?s)(.*?)\s*(It follows that|We may conclude:?|Hence,?|So,?|Therefore,?)\s*(.*)$", arg)
            premises, conclusion = m.group(1), m.group(3)
            conclusion = conclusion[0].upper() + conclusion[1:]
            rows.append({"sentence1": premises, "sentence2": conclusion, "label": 0 if s["target"] == "valid" else 1,
                         "idx": len(rows), "source": f"bbh/{s['task']}#{s['idx']}"})
        else:  # boolean_expressions: "<expr> is" -> True/False; both hypotheses, so labels are balanced
            expr = s["input"].removesuffix(" is").strip()
            for claim in ("True", "False"):
                rows.append({"sentence1": f"Let x = {expr}.", "sentence2": f"x is {claim}.",
                             "label": 0 if s["target"] == claim else 1, "idx": len(rows),
                             "source": f"bbh/{s['task']}#{s['idx']}"})
    write_jsonl(out / "data" / "rte.jsonl", rows)
    src = ("BIG-Bench Hard few-shot examples: formal_fallacies (premises -> conclusion; valid = entailment) and "
           "boolean_expressions (x = expression -> 'x is True/False', both hypotheses)")
    task_yaml(out, "offline_rte", "rte", ["rte"], src, prompt_fields(real_yaml("glue/rte/default.yaml")),
              {"test": "data/rte.jsonl"}, len(rows), 0)
    return {"task": "offline_rte", "n": len(rows), "source": src}


def news_pool(articles) -> tuple[list[list[str]], list[tuple[int, str]]]:
    sents = [sentences(a) for a in articles]
    pool, seen = [], set()
    for i, ss in enumerate(sents):
        for s in ss[1:]:  # not lead sentences, which read differently
            if clean_sentence(s) and s not in seen:
                seen.add(s)
                pool.append((i, s))
    return sents, pool


def distractors(pool, sents, article: int, gold: str, k: int, rng: random.Random) -> list[str]:
    """k sentences from other articles, length-matched to the gold sentence (so length is no cue). Articles that
    share any sentence with this one (the corpus has a few near-duplicate stories) are not used."""
    own = set(sents[article])
    related = {i for i, ss in enumerate(sents) if own.intersection(ss)}
    cands = [s for i, s in pool if i not in related and s != gold]
    sample = rng.sample(cands, 40)
    sample.sort(key=lambda s: (abs(len(s) - len(gold)), s))
    return sample[:k]


def build_hellaswag(out: Path, articles, ids: range) -> dict:
    sents, pool = news_pool(articles)
    rows, seen = [], set()
    for a in ids:
        ss = sents[a]
        n_ctx = 2 if sum(len(s) for s in ss[:2]) >= 150 else 3  # first 2-3 sentences, >= ~150 characters
        if len(ss) <= n_ctx or any(len(s) < 20 for s in ss[:n_ctx]):
            continue
        ctx, gold = " ".join(ss[:n_ctx]), ss[n_ctx]
        if not clean_sentence(gold) or ctx.count('"') % 2 or ctx in seen:
            continue
        seen.add(ctx)
        rng = rng_for("hellaswag", a)
        endings = distractors(pool, sents, a, gold, 3, rng)
        label = rng.randrange(4)
        endings.insert(label, gold)
        rows.append({"ind": a, "activity_label": "News", "ctx_a": ctx, "ctx_b": "", "endings": endings,
                     "source_id": f"lee_background.cor#{a}", "label": str(label)})
    write_jsonl(out / "data" / "hellaswag.jsonl", rows)
    src = (f"news cloze on real ABC news articles {ids.start}-{ids.stop - 1} (dart.data.texts.news_articles): "
           "context = first 2-3 sentences, endings = the true next sentence + 3 length-matched sentences from other "
           "articles (fixed seed); written in hellaswag's schema with activity_label 'News'")
    task_yaml(out, "offline_hellaswag", "hellaswag", ["hellaswag"], src,
              prompt_fields(real_yaml("hellaswag/hellaswag.yaml")), {"test": "data/hellaswag.jsonl"}, len(rows), 0)
    return {"task": "offline_hellaswag", "n": len(rows), "source": src}


def build_winogrande(out: Path, articles, ids: range) -> dict:
    sents, pool = news_pool(articles)
    rows, seen = [], set()
    for a in ids:
        ss = sents[a]
        if len(ss) < 3:
            continue
        s0, s1, s2 = ss[:3]
        if not (clean_sentence(s1) and clean_sentence(s2) and 20 <= len(s0) and s0.count('"') % 2 == 0) or s0 in seen:
            continue
        seen.add(s0)
        rng = rng_for("winogrande", a)
        (other,) = distractors(pool, sents, a, s1, 1, rng)
        answer = rng.randrange(2)
        options = [s1, other] if answer == 0 else [other, s1]
        rows.append({"sentence": f"{s0} _ {s2}", "option1": options[0], "option2": options[1],
                     "answer": str(answer + 1), "source": f"lee_background.cor#{a}"})
    write_jsonl(out / "data" / "winogrande.jsonl", rows)
    src = (f"news cloze on real ABC news articles {ids.start}-{ids.stop - 1}: sentence = 'S1 _ S3', options = the true "
           "S2 or a length-matched sentence from another article (fixed seed); scored like winogrande (partial "
           "evaluation: log-likelihood of S3 after 'S1 <option>')")
    task_yaml(out, "offline_winogrande", "winogrande", ["winogrande"], src,
              prompt_fields(real_yaml("winogrande/default.yaml")), {"test": "data/winogrande.jsonl"}, len(rows), 0)
    return {"task": "offline_winogrande", "n": len(rows), "source": src}


def _arc_row(item: dict, i: int, stem_key: str) -> dict:
    return {"id": f"mmlu_dev/{item['subject']}#{i}", stem_key: item["question"].strip(),
            "choices": {"text": item["choices"], "label": list("ABCD")}, "answerKey": "ABCD"[item["answer"]]}


def build_arc_obqa(out: Path, dev: dict[str, list[dict]], cats: dict[str, str]) -> list[dict]:
    easy = [s for s in ARC_EASY if s in dev]
    challenge = [s for s in dev if cats.get(s) == "stem" and s not in ARC_EASY and s not in MEDICAL]
    obqa = [s for s in dev if s not in easy and s not in challenge and s not in MEDICAL]
    results = []
    for bench, subjects, rel, key in (("arc_easy", easy, "arc/arc_easy.yaml", "question"),
                                      ("arc_challenge", challenge, "arc/arc_challenge.yaml", "question"),
                                      ("openbookqa", obqa, "openbookqa/openbookqa.yaml", "question_stem")):
        rows = [_arc_row(it, i, key) for s in sorted(subjects) for i, it in enumerate(dev[s])]
        write_jsonl(out / "data" / f"{bench}.jsonl", rows)
        src = (f"MMLU dev questions (lm_eval flan_cot_fewshot prompts) from {len(subjects)} subjects: "
               + ", ".join(sorted(subjects)) + f"; written in {bench}'s schema (answer texts scored as choices)")
        task_yaml(out, f"offline_{bench}", bench, [bench], src, prompt_fields(real_yaml(rel)),
                  {"test": f"data/{bench}.jsonl"}, len(rows), 0)
        results.append({"task": f"offline_{bench}", "n": len(rows), "source": src})
    return results


def build_mmlu(out: Path, dev: dict[str, list[dict]], cats: dict[str, str]) -> dict:
    """One subtask per subject; its 5 shots come (first_n, as in real MMLU) from a partner subject of the same
    category, because the 3-5 dev questions of a subject are its evaluated items (shots must be disjoint)."""
    subjects = sorted(dev)
    full = [s for s in subjects if len(dev[s]) >= 5]
    for s in subjects:
        write_jsonl(out / "data" / "mmlu" / f"{s}.jsonl", dev[s])
    (out / "mmlu").mkdir(exist_ok=True)
    template = {"test_split": "test", "fewshot_split": "dev"}
    template_real = real_yaml("mmlu/default/mmlu_abstract_algebra.yaml")
    template["fewshot_config"] = {"sampler": template_real["fewshot_config"]["sampler"]}
    template.update(prompt_fields(template_real, drop=("description",)))
    template["num_fewshot"] = 5
    (out / "mmlu" / "_offline_mmlu_template_yaml").write_text(dump_yaml(template, header(
        "mmlu", ["mmlu"], "shared fields of the offline_mmlu_<subject> tasks (copied from lm_eval's mmlu "
        "_default_template_yaml)")), encoding="utf-8")
    tasks = []
    for s in subjects:
        same_cat = [t for t in full if cats[t] == cats[s]]
        after = [t for t in same_cat if t > s] + [t for t in same_cat if t < s]
        partner = after[0]
        real = real_yaml(f"mmlu/default/mmlu_{s}.yaml")
        for k in template:  # every subject of the real mmlu shares the template's prompt fields
            assert real.get(k, template[k]) == template[k] or k in ("test_split", "fewshot_split"), k
        src = (f"MMLU dev questions of '{s}' (lm_eval flan_cot_fewshot prompts); 5-shot examples: the MMLU dev "
               f"questions of '{partner}' (same category, disjoint)")
        cfg = {"include": "_offline_mmlu_template_yaml", "task": f"offline_mmlu_{s}", "task_alias": s,
               "description": real["description"], "dataset_path": "json",
               "dataset_kwargs": {"data_files": {"test": f"../data/mmlu/{s}.jsonl",
                                                 "dev": f"../data/mmlu/{partner}.jsonl"}},
               "metadata": {"version": VERSION, "offline_stand_in": True, "stands_in_for": f"mmlu_{s}",
                            "source": src, "n_test": len(dev[s]), "fewshot_subject": partner, "category": cats[s]}}
        (out / "mmlu" / f"offline_mmlu_{s}.yaml").write_text(
            dump_yaml(cfg, header("mmlu", [f"mmlu_{s}"], src)), encoding="utf-8")
        tasks.append(f"offline_mmlu_{s}")
    n = sum(len(v) for v in dev.values())
    src = (f"MMLU dev questions shipped in lm_eval (flan_cot_fewshot/_cot_prompts.json), {len(subjects)} subjects, "
           f"{n} questions; each subject 5-shot from a partner subject's dev questions; macro average over subjects")
    group = {"group": "offline_mmlu", "group_alias": "mmlu (offline stand-in)", "task": tasks,
             "aggregate_metric_list": [{"metric": "acc", "aggregation": "mean", "weight_by_size": False}],
             "metadata": metadata("mmlu", ["mmlu"], src, n)}
    (out / "offline_mmlu.yaml").write_text(dump_yaml(group, header("mmlu", ["mmlu"], src)), encoding="utf-8")
    return {"task": "offline_mmlu", "n": n, "subtasks": len(tasks), "source": src}


def build_gpqa(out: Path, bbh: list[dict]) -> dict:
    """BBH lettered items with >= 4 options, cut to GPQA's 4 (gold + 3 seeded distractors) and stored already in
    the shape the real gpqa process_docs produces (its module-level RNG would make the order run-dependent)."""
    rows = []
    for s in bbh:
        if not s["target"].startswith("(") or "\nOptions:\n" not in s["input"]:
            continue
        question, opts = s["input"].split("\nOptions:\n", 1)
        options = re.findall(r"^\(([A-Z])\) (.*)$", opts, re.M)
        if len(options) < 4:
            continue
        gold_letter = s["target"].strip("()")
        gold = dict(options)[gold_letter]
        rng = rng_for("gpqa", s["task"], s["idx"])
        wrong = rng.sample([t for letter, t in options if letter != gold_letter], 3)
        choices = wrong + [gold]
        rng.shuffle(choices)
        rows.append({"Question": question.strip(), "choice1": choices[0], "choice2": choices[1],
                     "choice3": choices[2], "choice4": choices[3], "answer": f"({'ABCD'[choices.index(gold)]})",
                     "source": f"bbh/{s['task']}#{s['idx']}"})
    dev = [r for r in rows if r["source"].endswith("#0")]
    test = [r for r in rows if not r["source"].endswith("#0")]
    write_jsonl(out / "data" / "gpqa_test.jsonl", test)
    write_jsonl(out / "data" / "gpqa_dev.jsonl", dev)
    tasks = ["gpqa_main_n_shot", "gpqa_diamond_n_shot", "gpqa_extended_n_shot"]
    src = ("BIG-Bench Hard few-shot examples with >= 4 lettered options (date_understanding, geometric_shapes, "
           "movie_recommendation, penguins_in_a_table, reasoning_about_colored_objects, ruin_names, "
           "salient_translation_error_detection, temporal_sequences), cut to 4 choices; 5-shot examples from a "
           "disjoint dev split (the first example of each BBH task)")
    task_yaml(out, "offline_gpqa", "gpqa", tasks, src,
              prompt_fields(real_yaml("gpqa/n_shot/gpqa_main_n_shot.yaml"), drop=("process_docs",)),
              {"test": "data/gpqa_test.jsonl", "dev": "data/gpqa_dev.jsonl"}, len(test), 5, fewshot={},
              n_pool=len(dev))
    return {"task": "offline_gpqa", "n": len(test), "fewshot_pool": len(dev), "source": src}


def build_medmcqa(out: Path, dev: dict[str, list[dict]]) -> dict:
    rows = []
    for s in MEDICAL:
        for i, it in enumerate(dev[s]):
            c = it["choices"]
            rows.append({"id": f"mmlu_dev/{s}#{i}", "question": it["question"].strip(), "opa": c[0], "opb": c[1],
                         "opc": c[2], "opd": c[3], "cop": it["answer"], "choice_type": "single",
                         "subject_name": s})
    dev_rows = [r for r in rows if r["id"].endswith("#0")]
    test_rows = [r for r in rows if not r["id"].endswith("#0")]
    write_jsonl(out / "data" / "medmcqa_test.jsonl", test_rows)
    write_jsonl(out / "data" / "medmcqa_dev.jsonl", dev_rows)
    src = ("MMLU dev questions of the medical subjects (" + ", ".join(MEDICAL) + ") in medmcqa's schema; 5-shot "
           "examples from a disjoint dev split (the first question of each subject)")
    task_yaml(out, "offline_medmcqa", "medmcqa", ["medmcqa"], src, prompt_fields(real_yaml("medmcqa/medmcqa.yaml")),
              {"test": "data/medmcqa_test.jsonl", "dev": "data/medmcqa_dev.jsonl"}, len(test_rows), 5, fewshot={},
              n_pool=len(dev_rows))
    return {"task": "offline_medmcqa", "n": len(test_rows), "fewshot_pool": len(dev_rows), "source": src}


def readme(results: list[dict]) -> str:
    lines = ["# Offline stand-ins for ten lm-eval benchmarks (NOT the real benchmarks)", "",
             f"Generated by `{GENERATOR}`; do not edit by hand. Load them with "
             "`dart.evals.tasks.offline_task_manager()`, which makes the data paths absolute (the YAML paths here "
             "are relative to this folder).", "",
             "Each task uses the real lm-eval task's prompt format (fields copied from the installed lm_eval YAMLs, "
             "rows in the real schema) on real items that exist offline. Scores measure the same *kind* of ability "
             "with the same prompt, on far fewer and different items: never report them as the real benchmark.", "",
             "| task | items | source |", "| --- | --- | --- |"]
    for r in results:
        n = f"{r['n']}" + (f" (+{r['fewshot_pool']} few-shot pool)" if "fewshot_pool" in r else "")
        lines.append(f"| {r['task']} | {n} | {r['source']} |")
    return "\n".join(lines) + "\n"


def build(out: Path) -> list[dict]:
    from dart.data.texts import news_articles

    if out.exists():
        shutil.rmtree(out)
    (out / "data").mkdir(parents=True)
    dev, cats, bbh, articles = mmlu_dev(), mmlu_categories(), bbh_samples(), news_articles()
    results = [build_boolq(out, bbh), build_rte(out, bbh),
               build_hellaswag(out, articles, range(0, 150)), build_winogrande(out, articles, range(150, 300))]
    results += build_arc_obqa(out, dev, cats)
    results += [build_mmlu(out, dev, cats), build_gpqa(out, bbh), build_medmcqa(out, dev)]
    (out / "README.md").write_text(readme(results), encoding="utf-8")
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    results = build(args.out)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    for r in results:
        print(f"{r['task']:<22} {r['n']:>4}  {r['source'][:90]}")
    print(f"wrote {sum(1 for p in args.out.rglob('*') if p.is_file())} files, {size / 1024:.0f} KiB, to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
