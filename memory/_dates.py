"""Times as narratives write them: "12 March 1850", "March 1850", "1851", "1850-03-12"
become ISO dates (as precise as written: "1850-03-12", "1850-03", "1850"); "two days
later", "the next morning" are relative and keep their text with an anchor; "that
evening" is neither and is kept as text only.

No date library: dateparser reads "the next morning" as today's date, which is worse
than no date at all for a story set in 1850.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import date, timedelta

_MONTHS = {m.lower(): i for i, m in enumerate(calendar.month_name) if m}
_MONTHS.update({m.lower(): i for i, m in enumerate(calendar.month_abbr) if m})
_MONTHS["sept"] = 9
_MONTH = r"(jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?"
_YEAR = r"(\d{4})"
_DAY = r"(\d{1,2})(?:st|nd|rd|th)?"

_ISO = re.compile(r"\b(\d{4})-(\d{2})(?:-(\d{2}))?\b")
_DMY = re.compile(rf"\b{_DAY}\s+(?:of\s+)?{_MONTH},?\s+{_YEAR}\b", re.I)
_MDY = re.compile(rf"\b{_MONTH}\s+{_DAY},?\s+{_YEAR}\b", re.I)
_MY = re.compile(rf"\b{_MONTH},?\s+(?:of\s+)?{_YEAR}\b", re.I)
_Y = re.compile(r"\b(1[0-9]{3}|20[0-9]{2})\b")

_NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
            "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12,
            "several": None, "few": None, "some": None}
_UNITS = {"day": 1, "week": 7, "fortnight": 14, "month": 30, "year": 365}
_SHIFT = re.compile(
    r"\b(\d+|a|an|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|several|few|some)"
    r"\s+(day|week|fortnight|month|year)s?\s+(later|after(?:wards?)?|on|before|earlier|ago)\b", re.I)
_NEXT = re.compile(r"\b(?:the\s+)?(next|following|previous)\s+(day|morning|evening|night|week|month|year)\b", re.I)
_RELATIVE_WORDS = re.compile(
    r"\b(later|afterwards?|earlier|before|ago|next|following|previous|meanwhile|then|"
    r"that (?:same )?(?:day|night|morning|evening)|soon)\b", re.I)


@dataclass(frozen=True)
class When:
    text: str
    date: str | None = None  # ISO, as precise as written
    relative: bool = False


def parse(text: str | None) -> When | None:
    """What a time expression says, or None for an empty one."""
    text = " ".join((text or "").split())
    if not text:
        return None
    iso = absolute(text)
    if iso:
        return When(text, iso)
    return When(text, None, bool(_SHIFT.search(text) or _NEXT.search(text)
                                 or _RELATIVE_WORDS.search(text)))


def absolute(text: str) -> str | None:
    m = _ISO.search(text)
    if m and 1 <= int(m.group(2)) <= 12:
        day = m.group(3)
        return _valid(int(m.group(1)), int(m.group(2)), int(day) if day else None)
    for regex, order in ((_DMY, "dmy"), (_MDY, "mdy")):
        m = regex.search(text)
        if m:
            parts = dict(zip(order, m.groups()))
            return _valid(int(parts["y"]), _month(parts["m"]), int(parts["d"]))
    m = _MY.search(text)
    if m:
        return _valid(int(m.group(2)), _month(m.group(1)), None)
    m = _Y.search(text)
    if m:
        return m.group(1)
    return None


def _month(word: str) -> int:
    word = word.lower().rstrip(".")
    return _MONTHS.get(word) or _MONTHS[word[:3]]


def _valid(year: int, month: int, day: int | None) -> str | None:
    try:
        if day is None:
            date(year, month, 1)
            return f"{year:04d}-{month:02d}"
        return date(year, month, day).isoformat()
    except ValueError:
        return None


def shift(anchor: str | None, text: str) -> str | None:
    """The date ``text`` ("two days later") points at, counted from ``anchor`` (ISO);
    None when either is too vague to count from."""
    if not anchor:
        return None
    m = _SHIFT.search(text)
    if m:
        amount = int(m.group(1)) if m.group(1).isdigit() else _NUMBERS.get(m.group(1).lower())
        if amount is None:
            return None
        days = amount * _UNITS[m.group(2).lower()]
        sign = -1 if m.group(3).lower() in ("before", "earlier", "ago") else 1
    else:
        m = _NEXT.search(text)
        if not m:
            return None
        unit = m.group(2).lower()
        days = _UNITS.get(unit, 1)
        sign = -1 if m.group(1).lower() == "previous" else 1
    precision = len(anchor)
    if days % 30 == 0 or days % 365 == 0:  # months and years: by the calendar
        months = sign * (days // 365 * 12 if days % 365 == 0 else days // 30)
        year, month = int(anchor[:4]), int(anchor[5:7]) if precision >= 7 else 1
        total = year * 12 + (month - 1) + months
        if precision == 4:
            return str(total // 12) if months % 12 == 0 else anchor
        moved_month = f"{total // 12:04d}-{total % 12 + 1:02d}"
        if precision == 7:
            return moved_month
        day = min(int(anchor[8:10]), calendar.monthrange(total // 12, total % 12 + 1)[1])
        return f"{moved_month}-{day:02d}"
    if precision == 4:  # a year: days and weeks do not move it
        return anchor
    try:
        base = date.fromisoformat(anchor if precision == 10 else anchor + "-01")
    except ValueError:
        return None
    moved = base + timedelta(days=sign * days)
    return moved.isoformat() if precision == 10 else moved.isoformat()[:7]


def pretty(iso: str | None) -> str:
    if not iso:
        return ""
    parts = iso.split("-")
    if len(parts) == 1:
        return parts[0]
    month = calendar.month_name[int(parts[1])]
    return f"{month} {parts[0]}" if len(parts) == 2 else f"{int(parts[2])} {month} {parts[0]}"
