"""The offline provider: deterministic rules and a lexicon, free, and labelled `offline`.

It is not an LLM and does not pretend to be one. Its rules are general, not case lists:

* caller name: a self-introduction in a caller sentence ("my name is", "it's", "I'm", "call
  me", "me llamo", "ich bin", "<name> here", "<name> speaking", ...), or the caller's short
  answer right after the agent asked for a name. Only caller turns are read, so the agent's
  own name and names the agent repeats back are never taken; a name must be capitalised
  (speech-to-text capitalises names) and is not followed by a possessive ("John's account").
* outcome, in order: a mailbox greeting as the callee's first words -> voicemail; the agent
  saying it transfers the call (and not that it cannot) -> escalated; the agent saying it
  cannot help in its last turns, or the caller saying it did not help -> unresolved; the
  caller leaving before anything was done -> abandoned; else resolved.
* sentiment: VADER per caller sentence with closing pleasantries ("thanks", "bye") and bare
  acknowledgements ("okay", "fine") taken out, because politeness is not satisfaction; a few
  Spanish and German words added to the lexicon. Both a clearly negative and a clearly
  positive sentence -> mixed.

`layercode-pipeline evaluate` measures these rules on the shipped labelled calls.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from typing import Any

from layercode_pipeline.lib.enrichment.analysis import EnrichmentSettings, check_analysis
from layercode_pipeline.lib.enrichment.interface import Analysis, elapsed_ms
from layercode_pipeline.lib.enrichment.redact import CARD_NUMBER
from layercode_pipeline.lib.transcripts import TurnText

OFFLINE_MODEL = "offline-rules-v2"

# --- caller name ---------------------------------------------------------------------------
_UP, _LO = "A-ZÀ-ÖØ-Þ", "a-zß-öø-ÿ"
_TOKEN = rf"[{_UP}](?:[{_LO}]+|['’][{_UP}][{_LO}]+)(?:[-'’][{_UP}]?[{_LO}]+)*"
_PARTICLE = r"(?:de la|de los|van der|van den|von der|de|del|da|di|van|von|le)"
_NAME = rf"(?P<name>{_TOKEN}(?:\s+(?:{_PARTICLE}\s+)?{_TOKEN})?)(?!['’]s\b)"
# cue phrases are matched in any case; the name itself must be capitalised
_CUES = (
    r"my name is|my name's|the name's|the name is|name's|this is|it's|it is|i'm|i am|"
    r"you can call me|call me|me llamo|mi nombre es|soy|ich bin|ich heiße|mein name ist|hier ist|hier spricht"
)
_INTRO = re.compile(rf"(?:^|[\s,;])(?i:{_CUES})\s+{_NAME}")
_GREETING = r"(?:(?i:hi|hello|hey|yes|yeah|morning|afternoon|evening|good morning|good afternoon|good evening|hola|hallo)[,!.]?\s+)*"
_SUFFIX = re.compile(rf"^\s*{_GREETING}{_NAME}\s+(?i:here|speaking|calling)\b")
# the agent asked who is calling: the caller's short answer is the name
_ASKS_NAME = re.compile(
    r"your name|your full name|what name|who am i speaking|who am i talking|who do i have|who's calling|"
    r"who is calling|speaking with|speaking to|call you\?|con quién hablo|cómo se llama|su nombre|wie heißen sie|"
    r"ihr name|mit wem spreche",
    re.IGNORECASE,
)
_FILLER = re.compile(
    r"^\s*(?:(?:sure|yes|yeah|yep|uh|um|erm|oh|ok|okay|hi|hello|sí|si|ja|it's|it is|that's|"
    r"this is|under|it's under|of course|certainly|claro)[,.!]?\s+)*",
    re.IGNORECASE,
)
_ANSWER_NAME = re.compile(rf"^{_NAME}\s*(?:[,.!?]|$)")  # the name is the whole answer, or its first clause
# capitalised words that follow "I'm", "it's", "this is" without being names
_NOT_NAMES = {
    "Calling",
    "Just",
    "Sorry",
    "Here",
    "Fine",
    "Good",
    "Okay",
    "Ok",
    "Not",
    "Very",
    "So",
    "Really",
    "The",
    "A",
    "An",
    "It",
    "This",
    "That",
    "Me",
    "My",
    "Your",
    "Our",
    "About",
    "Still",
    "Also",
    "Afraid",
    "Trying",
    "Looking",
    "Back",
    "Glad",
    "Happy",
    "Sure",
    "Yes",
    "No",
    "Hi",
    "Hello",
    "Thanks",
    "Thank",
    "Please",
    "Yeah",
    "Well",
    "Oh",
    "Um",
    "Uh",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
    "Today",
    "Tomorrow",
    "Ich",
    "Das",
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
    "English",
    "Spanish",
    "Español",
    "Deutsch",
    "Hola",
    "Hallo",
    "Ja",
    "Sí",
    "Si",
    "Is",
    "Are",
    "Can",
}
_SENTENCE_END = re.compile(r"(?<=[.!?¿¡])\s+")


def caller_name(turns: list[TurnText]) -> str | None:
    """The caller's own name, if the caller said it."""
    previous_agent = ""
    for turn in turns:
        if turn.role == "assistant":
            previous_agent = turn.text
            continue
        if turn.role != "user":
            continue
        for sentence in _SENTENCE_END.split(turn.text):
            for match in (_SUFFIX.search(sentence), *_INTRO.finditer(sentence)):
                if match and _plausible(match.group("name")):
                    return match.group("name")
        if _ASKS_NAME.search(previous_agent):
            first = _SENTENCE_END.split(turn.text.strip())[0]
            answer = _ANSWER_NAME.match(_FILLER.sub("", first))
            if answer and _plausible(answer.group("name")):
                return answer.group("name")
        previous_agent = ""
    return None


def _plausible(name: str) -> bool:
    return name.split()[0] not in _NOT_NAMES


# --- outcome -------------------------------------------------------------------------------
# a mailbox greeting: the callee's first words on an outbound call
_MAILBOX = re.compile(
    r"leave (?:a|your) message|leave your name and number|after the (?:tone|beep)|record your message|"
    r"not available|can't take your call|cannot take your call|you've reached|you have reached|"
    r"buzón de voz|deje su mensaje|deje un mensaje|después de la señal|mailbox|nach dem signalton|"
    r"hinterlassen sie",
    re.IGNORECASE,
)
# the agent hands the call to a person (said as done, not offered)
_TRANSFER = re.compile(
    r"transferring you|transfer you|put you through|putting you through|connect you|connecting you|"
    r"hand you over|handing you over|le paso con|le transfiero|verbinde sie|stelle sie durch",
    re.IGNORECASE,
)
_NEGATED = re.compile(
    r"(?:can't|cannot|can not|unable to|not able to|won't|no puedo|kann .{0,20}nicht)\s*$", re.IGNORECASE
)
# the agent cannot help
_CANNOT = re.compile(
    r"\b(?:can't|cannot|unable to|not able to|i'm afraid|unfortunately|can only|no one is available|"
    r"you'll need to|you will need to|please call back|please try again|leider|no puedo|no es posible)\b",
    re.IGNORECASE,
)
# the caller says it did not help
_NOT_HELPED = re.compile(
    r"useless|didn't help|doesn't help|still not|still doesn't|still isn't|waste of time", re.IGNORECASE
)
# the caller leaves before anything was done
_LEAVING = re.compile(
    r"never ?mind|forget it|wrong number|call back later|don't have time|gotta go|have to go|"
    r"got to go|someone's at the door|da igual|olvídalo|vergessen sie es",
    re.IGNORECASE,
)


def outcome(turns: list[TurnText]) -> str:
    user = [t.text for t in turns if t.role == "user"]
    agent = [t.text for t in turns if t.role == "assistant"]
    if user and _MAILBOX.search(user[0]):
        return "voicemail"
    for text in agent:
        for match in _TRANSFER.finditer(text):
            if not _NEGATED.search(text[: match.start()]):
                return "escalated"
    if any(_CANNOT.search(t) for t in agent[-2:]) or (user and _NOT_HELPED.search(user[-1])):
        return "unresolved"
    caller_left = bool(turns) and turns[-1].role == "user" and bool(_LEAVING.search(turns[-1].text))
    if caller_left or sum(len(u.split()) for u in user) <= 3:
        return "abandoned"
    return "resolved"


# --- sentiment -----------------------------------------------------------------------------
# plain politeness carries no sentiment about the call; emphatic gratitude does
_EMPHATIC_THANKS = re.compile(
    r"\b(?:thank you (?:so|very) much|thanks (?:a lot|so much|very much)|thank you!|thanks!|really appreciate(?: it)?|"
    r"muchas gracias|vielen dank)",
    re.IGNORECASE,
)
_PLEASANTRIES = re.compile(
    r"\b(?:thank you|thanks|cheers|bye|goodbye|no problem|have a (?:nice|good|great) (?:day|evening)|please|"
    r"por favor|gracias|hasta luego|adiós|danke(?: schön)?|tschüss|auf wiederhören)\b",
    re.IGNORECASE,
)
# a sentence that only acknowledges ("Okay.", "That's fine.", "Oh good.") says nothing about the call
_ACK_ONLY = re.compile(
    r"^\W*(?:(?:oh|ok|okay|alright|all right|right|sure|fine|good|cool|yes|yeah|yep|got it|"
    r"good to know|that's fine|that's all|that's it|vale|bueno|na gut|gut|ja|sí)\W*)+$",
    re.IGNORECASE,
)
# a contrast splits a sentence into clauses that can feel differently ("I love it, but ...")
_CONTRAST = re.compile(r",?\s+\b(?:but|although|though|pero|aber)\b\s+", re.IGNORECASE)
# words VADER scores that say nothing in a service call ("I'd like", "can you help"), and
# German and Spanish words that are English lexicon entries ("die", "war", "por favor")
_NEUTRAL_WORDS = (
    "okay",
    "ok",
    "alright",
    "sure",
    "yes",
    "yeah",
    "please",
    "like",
    "help",
    "hmm",
    "sorry",
    "die",
    "war",
    "favor",
)
_EXTRA_LEXICON = {
    # Spanish
    "excelente": 3.0,
    "perfecto": 2.5,
    "genial": 2.5,
    "amable": 2.0,
    "encantado": 2.5,
    "encantada": 2.5,
    "molesto": -2.3,
    "molesta": -2.3,
    "desastre": -2.8,
    "terrible": -2.5,
    "horrible": -2.5,
    "enfadado": -2.5,
    "roto": -1.5,
    "fatal": -2.5,
    "vergüenza": -2.0,
    # German
    "super": 2.5,
    "toll": 2.5,
    "prima": 2.2,
    "freut": 2.0,
    "ärgerlich": -2.3,
    "unverschämt": -2.8,
    "schrecklich": -2.5,
    "enttäuscht": -2.3,
    "wütend": -2.5,
    # English words VADER lacks or mis-weights for service calls
    "incompetent": -2.5,
    "ridiculous": -2.0,
    "unacceptable": -2.5,
    "embarrassed": -1.8,
    "relief": 2.0,
    "forever": -1.5,
    "finally": -0.5,
    "whatever": -1.0,
    "rude": -2.0,
    "broke": -1.5,
    "slow": -1.5,
    "quick": 1.5,
    "grateful": 2.0,
}
CLEARLY = 0.3


class SentimentRules:
    def __init__(self) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self.vader = SentimentIntensityAnalyzer()
        for word in _NEUTRAL_WORDS:
            self.vader.lexicon.pop(word, None)
        self.vader.lexicon.update(_EXTRA_LEXICON)

    def scores(self, user: list[str]) -> list[float]:
        """One compound score per caller clause that says something once politeness is gone."""
        out = []
        for text in user:
            for sentence in _SENTENCE_END.split(_EMPHATIC_THANKS.sub(" grateful. ", text)):
                for clause in _CONTRAST.split(sentence):
                    bare = _PLEASANTRIES.sub("", clause)
                    if re.search(r"[^\W\d_]{2,}", bare) and not _ACK_ONLY.match(bare):
                        out.append(self.vader.polarity_scores(bare)["compound"])
        return out

    def classify(self, user: list[str]) -> tuple[str, float]:
        scores = self.scores(user)
        if not scores:
            return "neutral", 0.0
        mean = sum(scores) / len(scores)
        if max(scores) >= CLEARLY and min(scores) <= -CLEARLY:
            return "mixed", mean
        if min(scores) <= -CLEARLY:
            return "negative", mean
        if max(scores) >= CLEARLY:
            return "positive", mean
        return "neutral", mean


# --- the provider ----------------------------------------------------------------------------
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"[a-zA-Z']+")
_STOP = set(
    "a an the and or but if to of in on for with at by from is are was were be been it this that i you we "
    "he she they me my your our us can will would could should do does did have has had not no so just "
    "please thanks thank okay ok hi hello yes".split()
)


class OfflineProvider:
    """Rules and a lexicon, deterministic, free, and honest about what it is."""

    name = "offline"
    model = OFFLINE_MODEL

    def __init__(self, settings: EnrichmentSettings):
        self.settings = settings
        self.sentiment = SentimentRules()

    async def aclose(self) -> None:
        return None

    async def analyse(self, turns: list[TurnText], text: str) -> Analysis:
        started = time.perf_counter()
        user = [t.text for t in turns if t.role == "user"]
        agent = [t.text for t in turns if t.role == "assistant"]
        everything = " ".join(t.text for t in turns).lower()
        result_outcome = outcome(turns)
        if result_outcome == "voicemail":  # nobody spoke: a greeting is not a feeling or a name
            sentiment, score, name = "neutral", 0.0, None
        else:
            sentiment, score = self.sentiment.classify(user)
            name = caller_name(turns)
        topics = [name_ for name_, words in self.settings.topics.items() if any(w in everything for w in words)] or (
            ["other"] if "other" in self.settings.topics else []
        )
        result: dict[str, Any] = {
            "summary": self._summary(turns),
            "caller_name": name,
            "sentiment": sentiment,
            "sentiment_score": round(max(-1.0, min(1.0, score)), 4),
            "outcome": result_outcome,
            "topics": topics,
            "quality_score": self._quality(sentiment, result_outcome, agent),
            "quality_rationale": f"rule-based: outcome {result_outcome}, caller sentiment {sentiment}",
            "compliance_flags": {c.name: self._check(c, turns) for c in self.settings.compliance_checks},
            "action_items": self._actions(result_outcome, everything),
        }
        if self.settings.custom_fields:
            result["custom_fields"] = {f.name: self._custom(f, user, everything) for f in self.settings.custom_fields}
        return Analysis(check_analysis(result), latency_ms=elapsed_ms(started))

    @staticmethod
    def _quality(sentiment: str, outcome_: str, agent: list[str]) -> int:
        score = {"resolved": 4, "escalated": 3, "unresolved": 2, "abandoned": 3, "voicemail": 3}[outcome_]
        score += {"positive": 1, "negative": -1}.get(sentiment, 0)
        return max(1, min(5, score))

    @staticmethod
    def _summary(turns: list[TurnText]) -> str:
        """Extractive: the highest-scoring caller and agent sentences, in order, at most three."""
        sentences = [(i, t.role, s) for i, t in enumerate(turns) for s in _SENTENCE.split(t.text) if s.strip()]
        if not sentences:
            return "No conversation took place."
        freq = Counter(w for _, _, s in sentences for w in _WORD.findall(s.lower()) if w not in _STOP)

        def weight(s: str) -> float:
            words = [w for w in _WORD.findall(s.lower()) if w not in _STOP]
            return sum(freq[w] for w in words) / (len(words) + 1) if words else 0.0

        candidates = [x for x in sentences if not (x[0] == 0 and x[1] == "assistant")] or sentences
        best = sorted(candidates, key=lambda x: -weight(x[2]))[:3]
        return " ".join(f"{'Caller' if r == 'user' else 'Agent'}: {s.strip()}" for _, r, s in sorted(best))

    @staticmethod
    def _check(check: Any, turns: list[TurnText]) -> bool:
        texts = [t.text for t in turns if check.speaker == "any" or t.role == check.speaker]
        if check.detect == "card_number":
            return any(CARD_NUMBER.search(t) for t in texts)
        return any(k.lower() in t.lower() for t in texts for k in check.keywords)

    @staticmethod
    def _actions(outcome_: str, everything: str) -> list[str]:
        actions = []
        if outcome_ == "escalated":
            actions.append("Follow up on the escalation to a human agent.")
        if "refund" in everything:
            actions.append("Confirm the refund was processed.")
        if "technician" in everything:
            actions.append("Schedule the technician visit.")
        return actions

    @staticmethod
    def _custom(f: Any, user: list[str], everything: str) -> Any:
        if f.type == "boolean" and f.keywords:
            return any(k in everything for k in f.keywords)
        if f.allowed_values and set(f.allowed_values) >= {"english", "spanish"}:
            spanish = sum(
                w in " ".join(user).lower().split() for w in ("hola", "gracias", "quiero", "pedido", "buenos")
            )
            return "spanish" if spanish >= 2 else "english"
        return None  # the offline provider cannot answer free-form custom fields
