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


def _say(v: random.Random, *options: str) -> str:
    """One of several ways to say the same thing (`v` draws wording only: a seeded batch's
    calls, scenarios and timings do not depend on it)."""
    return v.choice(options)


def _order_status(r: random.Random, v: random.Random) -> Script:
    order = r.randint(10000, 99999)
    day = v.choice(["Thursday", "Friday", "Monday", "tomorrow"])
    turns = [
        (
            "user",
            _say(
                v,
                f"Hi, I'm calling about my order number {order}, it hasn't arrived yet.",
                f"Where is my order? It's order {order} and it was due last week.",
                f"Hello, can you tell me the status of order {order}?",
            ),
        ),
        (
            "assistant",
            _say(
                v,
                f"Let me check order {order} for you. It shipped yesterday and should arrive {day}.",
                f"Order {order} is with the courier now; the tracking says it arrives {day}.",
            ),
        ),
    ]
    if v.random() < 0.4:  # some callers want more than the date
        turns += [
            ("user", _say(v, "Can it be left with a neighbour?", "Will I need to sign for it?")),
            ("assistant", "I've added a delivery note to the order so the courier sees it."),
        ]
    turns += [
        ("user", _say(v, "Okay, that's good to know. Thank you.", "Great, thanks for checking.", "Perfect, thanks.")),
        ("assistant", "You're welcome. Is there anything else I can help with?"),
        ("user", _say(v, "No, that's all.", "No, that's everything, bye.")),
    ]
    return Script("order_status", turns, "positive", "resolved")


def _billing_dispute(r: random.Random, v: random.Random) -> Script:
    amount = r.choice(["49.99", "120.00", "15.75"])
    return Script(
        "billing_dispute",
        [
            (
                "user",
                _say(
                    v,
                    f"I was charged {amount} dollars twice on my last bill and I want a refund.",
                    f"There's a double charge of {amount} on my statement. I need that refunded.",
                ),
            ),
            ("assistant", "I'm sorry about that. I can see the duplicate charge on your account."),
            ("user", _say(v, "This keeps happening and it's frustrating.", "This is the second time, it's annoying.")),
            (
                "assistant",
                _say(
                    v,
                    "I understand. I've issued a refund for the duplicate charge; it takes three to five days.",
                    "You're right to be annoyed. The refund is issued and should show within five working days.",
                ),
            ),
            ("user", _say(v, "Fine. Please make sure it doesn't happen again.", "Okay. I hope it's fixed for good.")),
        ],
        "mixed",
        "resolved",
    )


def _appointment(r: random.Random, v: random.Random) -> Script:
    day = r.choice(["Monday", "Tuesday", "Friday"])
    hour = r.choice(["9", "11", "3"])
    turns = [
        (
            "user",
            _say(
                v,
                f"I'd like to book an appointment for {day}, please.",
                f"Can I get an appointment on {day}?",
                f"I need to see someone on {day} if possible.",
            ),
        ),
    ]
    if v.random() < 0.35:  # the first slot does not suit
        turns += [
            ("assistant", f"The earliest I have on {day} is 8 o'clock. Does that work?"),
            ("user", "That's a bit early. Anything later?"),
        ]
    turns += [
        ("assistant", f"Sure. I have {hour} o'clock available on {day}. Does that work?"),
        ("user", _say(v, "Yes, that works great.", "Yes please, book that.")),
        ("assistant", f"Booked for {day} at {hour}. You'll get a confirmation text shortly."),
        ("user", _say(v, "Perfect, thanks so much!", "Wonderful, thank you!")),
    ]
    return Script("appointment_booking", turns, "positive", "resolved")


def _cancellation(r: random.Random, v: random.Random) -> Script:
    return Script(
        "cancellation",
        [
            ("user", _say(v, "I want to cancel my subscription.", "Please cancel my plan.")),
            ("assistant", "I can help with that. May I ask why you'd like to cancel?"),
            (
                "user",
                _say(v, "It's too expensive for me right now.", "I'm moving abroad.", "I just don't use it enough."),
            ),
            ("assistant", "I understand. I've cancelled it; it stays active until the end of the month."),
        ],
        "neutral",
        "resolved",
    )


def _named_caller(r: random.Random, v: random.Random) -> Script:
    first, last = r.choice(FIRST_NAMES), r.choice(LAST_NAMES)
    digits = " ".join(
        r.choice(["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "zero"]) for _ in range(10)
    )
    return Script(
        "named_caller",
        [
            (
                "user",
                _say(
                    v,
                    f"Hi, my name is {first} {last}. I need to update my phone number.",
                    f"Hello, this is {first} {last}. I've got a new phone number to give you.",
                ),
            ),
            ("assistant", f"Thanks, {first}. What's the new number?"),
            ("user", f"It's {digits}."),
            ("assistant", "Got it, I've updated your phone number."),
            ("user", _say(v, "Great, thank you.", "Lovely, thanks a lot.")),
        ],
        "positive",
        "resolved",
        f"{first} {last}",
    )


def _angry(r: random.Random, v: random.Random) -> Script:
    return Script(
        "angry_caller",
        [
            (
                "user",
                _say(
                    v,
                    "This is ridiculous! My internet has been down for three days and nobody has fixed it!",
                    "My internet is down AGAIN. Three days! This is ridiculous!",
                ),
            ),
            ("assistant", "I'm very sorry. Let me look into the outage in your area."),
            (
                "user",
                _say(
                    v,
                    "I'm furious. This is the worst service I have ever had. I hate this.",
                    "Terrible service. I'm angry and I want this fixed today.",
                ),
            ),
            (
                "assistant",
                "I understand your frustration. I'm transferring you to a human agent who can send a technician.",
            ),
            ("user", _say(v, "Terrible. Just transfer me already.", "Awful. Fine, transfer me.")),
        ],
        "negative",
        "escalated",
    )


def _happy(r: random.Random, v: random.Random) -> Script:
    return Script(
        "happy_caller",
        [
            (
                "user",
                _say(
                    v,
                    "I just wanted to say the technician yesterday was wonderful! Great job.",
                    "Your engineer fixed everything this morning, brilliant work, thank you!",
                ),
            ),
            ("assistant", "That's so kind of you, thank you for letting us know!"),
            ("user", _say(v, "Really excellent service, I love it. Have a great day!", "Great job, I'm very happy!")),
        ],
        "positive",
        "resolved",
    )


def _short(r: random.Random, v: random.Random) -> Script:
    return Script(
        "short_call",
        [("user", _say(v, "Hello?", "Hi?", "Sorry, wrong number."))] if r.random() < 0.6 else [],
        "neutral",
        "abandoned",
    )


def _multilingual(r: random.Random, v: random.Random) -> Script:
    return Script(
        "multilingual",
        [
            ("user", "Hola, buenos días. Do you speak Spanish? Quiero saber el estado de mi pedido."),
            ("assistant", "¡Hola! I can help in English or Spanish. Su pedido llega mañana."),
            ("user", _say(v, "Muchas gracias! 🙏 That's great 😊", "Perfecto, muchas gracias! 😊")),
        ],
        "positive",
        "resolved",
    )


def _card_details(r: random.Random, v: random.Random) -> Script:
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
            ("user", _say(v, "Oh, okay. I'll do that.", "Right, I'll use the app then.")),
        ],
        "neutral",
        "unresolved",
    )


def _router_fault(r: random.Random, v: random.Random) -> Script:
    """The agent cannot fix it on the call: unresolved, and the caller is let down."""
    light = v.choice(["red", "orange", "blinking"])
    return Script(
        "router_fault",
        [
            ("user", f"My router light is {light} and nothing connects."),
            ("assistant", "Let's try a restart: unplug it for ten seconds, then plug it back in."),
            ("user", _say(v, "I did that twice already. It's still not working.", "Still not working after that.")),
            (
                "assistant",
                "I'm afraid I can't fix this remotely. I've logged the fault and a technician will call you.",
            ),
            ("user", _say(v, "Okay, that didn't help much, but thanks.", "So it's still not fixed. Okay.")),
        ],
        "negative",
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
    "router_fault": (_router_fault, 1),
}


def pick_script(r: random.Random, wording: random.Random) -> tuple[str, Script]:
    """A scenario and its facts drawn from `r`; how each line is worded from `wording`."""
    names = list(SCENARIOS)
    weights = [SCENARIOS[n][1] for n in names]
    name = r.choices(names, weights)[0]
    welcome = r.choice(WELCOMES)
    return welcome, SCENARIOS[name][0](r, wording)
