"""Realtime sessions: the vendor's Qwen-Omni-Realtime events over one WebSocket per
conversation (``protocol.py`` the wire and the session's settings, ``session.py`` one session).
The socket itself is served by ``omniserve.api.realtime``."""
