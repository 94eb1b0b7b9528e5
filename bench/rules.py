"""What the emulator's rules cost a request: matching against 1,000 rules, beside the parsing
and validation every request pays anyway, in one run.

The rules are of every shape a rules file has (a scenario, a model, a substring, a regex, an
input kind, a voice, thinking), none of them fitting the request, so each request walks every
rule its scenario and model leave it: the worst case. Three timings per request, medians of
``--repeat`` rounds of ``--requests`` each:

- ``prepare``: ``ChatService.prepare`` without rules (parse and validate: the baseline);
- ``prepare + rules``: the same with the 1,000 rules (what a request pays with a rules file);
- ``find``: the rules' matching alone.

    python bench/rules.py
    python bench/rules.py --rules 10000 --message-chars 20000
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from omniserve.config import load_settings
from omniserve.scenarios import parse_rules
from omniserve.service import ChatService

# Words of everyday requests: the rules' substrings start with them, and so does much of the
# message, so many rules share first letters with it and are checked in full.
WORDS = [
    "where",
    "is",
    "my",
    "parcel",
    "it",
    "was",
    "due",
    "on",
    "monday",
    "order",
    "refund",
    "invoice",
    "account",
    "password",
    "delivery",
    "weather",
    "price",
    "shop",
    "open",
    "close",
    "today",
    "tomorrow",
    "help",
    "please",
    "thanks",
    "cancel",
    "change",
    "address",
    "email",
    "phone",
    "card",
    "payment",
    "late",
    "broken",
    "return",
    "exchange",
    "size",
    "colour",
    "stock",
    "store",
    "hours",
]


def make_rules(n: int) -> list[dict[str, Any]]:
    shapes: list[dict[str, Any]] = [
        {"message": "{a} {b} {i}"},
        {"message_regex": r"\b{a}\s+#{i}\b"},
        {"scenario": "scenario-{i}"},
        {"model": "qwen-omni-turbo", "message": "{a} {i}"},
        {"input": "audio", "message": "{b} {a} {i}"},
        {"voice": "Ethan", "message": "{a} {b}{i}"},
        {"thinking": True, "message": "{a}-{i}"},
    ]
    rules = []
    for i in range(n):
        shape = shapes[i % len(shapes)]
        a, b = WORDS[i % len(WORDS)], WORDS[(i * 7 + 3) % len(WORDS)]
        match = {k: v.format(i=i, a=a, b=b) if isinstance(v, str) else v for k, v in shape.items()}
        rules.append({"name": f"rule-{i}", "match": match, "reply": {"text": f"Answer {i}."}})
    return rules


def timed(fn: Any, requests: int, repeat: int) -> float:
    """Median seconds per call over ``repeat`` rounds."""
    rounds = []
    for _ in range(repeat):
        began = time.perf_counter()
        for _ in range(requests):
            fn()
        rounds.append((time.perf_counter() - began) / requests)
    return statistics.median(rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--message-chars", type=int, default=200)
    args = parser.parse_args()

    text = ("where is my parcel? it was due on monday, please help. " * 400)[: args.message_chars]
    body = json.dumps(
        {
            "model": "qwen3-omni-flash",
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": text},
            ],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    with tempfile.TemporaryDirectory() as tmp:
        rules_file = Path(tmp) / "rules.json"
        rules = make_rules(args.rules)
        rules_file.write_text(json.dumps({"rules": rules}))
        common = {"accounts": {"data_dir": tmp}}
        plain = ChatService(load_settings(None, **common))
        scripted = ChatService(load_settings(None, emulator={"rules": str(rules_file)}, **common))
        ruleset = parse_rules(rules_file.read_bytes(), rules_file.name)
        job = plain.prepare(body, "bench").job
        assert scripted.prepare(body, "bench").job.script is None  # no rule fits: all walked

        base = timed(lambda: plain.prepare(body, "bench"), args.requests, args.repeat)
        with_rules = timed(lambda: scripted.prepare(body, "bench"), args.requests, args.repeat)
        find = timed(lambda: ruleset.find(job, None), args.requests, args.repeat)
        find_scenario = timed(lambda: ruleset.find(job, "scenario-2"), args.requests, args.repeat)

    print(
        f"{args.rules} rules, a {args.message_chars}-character message, "
        f"median of {args.repeat} rounds of {args.requests} requests"
    )
    print(f"{'':28}{'µs/request':>12}{'× prepare':>11}")
    for name, seconds in (
        ("prepare (baseline)", base),
        ("prepare + rules", with_rules),
        ("rules added", with_rules - base),
        ("find, no scenario", find),
        ("find, a scenario's bucket", find_scenario),
    ):
        print(f"{name:28}{seconds * 1e6:12.1f}{seconds / base:11.2f}")


if __name__ == "__main__":
    main()
