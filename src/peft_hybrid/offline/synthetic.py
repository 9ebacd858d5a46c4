"""Synthetic text the project writes itself: dialogue -> summary pairs, sentiment sentences, files
of both in the benchmarks' layouts, and a tokenizer corpus.

Deterministic for a given seed. Used by the offline tokenizer, the demo and the tests, so that
nothing needs the network or a third party's data.
"""

from __future__ import annotations

import csv
import random
import string
from collections.abc import Iterable, Mapping
from pathlib import Path

NAMES = [
    "Amy",
    "Ben",
    "Carla",
    "Dev",
    "Ella",
    "Farid",
    "Gina",
    "Hugo",
    "Iris",
    "Jonas",
    "Kate",
    "Liam",
    "Maya",
    "Nico",
    "Olga",
    "Pavel",
    "Quinn",
    "Rosa",
    "Sam",
    "Tara",
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday", "tomorrow", "tonight"]
PLACES = ["the cinema", "the office", "the station", "the park", "the library", "the gym", "the cafe", "the market"]
THINGS = ["the cake", "the keys", "the charger", "the tickets", "the report", "the guitar", "the map", "the camera"]
TIMES = ["8 am", "9 am", "10 am", "noon", "2 pm", "4 pm", "6 pm", "7 pm", "9 pm"]
FEELINGS = [
    ("a warm and funny film", "positive"),
    ("a dull and lifeless story", "negative"),
    ("great acting and a clever plot", "positive"),
    ("a tedious mess", "negative"),
    ("charming from start to finish", "positive"),
    ("badly written and far too long", "negative"),
]


def _meet(rng: random.Random, a: str, b: str) -> tuple[list[str], str]:
    place, day, time = rng.choice(PLACES), rng.choice(DAYS), rng.choice(TIMES)
    turns = [
        f"{a}: Hi {b}! Are you free {day}?",
        f"{b}: I think so, why?",
        f"{a}: Let's meet at {place}.",
        f"{b}: Good idea. What time?",
        f"{a}: {time}?",
        f"{b}: Perfect, see you there.",
    ]
    return turns, f"{a} and {b} will meet at {place} {day} at {time}."


def _bring(rng: random.Random, a: str, b: str) -> tuple[list[str], str]:
    thing, day = rng.choice(THINGS), rng.choice(DAYS)
    turns = [
        f"{a}: {b}, did you take {thing}?",
        f"{b}: Yes, sorry, it is in my bag.",
        f"{a}: Can you bring it back {day}?",
        f"{b}: Sure, I will.",
    ]
    return turns, f"{b} has {thing} and will bring it back to {a} {day}."


def _cancel(rng: random.Random, a: str, b: str) -> tuple[list[str], str]:
    place, day = rng.choice(PLACES), rng.choice(DAYS)
    turns = [
        f"{a}: I can't make it to {place} {day}.",
        f"{b}: Oh no, what happened?",
        f"{a}: I'm ill, I need to stay home.",
        f"{b}: Get well soon! We can go another time.",
    ]
    return turns, f"{a} is ill and cancels the visit to {place} {day}."


def _late(rng: random.Random, a: str, b: str) -> tuple[list[str], str]:
    minutes = rng.choice([5, 10, 15, 20, 30, 45])
    place = rng.choice(PLACES)
    turns = [
        f"{a}: Where are you?",
        f"{b}: Stuck in traffic, I'll be {minutes} minutes late.",
        f"{a}: OK, I'll wait at {place}.",
    ]
    return turns, f"{b} will be {minutes} minutes late; {a} waits at {place}."


_SCENES = (_meet, _bring, _cancel, _late)


def dialogue_summary_pairs(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` SAMSum-style records: ``{"id", "dialogue", "summary"}``, turns joined with CRLF."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        a, b = rng.sample(NAMES, 2)
        turns, summary = rng.choice(_SCENES)(rng, a, b)
        records.append({"id": f"synthetic-{seed}-{i}", "dialogue": "\r\n".join(turns), "summary": summary})
    return records


SAMSUM_COLUMNS = ("id", "summary", "dialogue")


def write_samsum_csv(path: str | Path, records: Iterable[Mapping[str, str]]) -> Path:
    """Write records in SAMSum's CSV layout (header ``id,summary,dialogue``; CRLF turns stay
    inside quoted fields); other keys of the records are ignored."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=SAMSUM_COLUMNS)
        writer.writeheader()
        writer.writerows({key: record[key] for key in SAMSUM_COLUMNS} for record in records)
    return path


def sentiment_sentences(n: int, seed: int = 0) -> list[dict[str, object]]:
    """``n`` SST-2-style records: ``{"sentence", "label"}`` with 1 = positive."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        phrase, label = rng.choice(FEELINGS)
        out.append({"sentence": f"it is {phrase} .", "label": 1 if label == "positive" else 0})
    return out


def write_sst2_tsv(path: str | Path, records: Iterable[Mapping[str, object]]) -> Path:
    """Write records in GLUE SST-2's TSV layout (header ``sentence<TAB>label``, one example a
    line); other keys of the records are ignored.

    Example:
        >>> from peft_hybrid.offline.synthetic import sentiment_sentences, write_sst2_tsv
        >>> path = write_sst2_tsv("dev.tsv", sentiment_sentences(2, seed=0))
        >>> path.read_text(encoding="utf-8").splitlines()[0].split("\\t")
        ['sentence', 'label']
    """
    lines = ["sentence\tlabel"]
    for row, record in enumerate(records, start=1):
        sentence = str(record["sentence"])
        if "\t" in sentence or "\n" in sentence or "\r" in sentence:
            raise ValueError(f"record {row}: the sentence holds a tab or line break; one TSV line cannot hold it.")
        lines.append(f"{sentence}\t{record['label']}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def tokenizer_corpus(seed: int = 0) -> list[str]:
    """Sentences covering the synthetic tasks plus every printable ASCII character."""
    lines = []
    for record in dialogue_summary_pairs(400, seed):
        lines.extend(record["dialogue"].split("\r\n"))
        lines.append(record["summary"])
    lines.extend(str(r["sentence"]) for r in sentiment_sentences(50, seed))
    lines.extend(["positive", "negative", "summarize: dialogue", "SELECT COUNT MAX MIN SUM AVG FROM table WHERE AND"])
    lines.extend([" ".join(string.ascii_letters), " ".join(string.digits + string.punctuation)] * 5)
    return lines
