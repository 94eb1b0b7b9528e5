"""The accounts tables. Migrations in ``migrations/`` create exactly this (a test compares them).

Times are integer milliseconds since the epoch: they compare, index and divide into days the
same way on SQLite and PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

from omniserve.job import TOKEN_KINDS

metadata = MetaData()

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),  # public: key_<hex>
    Column("name", String(200), nullable=False),
    Column("secret_hash", String(64), nullable=False, unique=True),  # sha256 hex of the secret
    Column("hint", String(16), nullable=False),  # sk-…last4, to recognise a key in lists
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    Column("revoked_ms", BigInteger, nullable=True),
    # NULL: the default (the model's catalog limit for rpm/tpm, none for the others); 0: none.
    Column("rpm", Integer, nullable=True),
    Column("tpm", Integer, nullable=True),
    Column("concurrency", Integer, nullable=True),
    Column("quota_tokens", BigInteger, nullable=True),
    Column("sessions", Integer, nullable=True),  # realtime sessions at once; NULL: the server's
    Column("models", Text, nullable=False, default=""),  # comma-separated; empty: every model
    Column("admin", Boolean, nullable=False, default=False),
    Column("used_tokens", BigInteger, nullable=False, default=0),
)

# One row, bumped with every change to api_keys, so a server notices changes made elsewhere
# (the CLI, another replica) with one tiny read.
key_state = Table(
    "key_state",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("version", BigInteger, nullable=False),
)

ledger = Table(
    "ledger",
    metadata,
    Column("request_id", String(36), primary_key=True),  # a request is on the books once
    Column("key_id", String(32), nullable=True),  # NULL when the server runs without keys
    Column("started_ms", BigInteger, nullable=False),
    Column("model", String(100), nullable=False),
    # running | ok | error | disconnected | interrupted (the server died mid-stream)
    Column("status", String(16), nullable=False),
    Column("error_code", String(64), nullable=True),
    Column("finish_reason", String(16), nullable=True),
    # Tokens by kind, one column each (``Usage.by_kind()``).
    *(Column(kind, Integer, nullable=False, default=0) for kind in TOKEN_KINDS),
    Column("audio_seconds", Float, nullable=False, default=0.0),  # speech out
    Column("input_audio_seconds", Float, nullable=False, default=0.0),  # audio in
    Column("ttft_ms", Integer, nullable=True),
    Column("ttfa_ms", Integer, nullable=True),
    Column("duration_ms", Integer, nullable=True),
    Column("cost", Float, nullable=False, default=0.0),
    # The server process that wrote the row (see accounts/owners.py): its running rows are
    # closed as interrupted once that process is gone. NULL on rows from before revision 0002.
    Column("owner", String(64), nullable=True),
    Index("ix_ledger_key_started", "key_id", "started_ms"),
    Index("ix_ledger_started", "started_ms"),
    Index("ix_ledger_status_owner", "status", "owner"),  # running rows, by owner
)

# What each streamed answer's audio said, by its audio id, so that a client that keeps history
# the OpenAI way (an assistant message of just {"audio": {"id": …}}) gets the answer's text
# back into the prompt (accounts/transcripts.py). Only the key that made it may use it.
audio_transcripts = Table(
    "audio_transcripts",
    metadata,
    Column("audio_id", String(64), primary_key=True),  # audio_<request id>
    Column("key_id", String(32), nullable=True),  # NULL when the server runs without keys
    Column("transcript", Text, nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
    Index("ix_audio_transcripts_expires", "expires_ms"),
)
