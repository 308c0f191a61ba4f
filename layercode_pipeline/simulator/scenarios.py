"""Conversation scripts the simulator fills in: what callers say and what agents answer.

Each scenario carries the facts an enrichment should find (expected sentiment, outcome,
caller name) so tests can check the offline provider against ground truth.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

FIRST_NAMES = ["Maria", "James", "Aisha", "Kenji", "Sofia", "Liam", "Chloe", "Mateo", "Priya", "Olivia", "Noah", "Zara"]
LAST_NAMES = ["Garcia", "Smith", "Khan", "Tanaka", "Rossi", "Murphy", "Dubois", "Silva", "Patel", "Brown"]
WELCOMES = [
    "Hi, thanks for calling Acme support. This call may be recorded. How can I help you today?",
    "Hello! You're through to Acme. How can I help?",
]


@dataclass(frozen=True)
class Script:
    scenario: str
    turns: list[tuple[str, str]]  # (role, text) after the welcome
    sentiment: str  # positive / neutral / negative / mixed
    outcome: str  # resolved / unresolved / escalated / abandoned / voicemail
    caller_name: str | None = None


def _order_status(r: random.Random) -> Script:
    order = r.randint(10000, 99999)
    return Script(
        "order_status",
        [
            ("user", f"Hi, I'm calling about my order number {order}, it hasn't arrived yet."),
            ("assistant", f"Let me check order {order} for you. It shipped yesterday and should arrive on Thursday."),
            ("user", "Okay, that's good to know. Thank you."),
            ("assistant", "You're welcome. Is there anything else I can help with?"),
            ("user", "No, that's all."),
        ],
        "positive",
        "resolved",
    )


def _billing_dispute(r: random.Random) -> Script:
    amount = r.choice(["49.99", "120.00", "15.75"])
    return Script(
        "billing_dispute",
        [
            ("user", f"I was charged {amount} dollars twice on my last bill and I want a refund."),
            ("assistant", "I'm sorry about that. I can see the duplicate charge on your account."),
            ("user", "This keeps happening and it's frustrating."),
            ("assistant", "I understand. I've issued a refund for the duplicate charge; it takes three to five days."),
            ("user", "Fine. Please make sure it doesn't happen again."),
        ],
        "mixed",
        "resolved",
    )


def _appointment(r: random.Random) -> Script:
    day = r.choice(["Monday", "Tuesday", "Friday"])
    hour = r.choice(["9", "11", "3"])
    return Script(
        "appointment_booking",
        [
            ("user", f"I'd like to book an appointment for {day}, please."),
            ("assistant", f"Sure. I have {hour} o'clock available on {day}. Does that work?"),
            ("user", "Yes, that works great."),
            ("assistant", f"Booked for {day} at {hour}. You'll get a confirmation text shortly."),
            ("user", "Perfect, thanks so much!"),
        ],
        "positive",
        "resolved",
    )


def _cancellation(r: random.Random) -> Script:
    return Script(
        "cancellation",
        [
            ("user", "I want to cancel my subscription."),
            ("assistant", "I can help with that. May I ask why you'd like to cancel?"),
            ("user", "It's too expensive for me right now."),
            ("assistant", "I understand. I've cancelled it; it stays active until the end of the month."),
        ],
        "neutral",
        "resolved",
    )


def _named_caller(r: random.Random) -> Script:
    first, last = r.choice(FIRST_NAMES), r.choice(LAST_NAMES)
    digits = " ".join(
        r.choice(["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "zero"]) for _ in range(10)
    )
    return Script(
        "named_caller",
        [
            ("user", f"Hi, my name is {first} {last}. I need to update my phone number."),
            ("assistant", f"Thanks, {first}. What's the new number?"),
            ("user", f"It's {digits}."),
            ("assistant", "Got it, I've updated your phone number."),
            ("user", "Great, thank you."),
        ],
        "positive",
        "resolved",
        f"{first} {last}",
    )


def _angry(r: random.Random) -> Script:
    return Script(
        "angry_caller",
        [
            ("user", "This is ridiculous! My internet has been down for three days and nobody has fixed it!"),
            ("assistant", "I'm very sorry. Let me look into the outage in your area."),
            ("user", "I'm furious. This is the worst service I have ever had. I hate this."),
            (
                "assistant",
                "I understand your frustration. I'm transferring you to a human agent who can send a technician.",
            ),
            ("user", "Terrible. Just transfer me already."),
        ],
        "negative",
        "escalated",
    )


def _happy(r: random.Random) -> Script:
    return Script(
        "happy_caller",
        [
            ("user", "I just wanted to say the technician yesterday was wonderful! Great job."),
            ("assistant", "That's so kind of you, thank you for letting us know!"),
            ("user", "Really excellent service, I love it. Have a great day!"),
        ],
        "positive",
        "resolved",
    )


def _short(r: random.Random) -> Script:
    return Script("short_call", [("user", "Hello?")] if r.random() < 0.6 else [], "neutral", "abandoned")


def _multilingual(r: random.Random) -> Script:
    return Script(
        "multilingual",
        [
            ("user", "Hola, buenos días. Do you speak Spanish? Quiero saber el estado de mi pedido."),
            ("assistant", "¡Hola! I can help in English or Spanish. Su pedido llega mañana."),
            ("user", "Muchas gracias! 🙏 That's great 😊"),
        ],
        "positive",
        "resolved",
    )


def _card_details(r: random.Random) -> Script:
    card = " ".join(str(r.randint(1000, 9999)) for _ in range(4))
    return Script(
        "payment_update",
        [
            (
                "user",
                f"I need to update my card, the number is {card}. My email is caller{r.randint(1, 999)}@example.com.",
            ),
            (
                "assistant",
                "Thanks. For your security, please don't share card numbers on the call; use the app instead.",
            ),
            ("user", "Oh, okay. I'll do that."),
        ],
        "neutral",
        "unresolved",
    )


SCENARIOS = {
    "order_status": (_order_status, 3),
    "billing_dispute": (_billing_dispute, 2),
    "appointment_booking": (_appointment, 2),
    "cancellation": (_cancellation, 1),
    "named_caller": (_named_caller, 2),
    "angry_caller": (_angry, 1),
    "happy_caller": (_happy, 1),
    "short_call": (_short, 1),
    "multilingual": (_multilingual, 1),
    "payment_update": (_card_details, 1),
}


def pick_script(r: random.Random) -> tuple[str, Script]:
    names = list(SCENARIOS)
    weights = [SCENARIOS[n][1] for n in names]
    name = r.choices(names, weights)[0]
    welcome = r.choice(WELCOMES)
    return welcome, SCENARIOS[name][0](r)
