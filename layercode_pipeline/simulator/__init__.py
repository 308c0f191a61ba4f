"""A stand-in for the Layercode platform: seeded calls, signed webhooks, REST API, WAVs.

Python API (what the demo and tests use):

    batch = generate_batch(100, seed=7)
    api = SimulatorAPI(api_key="sk_test"); api.register(batch)
    with BackgroundServer(api.app) as server: ...            # REST at server.url + "/v1"
    report = deliver(batch, "http://127.0.0.1:8787/agents/{agent_id}/webhook")
    json.dumps(batch.manifest())                             # ground truth
"""

from .api import API_FAULTS, SimulatorAPI
from .deliver import DEFAULT_FAULTS, WEBHOOK_FAULTS, Deliverer, DeliveryReport, deliver, parse_fault_specs
from .generate import SimAgent, SimBatch, SimSession, default_agents, generate_batch
from .segments import write_segment


def listener_secrets_json(batch: SimBatch) -> str:
    """The `LAYERCODE_WEBHOOK_SECRETS` value a listener needs to accept this batch."""
    import json

    return json.dumps({a.agent_id: a.secret for a in batch.agents})


__all__ = [
    "API_FAULTS",
    "DEFAULT_FAULTS",
    "WEBHOOK_FAULTS",
    "Deliverer",
    "DeliveryReport",
    "SimAgent",
    "SimBatch",
    "SimSession",
    "SimulatorAPI",
    "default_agents",
    "deliver",
    "generate_batch",
    "listener_secrets_json",
    "parse_fault_specs",
    "write_segment",
]
