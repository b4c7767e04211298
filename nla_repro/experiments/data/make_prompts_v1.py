"""Writes prompts_v1.jsonl: the 50-prompt, four-category set of the two_tier_controls experiment.

All prompts were written for nla-repro (none copied from a benchmark). Each row: id, category,
messages (one user turn), provenance, content_hash = sha256 of the canonical JSON of
{"category", "messages"}. Run: python nla_repro/experiments/data/make_prompts_v1.py
"""

import hashlib
import json
from pathlib import Path

PROMPTS = {
    "chat": [
        "Why do cats purr when they are being stroked?",
        "What causes the northern lights to appear in different colours?",
        "Can you recommend a good way to keep fresh basil from wilting in the kitchen?",
        "How did the ancient Romans heat their public baths?",
        "What is the difference between a crocodile and an alligator?",
        "Why does bread go stale faster in the refrigerator?",
        "Tell me something interesting about octopus intelligence.",
        "How do hummingbirds manage to hover in one place?",
        "What should I pack for a three-day hiking trip in the mountains?",
        "Why is the ocean salty while most rivers are fresh water?",
        "Who invented the printing press and why did it matter so much?",
        "How do volcanoes form underneath the ocean floor?",
        "What makes sourdough bread taste tangy compared with ordinary bread?",
        "How long does it take sunlight to reach the planet Mars?",
    ],
    "code": [
        "Write a Python function that merges two sorted lists into one sorted list.",
        "Show me a SQL query that returns the five customers with the highest total order value.",
        "Write a Bash script that renames every .jpeg file in a folder to use the .jpg extension.",
        "Implement a binary search tree insertion method in Java.",
        "Write a JavaScript debounce function that delays calls until input stops for 300 milliseconds.",
        "Create a Rust function that counts word frequencies in a string and returns a HashMap.",
        "Write a C program that reverses a singly linked list in place.",
        "Write a Python generator that yields prime numbers indefinitely.",
        "Write a regular expression that validates hexadecimal colour codes like #1a2b3c.",
        "Implement matrix multiplication for two nested lists in Python without numpy.",
        "Write a Go HTTP handler that returns the current server time as JSON.",
        "Write a TypeScript interface and a function that validates a user registration payload.",
    ],
    "agent": [
        "Open src/billing/invoice.py and fix the rounding bug in calculate_tax so totals match the ledger tests.",
        "Run pytest on tests/test_scheduler.py, find the failing test, and patch scheduler/cron.py until it passes.",
        "Search the repository for every call to yaml.load without a Loader argument and replace it with yaml.safe_load.",
        "Add a --dry-run flag to cli/deploy.py that prints the planned kubectl commands instead of executing them.",
        "Refactor utils/cache.py so the LRUCache class is thread-safe, then update the docstring and changelog.",
        "The CI job lint-and-typecheck fails on mypy errors in api/routes/orders.py; resolve the type errors.",
        "Locate where the session token expiry is configured in config/settings.toml and raise it to 24 hours.",
        "Migrate the logging calls in worker/queue_consumer.py from print statements to the structlog logger.",
        "Update package.json to bump webpack to version 5, then fix any broken imports in frontend/src/index.js.",
        "Write a unit test in tests/test_parser.py covering empty input for parse_header in parser/headers.py.",
        "Find why docker-compose up fails with a port conflict on 5432 and change the postgres service port in docker-compose.yml.",
        "Inspect the git log for commits touching models/user.py in the last month and summarise what changed.",
    ],
    "reasoning": [
        "Prove that the product of two odd integers is always odd.",
        "A train leaves at 9:40 and arrives at 13:05. How long is the journey in minutes?",
        "If all bloops are razzies and some razzies are lazzies, must some bloops be lazzies? Explain.",
        "Show that the square of any integer leaves remainder 0 or 1 when divided by 4.",
        "A farmer has chickens and goats with 30 heads and 74 legs in total. How many goats are there?",
        "What is the probability of rolling two dice and getting a sum of exactly eight?",
        "Three boxes are labelled apples, oranges, and mixed, and every label is wrong. How can one draw identify all boxes?",
        "Find the smallest positive integer that leaves remainder 2 when divided by 3, 4, and 5.",
        "Explain why there are infinitely many prime numbers.",
        "A ladder 10 metres long leans against a wall with its foot 6 metres away. How high does it reach?",
        "If a clock shows 3:15, what is the angle between the hour hand and the minute hand?",
        "Solve the system of equations 2x + 3y = 12 and x - y = 1.",
    ],
}
PROVENANCE = "authored for nla-repro"


def rows():
    out = []
    for cat, prompts in PROMPTS.items():
        for k, text in enumerate(prompts):
            messages = [{"role": "user", "content": text}]
            canon = json.dumps({"category": cat, "messages": messages}, sort_keys=True, ensure_ascii=False,
                               separators=(",", ":"))
            out.append({"id": f"{cat}-{k + 1:02d}", "category": cat, "messages": messages,
                        "provenance": PROVENANCE,
                        "content_hash": hashlib.sha256(canon.encode("utf-8")).hexdigest()})
    return out


if __name__ == "__main__":
    path = Path(__file__).with_name("prompts_v1.jsonl")
    path.write_text("".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows()),
                    encoding="utf-8")
    print(f"wrote {path} ({len(rows())} prompts)")
