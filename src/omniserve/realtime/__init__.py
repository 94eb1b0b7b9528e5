"""Realtime sessions: the vendor's Qwen-Omni-Realtime events over one WebSocket per
conversation (``protocol.py`` the wire and the session's settings, ``session.py`` one session).
A session may instead be relayed to an upstream's own realtime endpoint (``relay.py`` Model
Studio's and the choice, ``turn_relay.py`` vLLM-Omni's, ``upstream.py`` what both share).
The socket itself is served by ``omniserve.api.realtime``."""
