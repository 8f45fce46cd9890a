"""The `dates` generator: human-written dates in many formats -> ISO `YYYY-MM-DD`, seeded, nothing downloaded.

Formats: "23 Nov 2026", "23 November 2026", "11/23/26", "11/23/2026", "Monday, November 23, 2026",
"Mon, 23 Nov 2026", "23.11.2026", "23.11.26", "2026-11-23", "2026/11/23", "20261123", "Nov 23rd, 2026",
"November 23, 2026", "Nov. 23, 2026", "23rd of November 2026", "the 23rd of November, 2026", "23-Nov-2026",
with noise: lower / upper case, doubled, leading and trailing spaces, a dropped comma, optional zero
padding, "Sept" / "Tues" / "Thurs" abbreviations, and now and then a letter missing from a long month name.

Ambiguous forms are resolved by one fixed convention, which the model learns and the README states:
- slashes are US order, month/day/year ("11/12/26" is 2026-11-12), unless the year comes first
  ("2026/11/12" is year/month/day);
- dots are European order, day.month.year ("11.12.2026" is 2026-12-11);
- two-digit years are 2000-2049 for 00-49 and 1950-1999 for 50-99, so dates are drawn from
  1950-01-01 to 2049-12-31 and every written date has exactly one reading.
"""

from __future__ import annotations

import random
from datetime import date, timedelta

MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
FIRST, LAST = date(1950, 1, 1), date(2049, 12, 31)
# Every character an input may hold; the model's source vocabulary.
SOURCE_CHARS = sorted(set(" ,-./") | set("0123456789") | set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"))
TARGET_CHARS = list("0123456789-")
MAX_SOURCE_LEN = 48  # longer than any generated input; the served model refuses longer ones
MAX_TARGET_LEN = 11  # "YYYY-MM-DD" and end-of-sequence


# helpers


def ordinal(day: int) -> str:
    suffix = "th" if 11 <= day % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def month_abbr(month: int, rng: random.Random) -> str:
    name = MONTHS[month - 1]
    return "Sept" if month == 9 and rng.random() < 0.3 else name[:3]


def month_name(month: int, rng: random.Random) -> str:
    """The full name, now and then with one letter (never the first) missing, as people type."""
    name = MONTHS[month - 1]
    if len(name) >= 5 and rng.random() < 0.05:
        drop = rng.randrange(1, len(name))
        name = name[:drop] + name[drop + 1 :]
    return name


def weekday_abbr(day: date, rng: random.Random) -> str:
    name = WEEKDAYS[day.weekday()]
    longer = {"Tuesday": "Tues", "Thursday": "Thurs"}
    return longer[name] if name in longer and rng.random() < 0.3 else name[:3]


def number(value: int, rng: random.Random) -> str:
    """Day or month as written: zero-padded to two digits half of the time."""
    return f"{value:02d}" if rng.random() < 0.5 else str(value)


def yy(year: int) -> str:
    return f"{year % 100:02d}"


# formats: each writes one date


def _formats(d: date, rng: random.Random) -> list[str]:
    day, month, year = d.day, d.month, d.year
    return [
        f"{day} {month_abbr(month, rng)} {year}",
        f"{number(day, rng)} {month_name(month, rng)} {year}",
        f"{number(month, rng)}/{number(day, rng)}/{yy(year)}",
        f"{number(month, rng)}/{number(day, rng)}/{year}",
        f"{WEEKDAYS[d.weekday()]}, {month_name(month, rng)} {day}, {year}",
        f"{weekday_abbr(d, rng)}, {day} {month_abbr(month, rng)} {year}",
        f"{day:02d}.{month:02d}.{year}",
        f"{number(day, rng)}.{number(month, rng)}.{yy(year)}",
        d.isoformat(),
        f"{year}/{month:02d}/{day:02d}",
        f"{year}{month:02d}{day:02d}",
        f"{month_abbr(month, rng)} {ordinal(day)}, {year}",
        f"{month_name(month, rng)} {day}, {year}",
        f"{month_abbr(month, rng)}. {day}, {year}",
        f"{ordinal(day)} of {month_name(month, rng)} {year}",
        f"the {ordinal(day)} of {month_name(month, rng)}, {year}",
        f"{number(day, rng)}-{month_abbr(month, rng)}-{year}",
    ]


def noisy(text: str, rng: random.Random) -> str:
    """Case, spacing and comma noise that does not change the date."""
    if "," in text and rng.random() < 0.15:
        text = text.replace(",", "")
    if " " in text and rng.random() < 0.1:
        spaces = [i for i, c in enumerate(text) if c == " "]
        at = rng.choice(spaces)
        text = text[:at] + " " + text[at:]
    if rng.random() < 0.05:
        text = " " * rng.randint(1, 2) + text + " " * rng.randint(0, 2)
    case = rng.random()
    if case < 0.15:
        text = text.lower()
    elif case < 0.3:
        text = text.upper()
    return text


def written(d: date, rng: random.Random) -> str:
    """One human-written form of `d`, in a format drawn uniformly, with noise."""
    forms = _formats(d, rng)
    return noisy(forms[rng.randrange(len(forms))], rng)


def random_date(rng: random.Random) -> date:
    return FIRST + timedelta(days=rng.randrange((LAST - FIRST).days + 1))


def generate_pairs(seed: int, sizes: tuple[int, ...]) -> list[list[tuple[str, str]]]:
    """(written, ISO) pairs for each split size; no written form appears twice, so splits never share an input."""
    rng = random.Random(seed)
    seen: set[str] = set()
    splits = []
    for size in sizes:
        pairs = []
        while len(pairs) < size:
            d = random_date(rng)
            text = written(d, rng)
            if text in seen:
                continue
            seen.add(text)
            pairs.append((text, d.isoformat()))
        splits.append(pairs)
    return splits
