"""The rule planner's computations: recognise a calculation in plain language and write the Python that
does it. The code is built from fixed templates and the numbers found (an arithmetic expression only
after `ast` shows it holds nothing but numbers and operators), never from the query's other text."""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from decimal import Decimal

NUM = r"-?\d++(?:\.\d++)?+"  # possessive: no backtracking into long runs of digits
_OPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.USub, ast.UAdd)
_EXPR = re.compile(r"[-(]*+\s*+\d[\d.]*+(?:\s*+(?:\*\*|[-+*/^%×÷x])\s*+[-(]*+\s*+\d[\d.]*+\s*+\)*+)++\)*+")
_EXPLAIN = re.compile(r"\b(explain|why|describe|write|tell|story|poem|mean|means|meaning|interpret)\b", re.I)
_UNITS = {  # (from, to) → formula on x
    ("fahrenheit", "celsius"): "(x - 32) * 5 / 9", ("celsius", "fahrenheit"): "x * 9 / 5 + 32",
    ("km", "miles"): "x / 1.609344", ("kilometers", "miles"): "x / 1.609344",
    ("kilometres", "miles"): "x / 1.609344", ("miles", "km"): "x * 1.609344",
    ("miles", "kilometers"): "x * 1.609344", ("miles", "kilometres"): "x * 1.609344",
    ("kg", "pounds"): "x / 0.45359237", ("pounds", "kg"): "x * 0.45359237",
    ("kilograms", "pounds"): "x / 0.45359237", ("pounds", "kilograms"): "x * 0.45359237",
}


def explain_wanted(text: str) -> bool:
    """Does the query want words about the result, not only the number?"""
    return _EXPLAIN.search(text) is not None


def _num(s: str) -> str:
    return str(float(s)) if "." in s else str(int(s))


def numbers(text: str) -> list[str]:
    """The numbers in `text` that stand alone (not '3' of 'mp3' or of '1.2.3'). Possessive quantifiers:
    with backtracking, a long run of digits took cubic time."""
    found = re.findall(r"(?<![\w.])-?\d++(?:\.\d++)?+(?![\w.]*\d)", text)
    return [_num(n) for n in found if len(n) <= 30]


def _arithmetic(text: str) -> str | None:
    for m in sorted(_EXPR.finditer(text), key=lambda m: -len(m.group())):
        if len(m.group()) > 200:
            continue
        expr = m.group().replace("^", "**").replace("×", "*").replace("÷", "/").replace("x", "*").strip()
        try:
            tree = ast.parse(expr, mode="eval")
        except (SyntaxError, RecursionError, ValueError):
            continue
        if all(isinstance(n, (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, *_OPS)) for n in ast.walk(tree)) \
                and any(isinstance(n, ast.BinOp) for n in ast.walk(tree)):
            return f"output = {' '.join(expr.split())}"  # only numbers and operators, as ast showed
    return None


def _range(text: str) -> tuple[int, int] | None:
    m = re.search(r"(?:from|between)\s+(-?\d++)\s+(?:to|and|through)\s+(-?\d++)", text) or \
        re.search(r"(-?\d++)\s*(?:\.\.|to|through|-)\s*(-?\d++)", text)
    if m:
        return int(m.group(1)), int(m.group(2))
    m = re.search(r"first\s+(\d++)", text)
    return (1, int(m.group(1))) if m else None


def _primes(text: str) -> str | None:
    if not re.search(r"\bprimes?\b", text):
        return None
    sieve = ("def is_prime(n):\n    return n > 1 and all(n % d for d in range(2, int(n ** 0.5) + 1))\n")
    m = re.search(r"is\s+(\d+)\s+(?:a\s+)?prime", text)
    if m:
        return f"{sieve}output = is_prime({int(m.group(1))})"
    m = re.search(r"(below|under|less than|up to|smaller than|<=?)\s+(\d+)", text)
    bounds = _range(text)
    if m:
        hi = int(m.group(2)) + (1 if m.group(1) in ("up to", "<=") else 0)
        lo = 2
    elif bounds:
        lo, hi = bounds[0], bounds[1] + 1
    else:
        return None
    if hi - lo > 10_000_000:
        return None
    found = f"[n for n in range({lo}, {hi}) if is_prime(n)]"
    if re.search(r"how many|count|number of", text):
        return f"{sieve}output = len({found})"
    if re.search(r"\b(sum|total|add up)\b", text):
        return f"{sieve}output = sum({found})"
    if re.search(r"\bproduct\b", text):
        return f"import math\n{sieve}output = math.prod({found})"
    return f"{sieve}output = {found}"


def _series(text: str) -> str | None:
    bounds = _range(text)
    if bounds is None or abs(bounds[1] - bounds[0]) > 10_000_000:
        return None
    lo, hi = bounds
    rng = f"range({lo}, {hi + 1})"
    for word, term in (("squares", "i * i"), ("cubes", "i ** 3")):
        if word in text:
            return f"output = sum({term} for i in {rng})" if "sum" in text or "total" in text else None
    if re.search(r"\b(sum|total|add)\b", text):
        return f"output = sum({rng})"
    if re.search(r"\bproduct\b", text):
        return f"import math\noutput = math.prod({rng})"
    return None


def _aggregate(text: str) -> str | None:
    nums = numbers(text)
    if len(nums) < 2:
        return None
    ops: list[tuple[str, str]] = [
        (r"\b(average|mean)\b", "sum(nums) / len(nums)"), (r"\bmedian\b", "statistics.median(nums)"),
        (r"\b(sum|total|add up|add)\b", "sum(nums)"), (r"\bproduct\b|\bmultiply\b", "math.prod(nums)"),
        (r"\b(max|maximum|largest|biggest|highest|greatest)\b", "max(nums)"),
        (r"\b(min|minimum|smallest|lowest|least)\b", "min(nums)"),
        (r"\b(sort|order|ascending)\b", "sorted(nums)"), (r"\bdescending\b", "sorted(nums, reverse=True)"),
        (r"\b(std|standard deviation)\b", "statistics.pstdev(nums)"),
    ]
    for pattern, expr in ops:
        if re.search(pattern, text):
            imports = "".join(f"import {m}\n" for m in ("math", "statistics") if f"{m}." in expr)
            return f"{imports}nums = [{', '.join(nums)}]\noutput = {expr}"
    return None


# what is asked about a whole number rather than the number itself: "how many trailing zeros does 100!
# have", "how many digits are in 2 to the power 100", "the sum of the digits of 2**15"
_OF_DIGITS = ((r"trailing zero", "len(str(abs(x))) - len(str(abs(x)).rstrip('0'))"),
              (r"sum of (?:the |its )?digits|digit sum", "sum(int(c) for c in str(abs(x)))"),
              (r"how many digits|number of digits|digits (?:are|does|do)", "len(str(abs(x)))"))


def _of_digits(text: str, code: str) -> str:
    """`code` (which sets `output` to a whole number) followed by what `text` asks of its digits."""
    for pattern, expr in _OF_DIGITS:
        if re.search(pattern, text):
            return f"{code}\nx = output\noutput = {expr}"
    return code


def _fibonacci(text: str) -> str | None:
    m = re.search(r"(\d+)(?:st|nd|rd|th)?\s+fibonacci|fibonacci\s+(?:number\s+)?(\d+)", text)
    if not m:
        return None
    n = int(m.group(1) or m.group(2))
    if not 1 <= n <= 100_000:
        return None
    first = re.search(r"first\s+\d+\s+fibonacci", text) is not None
    # the sequence's first two terms when the question gives them ("starting 1, 1, 2, 3"); else 0, 1
    seed = re.search(r"start(?:ing|s)?\s+(?:with|at|from)?\s*(\d{1,9})\s*,\s*(\d{1,9})", text)
    a, b = (int(seed.group(1)), int(seed.group(2))) if seed else (0, 1)
    return ("a, b, seq = %d, %d, []\nfor _ in range(%d):\n    seq.append(a)\n    a, b = b, a + b\n"
            "output = %s" % (a, b, n, "seq" if first else "seq[-1]"))


_PCT = r"\s*(?:%|per\s?cents?\b)"
_AMOUNT = rf"[$€£]?\s*({NUM})"  # (a currency sign is not part of the number)
_UP = r"increase|increased|raise|raised|grow|grown|add|plus|\+"
_DOWN = r"decrease|decreased|reduce|reduced|lower|lowered|cut|discount|discounted|minus|less|-"
# (pattern, formula on a and b): the first that matches wins, in this order
_PERCENTS: tuple[tuple[str, str], ...] = (
    (rf"what\s+(?:percent|percentage)\s+of\s+{_AMOUNT}\s+is\s+{_AMOUNT}", "b * 100 / a"),
    (rf"{_AMOUNT}\s+is\s+what\s+(?:percent|percentage)\s+of\s+{_AMOUNT}", "a * 100 / b"),
    (rf"{_AMOUNT}\s+as\s+an?\s+(?:percent|percentage)\s+of\s+{_AMOUNT}", "a * 100 / b"),
    (rf"(?:percent|percentage)\s+(?:change|increase|decrease|difference)\s+from\s+{_AMOUNT}\s+to\s+{_AMOUNT}",
     "(b - a) * 100 / a"),
    (rf"(?:{_UP})\s+{_AMOUNT}\s+by\s+({NUM}){_PCT}", "a * (100 + b) / 100"),
    (rf"(?:{_DOWN})\s+{_AMOUNT}\s+by\s+({NUM}){_PCT}", "a * (100 - b) / 100"),
    (rf"{_AMOUNT}\s+(?:{_UP})(?:\s+by)?\s+({NUM}){_PCT}", "a * (100 + b) / 100"),
    (rf"{_AMOUNT}\s+(?:{_DOWN})(?:\s+by)?\s+({NUM}){_PCT}", "a * (100 - b) / 100"),
    (rf"({NUM}){_PCT}\s+(?:off|discount\s+on)\s+{_AMOUNT}", "b * (100 - a) / 100"),
    (rf"({NUM}){_PCT}\s+of\s+{_AMOUNT}", "a * b / 100"),
)


def is_percentage(text: str) -> bool:
    """Does `text` ask for a percentage of numbers it gives (whether or not a rule can plan it)?"""
    lowered = text.lower()
    return re.search(rf"\d{_PCT}", lowered) is not None or any(re.search(p, lowered) for p, _ in _PERCENTS)


def _percent(text: str) -> str | None:
    """Percentages: "15% of 240", "increase 50 by 10%", "what percent of 200 is 50". Multiplied before
    divided, and a whole result shown whole (36, not 36.0 nor 21.000000000000004 for 7% of 300). Only for
    questions with exactly these two numbers: "5 plus 10% of 200" is not guessed at."""
    if len(numbers(text)) != 2:  # "5 plus 10% of 200": more than one percentage sum; not guessed at
        return None
    for pattern, formula in _PERCENTS:
        m = re.search(pattern, text)
        if m is None:
            continue
        a, b = _num(m.group(1)), _num(m.group(2))
        if ("/ a" in formula and float(a) == 0) or ("/ b" in formula and float(b) == 0):
            return None
        return f"a, b = {a}, {b}\nx = {formula}\noutput = int(x) if x == int(x) else round(x, 10)"
    return None


def _single(text: str) -> str | None:
    m = re.search(r"factorial\s+of\s+(\d+)|\b(\d+)!", text)
    if m:
        n = int(m.group(1) or m.group(2))
        return _of_digits(text, f"import math\noutput = math.factorial({n})") if n <= 5000 else None
    code = _fibonacci(text)
    if code:
        return code if "first" in text else _of_digits(text, code)
    m = re.search(rf"square root of\s+({NUM})", text)
    if m:
        return f"import math\noutput = math.sqrt({_num(m.group(1))})"
    m = re.search(rf"({NUM})\s+(?:to the power(?: of)?|raised to)\s+({NUM})", text)
    if m:
        code = f"output = {_num(m.group(1))} ** {_num(m.group(2))}"
        return _of_digits(text, code) if "." not in m.group(0) else code
    m = re.search(rf"({NUM})\s*(?:degrees\s+)?([a-z]+)\s+(?:to|in|into)\s+([a-z]+)", text)
    if m and (m.group(2), m.group(3)) in _UNITS:
        return f"x = {_num(m.group(1))}\noutput = round({_UNITS[(m.group(2), m.group(3))]}, 6)"
    return None


_RULES: tuple[Callable[[str], str | None], ...] = (_percent, _primes, _single, _series, _aggregate, _arithmetic)


_EXPONENT = re.compile(r"(?<![\w.])\d++(?:\.\d++)?+e[+-]?\d{1,6}+(?![\w.])")


def _written_out(text: str) -> str | None:
    """`text` with `1.5e3` as `1500`; None when a number is too long to write out (`1e999`, `3e-45`): the
    rules read digits, and read `1e999 * 2` as `999 * 2`; such a query is left to the model."""
    found = [m.group() for m in _EXPONENT.finditer(text)]
    if any(abs(int(f.partition("e")[2])) > 30 for f in found):  # (1e999999 written out is a megabyte)
        return None
    plain = [format(Decimal(f), "f") for f in found]
    if any(len(p) > 30 for p in plain):
        return None
    rest = iter(plain)
    return _EXPONENT.sub(lambda _: next(rest), text)


def computation(text: str) -> str | None:
    """Python that computes what `text` asks, when a rule recognises it; None otherwise."""
    lowered = _written_out(text.lower())
    if lowered is None:
        return None
    lowered = re.sub(r"\d{31,}", " ", lowered)  # a 31-digit literal is not a question, and is slow
    for rule in _RULES:
        code = rule(lowered)
        if code:
            return code
    return None
