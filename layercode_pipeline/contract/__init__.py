"""The Layercode wire contract (../shared/layercode-contract.md) in one place.

Shared by the webhook listener, the simulator and the ingest so that all three agree on
the signature, the event shapes and the landing file format.
"""
