"""Regenerate remit/annotate/data/sample.jsonl: a small, deterministic corpus of worked reasoning text.

The documents mimic annealing data (short worked solutions with pivot words such as "So" and
"Therefore"), plus a few edge cases: Unicode, markup characters, an empty record and a long document.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

NAMES = ["Ada", "Bo", "Chen", "Dara", "Emil", "Fatima", "Goran", "Hana", "Ivo", "Júlia"]
THINGS = ["apples", "books", "coins", "marbles", "pencils", "stamps", "tickets", "shells"]


def word_problem(rng: random.Random) -> str:
    name, other = rng.sample(NAMES, 2)
    thing = rng.choice(THINGS)
    a, b, c = rng.randint(2, 60), rng.randint(2, 40), rng.randint(2, 9)
    total = a + b
    return (
        f"Problem: {name} has {a} {thing}. {other} gives {name} {b} more {thing}. "
        f"Then {name} shares them equally among {c} friends. How many {thing} does each friend get, "
        f"and how many are left over?\n"
        f"Solution: First, adding the {thing} gives {a} + {b} = {total}. "
        f"So {name} has {total} {thing}. Next, we divide by {c}: {total} = {c} * {total // c} + {total % c}. "
        f"Therefore each friend gets {total // c} {thing}, and {total % c} are left over. "
        f"The answer is \\boxed{{{total // c}}}."
    )


def proof_sketch(rng: random.Random) -> str:
    n = rng.randint(3, 30)
    return (
        f"Claim: the sum of the first {n} odd numbers is {n}^2.\n"
        f"Proof: The k-th odd number is 2k - 1. Adding them, the sum is 2(1 + 2 + ... + {n}) - {n}. "
        f"Since 1 + 2 + ... + {n} = {n}({n} + 1)/2 = {n * (n + 1) // 2}, the sum is {n * (n + 1)} - {n} = {n * n}. "
        f"So the claim holds for n = {n}. Therefore, by the same argument for every n, the sum is n^2. QED."
    )


def code_note(rng: random.Random) -> str:
    k = rng.randint(2, 12)
    return (
        f'def power_of_two(n):\n    """Return 2**n for n >= 0."""\n    result = 1\n'
        f"    for _ in range(n):\n        result *= 2\n    return result\n\n"
        f"# Check: power_of_two({k}) == {2**k}, so the loop runs {k} times."
    )


def main() -> None:
    rng = random.Random(20260203)
    docs = []
    makers = [word_problem, word_problem, proof_sketch, code_note]
    for i in range(240):
        docs.append({"id": f"sample-{i:04d}", "text": rng.choice(makers)(rng)})
    docs.append({"id": "unicode-0", "text": "Größe, naïve café, 数学の問題, Ελληνικά, emoji 🧮 ✓. So 2 + 2 = 4."})
    docs.append({"id": "markup-0", "text": "Escapes: <script>alert('x')</script> & \"quotes\" & 'single' <b>bold</b>."})
    docs.append({"id": "empty-0", "text": ""})
    docs.append({"id": "long-0", "text": " ".join(proof_sketch(rng) for _ in range(40))})
    out = Path(__file__).resolve().parents[1] / "remit" / "annotate" / "data" / "sample.jsonl"
    with open(out, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    print(f"wrote {len(docs)} documents to {out}")


if __name__ == "__main__":
    main()
