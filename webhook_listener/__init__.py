"""ASGI service Layercode calls: verify, answer (SSE), land durably."""
