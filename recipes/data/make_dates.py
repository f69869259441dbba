"""Writes dates.jsonl, the example JSONL dataset: ISO dates -> "day Month year".

Run from this folder: python make_dates.py  (deterministic; 2,000 records)
"""

import datetime as dt
import json
import random

rng = random.Random(0)
start = dt.date(1950, 1, 1).toordinal()
with open("dates.jsonl", "w") as f:
    for _ in range(2000):
        d = dt.date.fromordinal(start + rng.randrange(100 * 365))
        f.write(json.dumps({"prompt": f"date: {d.isoformat()}",
                            "response": f"{d.day} {d:%B} {d.year}"}) + "\n")
