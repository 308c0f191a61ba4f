"""PII redaction applied to transcripts before they leave the machine.

Phone and card numbers (as digits, or spoken as words in English, Spanish or German:
"five five five one two..."), email addresses (typed, or spoken: "ana dot ruiz at gmail dot
com") become placeholders. The warehouse keeps the raw transcript.
"""

from __future__ import annotations

import re

NUMBER_WORDS = (
    r"(?:zero|oh|one|two|three|four|five|six|seven|eight|nine|double|triple"
    r"|cero|uno|dos|tres|cuatro|cinco|seis|siete|ocho|nueve"
    r"|null|eins|zwei|drei|vier|fünf|sechs|sieben|acht|neun)"
)
# Every pattern is bounded (each repetition has an upper limit, and a match may only start where
# the previous character could not belong to it), so redaction is linear in the text: an
# unbounded `[\w.+-]+@` tried every start of a long run of word characters (a reference read
# out digit by digit, a URL, a base64 blob) and scanned to its end, quadratic: a 1 MB word took
# hours. The limits are RFC 5321's (local part 64, a label 63).
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63}){1,8}")
# "kwame underscore mensah at gmail dot com", "mueller punkt klaus at web punkt de": a local
# part, "at", then a domain with at least one spoken dot
_JOINER = r"(?:dot|underscore|dash|hyphen|punkt|punto|unterstrich|guion bajo|guion)"
_DOT = r"(?:dot|punkt|punto)"
_SPOKEN_EMAIL = re.compile(
    rf"\b\w{{1,64}}(?:\s+{_JOINER}\s+\w{{1,64}}){{0,8}}\s+(?:at|arroba|ät)\s+\w{{1,63}}(?:\s+{_DOT}\s+\w{{1,63}}){{1,8}}\b",
    re.IGNORECASE,
)
# 13-19 digits, optionally grouped by spaces or dashes: card numbers (checked before phones)
CARD_NUMBER = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
# 7+ digits with the usual separators, optional +country code
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(?\d{2,4}\)?[\s.-]?){2,4}\d{2,4}(?!\d)")
# seven or more number words in a row: a phone or card number read out
_SPOKEN = re.compile(rf"\b{NUMBER_WORDS}(?:[\s,.-]+{NUMBER_WORDS}){{6,}}\b", re.IGNORECASE)


def _digits(s: str) -> int:
    return sum(c.isdigit() for c in s)


def redact(text: str) -> str:
    text = _EMAIL.sub("[EMAIL]", text)
    text = _SPOKEN_EMAIL.sub("[EMAIL]", text)
    # Any 13-19 digit run is treated as a card: better a redacted order number than a leaked card.
    text = CARD_NUMBER.sub(lambda m: "[CARD]" if 13 <= _digits(m.group()) <= 19 else m.group(), text)
    text = _PHONE.sub(lambda m: "[PHONE]" if _digits(m.group()) >= 7 else m.group(), text)
    return _SPOKEN.sub("[NUMBER]", text)
