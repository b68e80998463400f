"""The synthetic task: multi-step arithmetic word problems with worked solutions, some of them wrong.

- A problem is a dependency chain in the style of GSM-Infinite: a start quantity and 2-3 operations
  (add or take away a small number), every intermediate value in [0, MAX_VALUE]. Its worked solution
  writes one equation per step and ends with "The answer is N."; the final number is what exact-match
  scoring compares. The word-level tokenizer (models.py) makes every number one token, so a step is
  one fact of a small addition table, not digit arithmetic.
- A share of the solutions in the training splits is wrong (`noise_rate`): one step's result is off
  by 1 or 2 and the chain carries the wrong value on (a wrong step), or every step is right and the
  final sentence states another number (a wrong answer). The RL, dev and held-out splits are never noisy.
- Non-reasoning text (sentences from a small grammar) is mixed into the training splits. Its words
  include those of the unseen templates, so that the second held-out split tests new sentence frames,
  not unknown words.
- Templates: `TRAIN_TEMPLATES` phrase the story in the pre-training, annealing, RL, dev and first
  held-out splits; `UNSEEN_TEMPLATES` only in the second held-out split.
- Splits are disjoint by the problem's numbers: the signature (start, operations, operands) of a
  problem belongs to one split, so the held-out problems are number chains never trained on. The
  training splits may repeat their own chains (in other words); the other splits hold each once.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from remit.common.atomic import write_json_atomic

NAMES = ["Ana", "Ben", "Cleo", "Dan", "Eva", "Finn", "Gus", "Hana", "Ivo", "Jade", "Kai", "Lena", "Milo", "Nora"]
ITEMS = ["apples", "coins", "stamps", "marbles", "books", "shells", "cards", "pens", "eggs", "beads"]

# Each template: the opening sentence, phrasings of "add b" and "take away b", and the question.
TRAIN_TEMPLATES: list[dict[str, Any]] = [
    {
        "start": "{name} has {a} {item}.",
        "add": ["{name} gets {b} more.", "{name} finds {b} more {item}.", "A friend gives {name} {b} {item}."],
        "sub": ["{name} gives away {b}.", "{name} loses {b} {item}.", "{name} sells {b} of them."],
        "ask": "How many {item} does {name} have now?",
    },
    {
        "start": "A box holds {a} {item}.",
        "add": ["Someone puts {b} more {item} in the box.", "{b} {item} are added to the box."],
        "sub": ["{b} {item} are taken out.", "{name} removes {b} {item} from the box."],
        "ask": "How many {item} are in the box?",
    },
    {
        "start": "There are {a} {item} on the shelf.",
        "add": ["{name} places {b} more on the shelf.", "{b} more {item} arrive."],
        "sub": ["{name} takes {b} away.", "{b} {item} fall off the shelf."],
        "ask": "How many {item} are on the shelf at the end?",
    },
]
#: New sentence frames around the training splits' verbs; their other words occur in the filler text.
UNSEEN_TEMPLATES: list[dict[str, Any]] = [
    {
        "start": "At first the shop has {a} {item}.",
        "add": ["Later the shop gets {b} more {item}.", "Then someone puts {b} more in the shop."],
        "sub": ["Later the shop sells {b} of them.", "Then {b} {item} are taken from the shop."],
        "ask": "How many {item} are left in the shop?",
    },
    {
        "start": "In the morning {name} finds {a} {item}.",
        "add": ["After that {name} finds {b} more.", "A friend then gives {b} {item} to {name}."],
        "sub": ["After that {name} loses {b} of them.", "{name} then gives {b} {item} away."],
        "ask": "How many {item} are left with {name}?",
    },
]

_WORDS = {
    "lead": ["At first", "Later", "Then", "After that", "In the morning", "At the end"],
    "subj": ["the river", "a small bird", "the old mill", "the wind", "my neighbour", "the shop", "a quiet train"],
    "verb": ["moves past", "sings near", "rests beside", "turns toward", "waits by", "shines over", "is left with"],
    "obj": ["the hills", "the market", "a stone bridge", "the harbour", "the long road", "an open field"],
    "end": ["in the morning.", "after the rain.", "every day.", "at dusk.", "without a sound.", "as usual."],
}

ANSWER_RE = re.compile(r"The answer is (\d+) ?\.")

#: Every value of a chain lies in [0, MAX_VALUE]; operands lie in [1, MAX_OPERAND]; starts in [1, MAX_START].
MAX_VALUE = 20
MAX_OPERAND = 6
MAX_START = 15


@dataclass(frozen=True)
class Problem:
    """One problem: the question text, its worked solution and the true answer."""

    question: str
    solution: str
    answer: int
    steps: int
    template: str
    noise: str
    """'' for a correct solution, 'step' (a wrong intermediate result) or 'answer' (a wrong final number)."""
    signature: str

    @property
    def prompt(self) -> str:
        return prompt_of(self.question)

    def text(self) -> str:
        """The training document: prompt and solution."""
        return self.prompt + " " + self.solution


def prompt_of(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def parse_answer(completion: str) -> int | None:
    """The number after the first 'The answer is', or None (exact-match scoring). Decoded word-level
    tokens are joined by spaces ("The answer is 7 ."), plain text is not ("The answer is 7.")."""
    m = ANSWER_RE.search(completion)
    return int(m.group(1)) if m else None


def _chain(rng: np.random.Generator, steps: int) -> tuple[int, list[tuple[str, int]], list[int]]:
    a = int(rng.integers(1, MAX_START + 1))
    ops, values, v = [], [], a
    for _ in range(steps):
        if v >= MAX_VALUE - 1 or (v > 3 and rng.random() < 0.5):
            op, b = "-", int(rng.integers(1, min(v, MAX_OPERAND) + 1))
        else:
            op, b = "+", int(rng.integers(1, min(MAX_VALUE - v, MAX_OPERAND) + 1))
        v = v + b if op == "+" else v - b
        ops.append((op, b))
        values.append(v)
    return a, ops, values


def _wrong(rng: np.random.Generator, v: int) -> int:
    """A plausible wrong value near `v` (off by 1 or 2), still in [0, MAX_VALUE]."""
    while True:
        w = v + int(rng.choice([-2, -1, 1, 2]))
        if 0 <= w <= MAX_VALUE and w != v:
            return w


def make_problem(
    rng: np.random.Generator,
    template_id: str,
    template: dict[str, Any],
    noise_rate: float,
    steps: int,
    step_share: float = 0.7,
) -> Problem:
    a, ops, values = _chain(rng, steps)
    name, item = str(rng.choice(NAMES)), str(rng.choice(ITEMS))
    fill = {"name": name, "item": item, "a": a}
    sentences = [template["start"].format(**fill)]
    for op, b in ops:
        phr = template["add"] if op == "+" else template["sub"]
        sentences.append(str(rng.choice(phr)).format(**fill, b=b))
    sentences.append(template["ask"].format(**fill))
    noise = ""
    if rng.random() < noise_rate:
        noise = "step" if rng.random() < step_share else "answer"
    shown = list(values)
    if noise == "step":
        k = int(rng.integers(0, steps))  # this step's result is wrong; later steps carry it on
        while True:
            shown = list(values)
            shown[k] = _wrong(rng, values[k])
            for j in range(k + 1, steps):
                op, b = ops[j]
                shown[j] = shown[j - 1] + b if op == "+" else shown[j - 1] - b
            if all(0 <= v <= MAX_VALUE for v in shown):
                break
            k = steps - 1  # carried on, the wrong value left the range: make the last step the wrong one
    equations, prev = [], a
    for (op, b), v in zip(ops, shown):
        equations.append(f"{prev} {op} {b} = {v}.")
        prev = v
    final = shown[-1] if noise != "answer" else _wrong(rng, values[-1])
    solution = " ".join(equations) + f" The answer is {final}."
    signature = f"{a}|" + "|".join(f"{op}{b}" for op, b in ops)
    return Problem(" ".join(sentences), solution, values[-1], steps, template_id, noise, signature)


def filler_text(rng: np.random.Generator, sentences: int) -> str:
    out = []
    for _ in range(sentences):
        s = f"{rng.choice(_WORDS['subj'])} {rng.choice(_WORDS['verb'])} {rng.choice(_WORDS['obj'])} {rng.choice(_WORDS['end'])}"
        lead = str(rng.choice(_WORDS["lead"])) if rng.random() < 0.4 else ""
        out.append(f"{lead} {s}" if lead else s[0].upper() + s[1:])
    return " ".join(out)


def vocabulary_texts() -> list[str]:
    """Every word the generator can write (templates, names, items, filler words, every number), so that
    the tokenizer knows each of them whatever the sampled splits hold."""
    texts = [" ".join(NAMES), " ".join(ITEMS), " ".join(str(i) for i in range(MAX_VALUE + 1))]
    texts += [" ".join(v) for v in _WORDS.values()]
    for t in TRAIN_TEMPLATES + UNSEEN_TEMPLATES:
        for s in [t["start"], *t["add"], *t["sub"], t["ask"]]:
            texts.append(re.sub(r"\{\w+\}", " ", s))
    texts += [prompt_of("?"), "+ - = . The answer is"]
    return texts


@dataclass(frozen=True)
class DataConfig:
    """Sizes of the splits (problems) and the mix."""

    pretrain: int = 30000
    anneal: int = 8000
    rl: int = 2000
    dev: int = 300
    heldout: int = 500
    heldout_templates: int = 500
    heldout_confirm: int = 2000
    """Problems of the confirmatory held-out split, drawn after every other split from its own random
    stream (`extra_splits`), so that adding it changes none of them."""
    noise_rate: float = 0.3
    """Share of training-split solutions with an error (pre-training and annealing)."""
    step_share: float = 0.7
    """Of the wrong solutions, the share with a wrong step (the rest: a wrong final answer)."""
    text_share: float = 0.25
    """Non-reasoning documents per problem document in the training splits (0.25: one in five documents)."""
    steps: tuple[int, ...] = (3, 4)
    """Chain lengths, drawn uniformly. There are 1,663 two-step chains of these numbers, too few to give
    the evaluation splits their own and the training splits others; 17,438 three-step and 182,814
    four-step ones."""
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("pretrain", "anneal", "rl", "dev", "heldout", "heldout_templates", "heldout_confirm"):
            if getattr(self, name) < 1:
                raise ValueError(f"data.{name} = {getattr(self, name)}: a split needs at least 1 problem")
        for name in ("noise_rate", "step_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"data.{name} = {getattr(self, name)}: a share, between 0 and 1")
        if self.text_share < 0:
            raise ValueError(f"data.text_share = {self.text_share}: must be 0 or more")
        if not self.steps or min(self.steps) < 1:
            raise ValueError(f"data.steps = {list(self.steps)}: one or more chain lengths, each at least 1")


SPLITS = ("pretrain", "anneal", "rl", "dev", "heldout", "heldout_templates")
#: Generation order: the evaluation splits draw first, so that they hold the same mix of chain lengths as
#: the training splits whatever number chains those use up.
GENERATION_ORDER = ("heldout", "heldout_templates", "dev", "rl", "anneal", "pretrain")
NOISY = ("pretrain", "anneal")
WITH_TEXT = ("pretrain", "anneal")


def _draw(
    rng: np.random.Generator,
    cfg: DataConfig,
    split: str,
    want: int,
    templates: list[dict[str, Any]],
    prefix: str,
    noise_rate: float,
    owner: dict[str, str],
) -> list[Problem]:
    """`want` problems of `split`, each of a number chain no other split owns (recorded in `owner`).

    A chain belongs to one split. The training splits may repeat their own chains (with other names,
    items and wording); the other splits hold each chain once. A rejected draw keeps its chain length,
    so every split holds the same mix of lengths even where the splits drawn before it used up most
    chains of one length.
    """
    problems: list[Problem] = []
    misses = 0
    steps = int(rng.choice(cfg.steps))
    while len(problems) < want:
        t = int(rng.integers(len(templates)))
        p = make_problem(rng, f"{prefix}{t}", templates[t], noise_rate, steps, cfg.step_share)
        if owner.get(p.signature, split) != split or (split not in NOISY and p.signature in owner):
            misses += 1
            if misses > 50 * want + 10_000:
                raise ValueError(
                    f"{split}: {len(problems)} of {want} problems drawn, then the free {steps}-step number chains "
                    "ran out; ask for fewer problems or longer chains (data.steps)"
                )
            continue
        owner[p.signature] = split
        problems.append(p)
        steps = int(rng.choice(cfg.steps))
    return problems


def generate(cfg: DataConfig, out: Path, keep: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write one JSONL per split under `out` and return the statistics (also written as stats.json).

    Training splits hold {"id", "text", "kind", "noise"}; the others {"id", "question", "prompt",
    "solution", "answer", "template", "steps"} with a correct solution. `keep`, when given, receives
    the chain owners ("owner": signature -> split) and, per training split, the problem behind each
    written document (None for a text document), in file order: what `extra_splits` builds on.
    """
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    owner: dict[str, str] = {}  # signature -> the one split it belongs to
    stats: dict[str, Any] = {"config": asdict(cfg) | {"steps": list(cfg.steps)}, "splits": {}}
    stats["ranges"] = {"start": [1, MAX_START], "operand": [1, MAX_OPERAND], "value": [0, MAX_VALUE]}
    for split in GENERATION_ORDER:
        want = getattr(cfg, split)
        templates = UNSEEN_TEMPLATES if split == "heldout_templates" else TRAIN_TEMPLATES
        prefix = "u" if split == "heldout_templates" else "t"
        noise_rate = cfg.noise_rate if split in NOISY else 0.0
        problems = _draw(rng, cfg, split, want, templates, prefix, noise_rate, owner)
        n_text = round(cfg.text_share * want) if split in WITH_TEXT else 0
        with open(out / f"{split}.jsonl", "w") as f:
            if split in WITH_TEXT:
                docs = [{"text": p.text(), "kind": "problem", "noise": p.noise} for p in problems]
                docs += [
                    {"text": filler_text(rng, int(rng.integers(2, 6))), "kind": "text", "noise": ""}
                    for _ in range(n_text)
                ]
                order = rng.permutation(len(docs))
                for i, j in enumerate(order):
                    f.write(json.dumps({"id": f"{split}-{i}", **docs[j]}) + "\n")
                if keep is not None:
                    keep[split] = [problems[j] if j < len(problems) else None for j in order]
            else:
                for i, p in enumerate(problems):
                    f.write(json.dumps(_eval_row(split, i, p)) + "\n")
        noise = {k: sum(p.noise == k for p in problems) for k in ("step", "answer")}
        stats["splits"][split] = {
            "problems": len(problems),
            "distinct_chains": len({p.signature for p in problems}),
            "text_documents": n_text,
            "noisy_step": noise["step"],
            "noisy_answer": noise["answer"],
            "templates": sorted({p.template for p in problems}),
            "by_steps": {str(k): sum(p.steps == k for p in problems) for k in cfg.steps},
        }
    if keep is not None:
        keep["owner"] = owner
    write_json_atomic(out / "stats.json", stats)
    return stats


#: The splits `extra_splits` adds to a data folder.
CONFIRM = "heldout_confirm"
CLEAN_ANNEAL = "anneal_clean"
ANNEAL_LABELS = "anneal_labels"
#: One equation of a worked solution: "a op b = c."
_EQ = re.compile(r"(\d+) ([+-]) (\d+) = (\d+)\.")


def clean_solution(p: Problem) -> str:
    """The correct worked solution of `p`'s number chain (its signature), whatever `p.solution` says."""
    start, *ops = p.signature.split("|")
    v, equations = int(start), []
    for op in ops:
        b = int(op[1:])
        w = v + b if op[0] == "+" else v - b
        equations.append(f"{v} {op[0]} {b} = {w}.")
        v = w
    return " ".join(equations) + f" The answer is {v}."


def wrong_from(text: str, noise: str) -> int | None:
    """Character offset in a training document's `text` of its first wrong number (the result of the first
    wrong equation, or the wrong final number), None for a correct solution. ValueError when the text does
    not carry the error its label `noise` ('', 'step' or 'answer') says."""
    cut = text.find("\nAnswer:")
    sol = cut + len("\nAnswer:")
    last, first_wrong = None, None
    for m in _EQ.finditer(text, sol):
        a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
        if first_wrong is None and (a + b if op == "+" else a - b) != c:
            first_wrong = m.start(4)
        last = c
    final = ANSWER_RE.search(text, sol)
    if cut < 0 or final is None or last is None:
        raise ValueError(f"not a worked solution: {text[:80]!r}")
    wrong_final = int(final.group(1)) != last
    if noise == "step" and first_wrong is not None and not wrong_final:
        return first_wrong
    if noise == "answer" and first_wrong is None and wrong_final:
        return final.start(1)
    if noise == "" and first_wrong is None and not wrong_final:
        return None
    raise ValueError(f"the solution does not carry the error its label {noise!r} says: {text[cut:]!r}")


def extra_splits(cfg: DataConfig, data: Path) -> dict[str, Any]:
    """Add to the data folder `data` (written by `generate(cfg, data)`) three files that leave every
    existing split as it is:

    - `heldout_confirm.jsonl`: `cfg.heldout_confirm` correct problems in the training templates and
      chain-length mix, from their own random stream (seeded with (data seed, 1)), of number chains no
      split holds;
    - `anneal_clean.jsonl`: the annealing split with every wrong solution replaced by the correct
      solution of the same problem (same ids, order and text documents; "was_noise" keeps the label);
    - `anneal_labels.jsonl`: per annealing document, its noise label and `wrong_from`, the character
      offset of its first wrong number (None for a correct solution or a text document).

    The generator is run again in memory to recover the problems behind the files; a split file that
    differs from what it draws is refused (ValueError naming the file). Returns the new splits' statistics.
    """
    import tempfile

    keep: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        generate(cfg, Path(tmp), keep)
        for split in SPLITS:
            if (Path(tmp) / f"{split}.jsonl").read_bytes() != (data / f"{split}.jsonl").read_bytes():
                raise ValueError(
                    f"{data / f'{split}.jsonl'}: differs from what the generator draws for this configuration; "
                    "the folder was made by another version or configuration: generate it again"
                )
    rng = np.random.default_rng([cfg.seed, 1])
    confirm = _draw(rng, cfg, CONFIRM, cfg.heldout_confirm, TRAIN_TEMPLATES, "t", 0.0, keep["owner"])
    _write_jsonl(data / f"{CONFIRM}.jsonl", [_eval_row(CONFIRM, i, p) for i, p in enumerate(confirm)])
    docs = read_jsonl(data / "anneal.jsonl")
    clean, labels = [], []
    for doc, p in zip(docs, keep["anneal"], strict=True):
        if p is None:
            clean.append({**doc, "was_noise": ""})
            labels.append({"id": doc["id"], "noise": "", "wrong_from": None})
            continue
        clean.append({**doc, "text": p.prompt + " " + clean_solution(p), "noise": "", "was_noise": doc["noise"]})
        labels.append({"id": doc["id"], "noise": doc["noise"], "wrong_from": wrong_from(doc["text"], doc["noise"])})
    _write_jsonl(data / f"{CLEAN_ANNEAL}.jsonl", clean)
    _write_jsonl(data / f"{ANNEAL_LABELS}.jsonl", labels)
    stats = {
        CONFIRM: {
            "problems": len(confirm),
            "distinct_chains": len({p.signature for p in confirm}),
            "templates": sorted({p.template for p in confirm}),
            "by_steps": {str(k): sum(p.steps == k for p in confirm) for k in cfg.steps},
        },
        CLEAN_ANNEAL: {
            "documents": len(clean),
            "solutions_corrected": sum(1 for d in clean if d["was_noise"]),
        },
    }
    write_json_atomic(data / "stats_extra.json", stats)
    return stats


def _eval_row(split: str, i: int, p: Problem) -> dict[str, Any]:
    return {
        "id": f"{split}-{i}",
        "question": p.question,
        "prompt": p.prompt,
        "solution": p.solution,
        "answer": p.answer,
        "template": p.template,
        "steps": p.steps,
    }


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    from remit.common.atomic import write_text_atomic

    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
