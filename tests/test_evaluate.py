"""The enrichment evaluation harness: the shipped labelled calls, the offline rules per phrasing
family, and `layercode-pipeline evaluate` against the offline provider and against a local
OpenAI-compatible server (the real `openai` client, over loopback)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import polars as pl
import pytest
import yaml

from layercode_pipeline.lib.enrichment.analysis import DEFAULT_CONFIG, EnrichmentSettings
from layercode_pipeline.lib.enrichment.evaluate import load_labelled
from layercode_pipeline.lib.enrichment.offline import SentimentRules, caller_name, outcome
from layercode_pipeline.lib.enrichment.redact import redact
from layercode_pipeline.lib.transcripts import TurnText
from layercode_pipeline.simulator.llm import OpenAIStub
from layercode_pipeline.simulator.server import BackgroundServer

KEY = "sk-test-evaluate"


def turns(*lines: str) -> list[TurnText]:
    """'A: ...' for the agent, 'C: ...' for the caller."""
    return [TurnText("assistant" if line[0] == "A" else "user", line[3:]) for line in lines]


@pytest.mark.parametrize(
    "lines,expected",
    [
        # self-introductions, every common phrasing (the cue in any case, the name capitalised)
        (["A: How can I help?", "C: My name is Ana Ruiz. Where is my order?"], "Ana Ruiz"),
        (["A: How can I help?", "C: yeah my name's Bill Foster"], "Bill Foster"),
        (["A: Hello.", "C: Afternoon. The name's Grace Hopper, I need to cancel."], "Grace Hopper"),
        (["A: Who am I speaking with?", "C: Hi, it's Tom Becker. I was charged twice."], "Tom Becker"),
        (["A: Hello.", "C: Hello, this is Karen Walsh, calling about a charge."], "Karen Walsh"),
        (["A: Hello.", "C: Hi, I'm Olu Adeyemi, I'd like to reschedule."], "Olu Adeyemi"),
        (["A: What should I call you?", "C: Call me Jo."], "Jo"),
        (["A: Good morning.", "C: Morning! Priya here, I'd like to book a cleaning."], "Priya"),
        (["A: Who do I have on the line?", "C: Dave Morgan speaking. My internet is down."], "Dave Morgan"),
        (["A: Riverside Clinic.", "C: Hi, Sofia Marin calling, I'd like to move my appointment."], "Sofia Marin"),
        (["A: Who's calling please?", "C: Uh, hold on. Yeah, it's Rachel. Rachel Green."], "Rachel"),
        # a bare name in answer to the agent's question
        (["A: Who am I speaking with?", "C: Marcus Lee."], "Marcus Lee"),
        (["A: May I have your name please?", "C: Sure, Fatima."], "Fatima"),
        (["A: What name is the account under?", "C: It's under Alex Turner."], "Alex Turner"),
        (
            ["A: Can I take your name and number?", "C: Yes, Hannah Schmidt, and my number is 555 0199."],
            "Hannah Schmidt",
        ),
        (["A: What's your name?", "C: Siobhan O'Brien."], "Siobhan O'Brien"),
        (["A: Who am I speaking with?", "C: Jean-Luc Martin."], "Jean-Luc Martin"),
        (["A: Your full name please?", "C: Maria de la Cruz."], "Maria de la Cruz"),
        # Spanish and German
        (
            ["A: ¿En qué puedo ayudarle?", "C: Hola, me llamo Lucía Fernández. Quiero saber dónde está mi pedido."],
            "Lucía Fernández",
        ),
        (["A: ¿Con quién hablo?", "C: Soy Carlos Vega, necesito cambiar mi cita."], "Carlos Vega"),
        (["A: Wie kann ich helfen?", "C: Guten Tag, mein Name ist Jürgen Weber."], "Jürgen Weber"),
        (["A: Wie heißen Sie?", "C: Ich bin Petra. Mein Fahrrad ist kaputt."], "Petra"),
        # names that are not the caller's, and words that are not names
        (["A: Hi, this is Sam from Acme Support. How can I help?", "C: My package is not here."], None),
        (["A: Hello.", "C: I'm calling about my husband John's account."], None),
        (
            ["A: Hi, I'm Ava. What can I do for you?", "C: Hi Ava. I lost my card.", "A: Done.", "C: Thank you Ava."],
            None,
        ),
        (["A: Hello.", "C: Your technician, Mark Evans, never showed up."], None),
        (["A: Hello.", "C: I'm Really annoyed, the water is off."], None),
        (["A: Hello.", "C: It's Monday and my delivery still hasn't come."], None),
        (["A: Who's calling?", "C: This is about my internet, it's really slow."], None),
        (["A: Hello again.", "C: Hi, it's me again, about the refund."], None),
        (["A: How can I help?", "C: I'm calling for my mother, Rosa Diaz. My name is Luis."], "Luis"),
        (["A: Who am I speaking with?", "C: Why do you need that?"], None),
    ],
)
def test_caller_name_phrasings(lines, expected):
    assert caller_name(turns(*lines)) == expected


@pytest.mark.parametrize(
    "lines,expected",
    [
        (["A: Calling for Maria.", "C: Hi, you've reached Maria. Please leave a message after the tone."], "voicemail"),
        (["A: Hola.", "C: Ha llamado al buzón de voz de Pedro. Deje su mensaje."], "voicemail"),
        (["A: Guten Tag.", "C: Hier ist die Mailbox von Anna. Bitte sprechen Sie nach dem Signalton."], "voicemail"),
        (
            ["A: Hi.", "C: I left a voicemail yesterday about a refund.", "A: Your refund is approved.", "C: Great."],
            "resolved",
        ),
        (["A: Hi.", "C: I want a real person.", "A: I'm transferring you to our disputes team now."], "escalated"),
        (["A: Hola.", "C: Quiero hablar con una persona.", "A: Le paso con un compañero ahora mismo."], "escalated"),
        (
            [
                "A: Hi.",
                "C: Can I talk to a human?",
                "A: I'm sorry, I can't transfer you. Our office opens at 9.",
                "C: Useless.",
            ],
            "unresolved",
        ),
        (
            ["A: Hi.", "C: I want a refund.", "A: Unfortunately non-refundable bookings can't be refunded."],
            "unresolved",
        ),
        (
            ["A: Guten Tag.", "C: Ich möchte meinen Termin verschieben.", "A: Leider kann ich das nicht ändern."],
            "unresolved",
        ),
        (["A: How can I help?", "C: Hello?"], "abandoned"),
        (["A: How can I help?", "C: I wanted to ask about... actually never mind."], "abandoned"),
        (["A: Good morning, City Dental.", "C: Oh sorry, wrong number."], "abandoned"),
        (
            [
                "A: One moment.",
                "C: Sure.",
                "A: Still checking.",
                "C: This is taking forever. I don't have time for this.",
            ],
            "abandoned",
        ),
        (["A: How can I help?", "C: Where is my order?", "A: It arrives tomorrow.", "C: Okay."], "resolved"),
    ],
)
def test_outcome_rules(lines, expected):
    assert outcome(turns(*lines)) == expected


@pytest.mark.parametrize(
    "user,expected",
    [
        (["Okay, thanks. Bye."], "neutral"),  # politeness is not satisfaction
        (["Perfect, that's a relief. Thank you so much."], "positive"),
        (["Oh, it's working! Thank you!"], "positive"),  # emphatic gratitude is
        (["Your app has been broken for a week. It's terrible service.", "Whatever. Thanks, bye."], "negative"),
        (["I'm furious, you broke my boiler.", "Well, thank you, that's actually really helpful."], "mixed"),
        (["I love the blender, it's excellent, but the delivery was awful."], "mixed"),  # a contrast splits clauses
        (["Estoy muy molesto. Es un desastre.", "Bueno. Gracias."], "negative"),
        (["Die Reparatur war super, vielen Dank!"], "positive"),  # German "die"/"war" are not English words
        (["Monday at 9, okay.", "Okay, no problem."], "neutral"),
    ],
)
def test_sentiment_rules(user, expected):
    assert SentimentRules().classify(user)[0] == expected


@pytest.mark.parametrize(
    "text,placeholder",
    [
        ("my email is kwame underscore mensah at gmail dot com", "[EMAIL]"),
        ("das ist mueller punkt klaus at web punkt de", "[EMAIL]"),
        ("zero seven seven zero zero, nine zero zero, four five six", "[NUMBER]"),
        ("seis uno dos, tres cuatro cinco, seis siete ocho", "[NUMBER]"),
        ("Four one one one, one one one one, one one one one, one one one one.", "[NUMBER]"),
    ],
)
def test_spoken_pii_is_redacted(text, placeholder):
    out = redact(text)
    assert placeholder in out and not re.search(r"\b(?:gmail|web punkt|seven|siete|one one)\b", out)


def test_shipped_set_is_broad_and_valid():
    topics = list(EnrichmentSettings.load().topics)
    calls = load_labelled(topics=topics)
    assert len(calls) >= 80
    assert {c.sentiment for c in calls} == {"positive", "neutral", "negative", "mixed"}
    assert {c.outcome for c in calls} == {"resolved", "unresolved", "escalated", "abandoned", "voicemail"}
    assert sum(1 for c in calls if c.caller_name) >= 30 and sum(1 for c in calls if not c.caller_name) >= 30
    assert sum(1 for c in calls if c.pii) >= 8
    text = " ".join(t.text for c in calls for t in c.turns)
    assert "me llamo" in text and "Mein Name ist" in text.replace("mein Name ist", "Mein Name ist")


@pytest.mark.parametrize(
    "entry,message",
    [
        ({"id": "x", "turns": [{"robot": "hi"}], "sentiment": "neutral", "outcome": "resolved"}, "agent: text"),
        ({"id": "x", "turns": [{"caller": "hi"}], "sentiment": "angry", "outcome": "resolved"}, "sentiment"),
        (
            {
                "id": "x",
                "turns": [{"caller": "hi"}],
                "sentiment": "neutral",
                "outcome": "resolved",
                "pii": ["555 0199"],
            },
            "does not occur",
        ),
        (
            {
                "id": "x",
                "turns": [{"caller": "hi"}],
                "sentiment": "neutral",
                "outcome": "resolved",
                "topics": ["weather"],
            },
            "not in the enrichment config",
        ),
    ],
)
def test_a_bad_labelled_call_is_named_in_a_clear_error(tmp_path, entry, message):
    path = tmp_path / "calls.yaml"
    path.write_text(yaml.safe_dump({"calls": [entry]}))
    with pytest.raises(ValueError, match=message) as info:
        load_labelled(path, topics=list(EnrichmentSettings.load().topics))
    assert "call x" in str(info.value)


def run_evaluate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LAYERCODE_"))} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "layercode_pipeline.cli", "evaluate", *args],
        capture_output=True,
        text=True,
        env=env | {"COLUMNS": "200"},
        timeout=300,
        check=False,
    )


def test_evaluate_offline_prints_what_its_results_say(tmp_path):
    out = tmp_path / "offline.parquet"
    proc = run_evaluate("--provider", "offline", "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    results = pl.read_parquet(out)
    n = len(load_labelled())
    assert results.height == n and results["provider"].unique().to_list() == ["offline"]
    assert results["error"].null_count() == n
    for field in ("caller_name", "sentiment", "outcome", "pii_redacted"):
        accuracy = results[f"{field}_correct"].mean()
        assert re.search(rf"{field}_accuracy\s*│\s*{accuracy:.1%}", proc.stdout), field
    # the confusion table's rows add up to the labelled counts
    expected = results.group_by("expected_outcome").len()
    for label, count in expected.iter_rows():
        row = re.search(rf"│ {label}\s*│([\d\s│]+)│?\n", proc.stdout)
        assert row and sum(int(x) for x in re.findall(r"\d+", row.group(1))) == count, label


def test_evaluate_openai_two_prompt_versions_against_a_local_server(tmp_path):
    labelled = load_labelled()
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config["prompt_instructions"] = {"v1": "Be brief.", "v2": "Think about who is the caller. MARKER-V2"}
    cfg = tmp_path / "enrichment.yaml"
    cfg.write_text(yaml.safe_dump(config))

    def answer(body, content):  # a fixed answer: the harness's figures are then known in advance
        return {"sentiment": "neutral", "outcome": "resolved", "caller_name": None, "topics": []}

    stub = OpenAIStub(api_key=KEY, answer=answer)
    stub.script("malformed", "malformed", "malformed")
    server = BackgroundServer(stub.app).start()
    try:
        out = tmp_path / "openai.parquet"
        proc = run_evaluate(
            "--provider",
            "openai",
            "--model",
            "gpt-5-mini",
            "--config",
            str(cfg),
            "--prompt-version",
            "v1",
            "--prompt-version",
            "v2",
            "--concurrency",
            "1",
            "--output",
            str(out),
            env={"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": server.url + "/v1"},
        )
    finally:
        server.stop()
    assert proc.returncode == 0, proc.stderr
    n = len(labelled)
    # every call asked once per version; the SDK does not retry a 200 with a malformed answer
    assert len(stub.requests) == 2 * n
    sent = [b["messages"][1]["content"] for b in stub.requests]
    for call in labelled:
        for item in call.pii:
            assert not any(item.lower() in s.lower() for s in sent), item
    assert not any(re.search(r"\d{4}[ -]?\d{4}[ -]?\d{4}[ -]?\d{4}|[\w.+-]+@[\w-]+\.\w+", s) for s in sent)
    systems = [b["messages"][0]["content"] for b in stub.requests]
    assert sum("MARKER-V2" in s for s in systems) == n and sum("Be brief." in s for s in systems) == n

    results = pl.read_parquet(out)
    assert sorted(results["variant"].unique()) == ["openai:gpt-5-mini:v1", "openai:gpt-5-mini:v2"]
    errors = results.filter(pl.col("error").is_not_null())
    assert errors.height == 3 and all(e.startswith("malformed answer") for e in errors["error"])
    assert not errors["sentiment_correct"].any()  # an error row is a miss
    for _variant, part in results.group_by("variant"):
        answered = part.filter(pl.col("error").is_null())
        neutral = answered.filter(pl.col("expected_sentiment") == "neutral").height
        assert part["sentiment_correct"].sum() == neutral
        assert part["caller_name_correct"].sum() == answered.filter(pl.col("expected_caller_name").is_null()).height
        assert part["cost_usd"].sum() > 0 and part["input_tokens"].sum() > 0
    for variant in ("openai:gpt-5-mini:v1", "openai:gpt-5-mini:v2"):
        assert variant in proc.stdout
    assert "Calls the variants disagree on" in proc.stdout  # the malformed answers differ between versions


def test_evaluate_refuses_an_unknown_prompt_version_and_a_missing_key():
    proc = run_evaluate("--provider", "offline", "--prompt-version", "v9")
    assert proc.returncode != 0 and "v9" in proc.stderr and "known: ['v1']" in proc.stderr
    proc = run_evaluate("--provider", "openai")
    assert proc.returncode != 0 and "OPENAI_API_KEY" in proc.stderr


def test_results_write_as_csv_and_json(tmp_path):
    for suffix in (".csv", ".json"):
        out = tmp_path / f"r{suffix}"
        assert run_evaluate("--provider", "offline", "--output", str(out)).returncode == 0
        text = out.read_text()
        assert "name-my-name-is-sentence-start" in text
        if suffix == ".json":
            assert len(json.loads(text)) == len(load_labelled())
