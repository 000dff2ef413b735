"""Haystack text written for this project: digit-free filler and a varied English sentence generator.

Nothing here is copied from a corpus: the classic pass-key filler is five stock sentences, and the
"varied" haystack is a seeded generator over our own sentence templates and word lists. Every
function takes a ``random.Random`` and is otherwise pure.
"""
from __future__ import annotations

import random
import re

# The stock filler of pass-key retrieval tests (no digits).
CLASSIC_FILLER = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.",
                  "There and back again.")

_NAMES = ("Ada", "Bruno", "Clara", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kira",
          "Lionel", "Mara", "Nils", "Olga", "Pavel", "Rosa", "Simon", "Tessa", "Victor", "Wanda", "Yusuf")
_PEOPLE = ("the farmer", "the teacher", "the old sailor", "my neighbour", "the young painter", "the mayor",
           "a travelling merchant", "the librarian", "the miller", "our guide", "the shepherd", "the clerk",
           "a quiet student", "the carpenter", "the innkeeper", "the postman")
_PLACES = ("the market square", "the northern hills", "the river bank", "the old mill", "the harbour",
           "the village school", "the forest path", "the town hall", "the railway station", "the orchard",
           "the stone chapel", "the coastal road", "the bakery", "the meadow", "the quiet library",
           "the high pasture", "the ferry landing", "the museum")
_THINGS = ("a wooden cart", "a basket of apples", "an old map", "a letter", "a lantern", "a small boat",
           "a bundle of firewood", "a pair of boots", "a copper kettle", "a woollen scarf", "a fishing net",
           "a stack of books", "a bag of flour", "a broken clock", "a new bicycle", "a painted chair")
_ADJ = ("quiet", "busy", "cold", "bright", "grey", "windy", "pleasant", "long", "early", "slow", "crowded",
        "peaceful", "rainy", "misty", "warm", "calm")
_TIMES = ("in the morning", "before noon", "after lunch", "late in the evening", "at dawn", "on a Sunday",
          "during the harvest", "in early spring", "at the end of the summer", "every winter",
          "once a week", "after the storm", "on market day", "in the autumn")
_VERBS_PAST = ("walked to", "looked at", "talked about", "returned to", "cleaned", "visited", "painted",
               "wrote about", "waited near", "sketched", "remembered", "passed by")
_ACTIONS = ("carried", "repaired", "sold", "found", "borrowed", "wrapped", "lost", "packed", "delivered",
            "polished", "measured", "described")
_WEATHER = ("The wind came from the west", "A light rain fell over the valley", "The clouds moved slowly",
            "Fog covered the fields", "The air smelled of pine", "The sky cleared after a while",
            "A cold breeze crossed the square", "The river was high that year")
_REMARKS = ("Nobody seemed to mind.", "It was an ordinary day.", "Everyone agreed it had been worth it.",
            "The rest of the week passed without news.", "Some people still talk about it.",
            "It took longer than expected.", "Most of the town was asleep.", "Nothing else happened that day.",
            "The conversation turned to other matters.", "Later they all went home.")

_TEMPLATES = (
    "{Person} {verb} {place} {time}.",
    "{Name} {action} {thing} near {place}.",
    "{Weather} {time}.",
    "{Remark}",
    "It was a {adj} day at {place}, and {person} {action} {thing}.",
    "{Name} and {name2} {verb} {place} together {time}.",
    "{Time_cap}, {person} {action} {thing} for {name}.",
    "The road to {place} was {adj} {time}.",
    "{Name} said that {place} had always been {adj}.",
    "{Person} kept {thing} at {place}.",
    "Many visitors came to {place} {time}, when it was {adj} and {adj2}.",
    "According to {name}, {person} {action} {thing} {time}.",
)

_FIELD = re.compile(r"\{(\w+)\}")


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def classic_sentences(rng: random.Random, n_chars: int) -> list[str]:
    """Classic filler sentences (cycled from a random start) totalling >= n_chars characters with spaces."""
    out: list[str] = []
    total = 0
    start = rng.randrange(len(CLASSIC_FILLER))
    while total < n_chars:
        s = CLASSIC_FILLER[(start + len(out)) % len(CLASSIC_FILLER)]
        out.append(s)
        total += len(s) + 1
    return out


def english_sentence(rng: random.Random) -> str:
    """One sentence of the varied haystack (digit-free)."""
    template = rng.choice(_TEMPLATES)
    values = {
        "Person": _cap(rng.choice(_PEOPLE)), "person": rng.choice(_PEOPLE),
        "Name": rng.choice(_NAMES), "name": rng.choice(_NAMES), "name2": rng.choice(_NAMES),
        "verb": rng.choice(_VERBS_PAST), "action": rng.choice(_ACTIONS),
        "place": rng.choice(_PLACES), "thing": rng.choice(_THINGS),
        "time": rng.choice(_TIMES), "Time_cap": _cap(rng.choice(_TIMES)),
        "adj": rng.choice(_ADJ), "adj2": rng.choice(_ADJ),
        "Weather": rng.choice(_WEATHER), "Remark": rng.choice(_REMARKS),
    }
    return _FIELD.sub(lambda m: values[m.group(1)], template)


def english_sentences(rng: random.Random, n_chars: int, avoid: tuple[str, ...] = ()) -> list[str]:
    """Varied sentences totalling >= n_chars characters; sentences containing any `avoid` phrase
    (case-insensitive, whole words) are redrawn."""
    patterns = [re.compile(r"\b" + re.escape(a.lower()) + r"\b") for a in avoid if a]
    out: list[str] = []
    total = 0
    while total < n_chars:
        for _ in range(100):
            s = english_sentence(rng)
            if not any(p.search(s.lower()) for p in patterns):
                break
        else:
            raise RuntimeError(f"could not draw a haystack sentence free of {avoid!r}")
        out.append(s)
        total += len(s) + 1
    return out


def filler_sentences(rng: random.Random, n_chars: int, kind: str = "classic",
                     avoid: tuple[str, ...] = ()) -> list[str]:
    if kind == "classic":
        return classic_sentences(rng, n_chars)
    if kind == "varied":
        return english_sentences(rng, n_chars, avoid)
    raise ValueError(f"filler must be 'classic' or 'varied', got {kind!r}")


# ------------------------------------------------------------------------------------------ NIAH needles
# (needle template with {answer}, question, answers). Answers never occur in the varied haystack's
# word lists, so the needle is the only place the answer appears.
NIAH_NEEDLES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("The secret ingredient is {answer}.", "What is the secret ingredient?",
     ("cinnamon", "saffron", "nutmeg", "cardamom", "smoked paprika", "lemon zest", "star anise", "vanilla")),
    ("The name of the lighthouse cat is {answer}.", "What is the name of the lighthouse cat?",
     ("Biscuit", "Marmalade", "Juniper", "Pepper", "Clover", "Ziggy", "Tofu", "Noodle")),
    ("The password for the garden gate is {answer}.", "What is the password for the garden gate?",
     ("bluebird", "moonstone", "thunder", "velvet", "sunflower", "quasar", "zephyr", "marigold")),
    ("The rarest animal in the valley is the {answer}.", "What is the rarest animal in the valley?",
     ("snow leopard", "red panda", "golden eagle", "pine marten", "lynx", "otter", "ibex", "axolotl")),
    ("The favourite colour of the baker is {answer}.", "What is the favourite colour of the baker?",
     ("turquoise", "crimson", "lavender", "amber", "emerald", "magenta", "ochre", "indigo")),
    ("The treasure is hidden under the {answer}.", "Where is the treasure hidden?",
     ("oak tree", "chestnut tree", "blue stone", "iron bridge", "fountain", "windmill", "old well", "statue")),
    ("The best thing to do in the harbour town is {answer}.", "What is the best thing to do in the harbour town?",
     ("watch the sunset", "eat fresh oysters", "swim at dawn", "ride the tram", "climb the tower",
      "sail to the island")),
    ("The magic word that opens the vault is {answer}.", "What is the magic word that opens the vault?",
     ("abracadabra", "sesame", "kalimera", "shazam", "opalescent", "hocus")),
    ("The ship that carried the letters was the {answer}.", "What was the ship that carried the letters?",
     ("Silver Heron", "Northern Star", "Sea Sparrow", "Brave Otter", "Amber Gull", "Iron Whale")),
    ("The capital of the imaginary kingdom is {answer}.", "What is the capital of the imaginary kingdom?",
     ("Zorvania", "Eldermoor", "Quillhaven", "Brightwater", "Tumbleford", "Vexley")),
)
