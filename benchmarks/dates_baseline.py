"""The peer for `s2s-dates`: a hand-written rule-based parser over the generator's formats and conventions.

It knows what the model has to learn: slashes are month/day/year unless the year comes first, dots are
day.month.year, two-digit years 00-49 are 20xx and 50-99 19xx, month names by their first three letters
or, for a typo, by the closest full name. An estimator-shaped wrapper lets the quality benchmark treat it
as any other peer.
"""

from __future__ import annotations

import difflib
import re
from datetime import date

from training.data.datasets import load_dataset, split_texts
from training.data.dates import MONTHS, WEEKDAYS

NUMERIC = re.compile(r"^(\d{1,4})([./-])(\d{1,2})\2(\d{1,4})$")
COMPACT = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
FILLER = {"the", "of", "st", "nd", "rd", "th"}
MONTH_NAMES = [m.lower() for m in MONTHS]


def full_year(text: str) -> int:
    year = int(text)
    return year if len(text) == 4 else (2000 + year if year < 50 else 1900 + year)


def month_of(word: str) -> int | None:
    if word[:3] in {w[:3].lower() for w in WEEKDAYS} or word in FILLER:
        return None
    for i, name in enumerate(MONTH_NAMES):
        if name.startswith(word[:3]):
            return i + 1
    close = difflib.get_close_matches(word, MONTH_NAMES, n=1, cutoff=0.6)
    return MONTH_NAMES.index(close[0]) + 1 if close else None


def parse(text: str) -> str:
    """ISO `YYYY-MM-DD`, or "" when the text is not one of the known forms."""
    text = text.strip().lower()
    try:
        if match := COMPACT.match(text):
            return date(*map(int, match.groups())).isoformat()
        if match := NUMERIC.match(text):
            first, sep, middle, last = match.groups()
            if len(first) == 4:
                year, month, day = int(first), int(middle), int(last)
            elif sep == ".":
                year, month, day = full_year(last), int(middle), int(first)
            else:
                year, month, day = full_year(last), int(first), int(middle)
            return date(year, month, day).isoformat()
        numbers = re.findall(r"\d+", text)
        months = [m for m in map(month_of, re.findall(r"[a-z]+", text)) if m]
        years = [n for n in numbers if len(n) == 4]
        days = [n for n in numbers if len(n) <= 2]
        if len(months) == 1 and len(years) == 1 and len(days) == 1:
            return date(int(years[0]), months[0], int(days[0])).isoformat()
    except ValueError:  # an impossible date
        pass
    return ""


class RuleBasedDates:
    """sklearn-shaped: nothing to fit; predict parses each text."""

    def fit(self, x: list[str], y: list[str]) -> RuleBasedDates:
        return self

    def predict(self, x: list[str]) -> list[str]:
        return [parse(text) for text in x]


def text_splits(dataset: str, **options) -> list[tuple[list[str], list[str]]]:
    """(inputs, ISO targets) for train, validation and test."""
    data = load_dataset(dataset, **options)
    return [split_texts(split, data) for split in (data.train, data.val, data.test)]
