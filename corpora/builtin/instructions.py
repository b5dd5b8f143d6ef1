"""Built-in instruction-following eval items, IFEval-style (``builtin:instruction-following``).

    from corpora.builtin.instructions import instruction_items
    items = instruction_items()   # [{"id": "max_words/rainbows", "kind": "instruction", ...}, ...]
    python -m corpora.builtin.instructions   # prints counts and a few items

Provenance: hand-written templates crossed with hand-written topics, no
external data. 30 everyday general-knowledge topics (weather, nature, food,
sport; nothing about Python or programming, which is the demo's CPT domain)
times 5 constraint types = 150 items. Each item asks a short question about
its topic and adds one format instruction worded like IFEval's (Zhou et al.
2023, arXiv:2311.07911); ``checks`` says how ``corpora.checks`` verifies it.
IFEval's own 541 prompts are not shipped (licence, and the build is
offline); these items follow its method: verifiable instructions, scored by
rules, prompt-level strict accuracy (docs/metrics.md).

The order interleaves the five types (every 5 consecutive items hold one of
each) and each type visits the topics in its own seeded order, so that the
first ``evals.max_items`` items of the task mix all types and many topics.
Replies are kept short (one sentence, a few words per bullet) so that a
40-token budget (``evals.max_new_tokens`` of the demo) can hold them.
"""

from __future__ import annotations

import random

SEED = 20240611  # fixed: the items and their order never change between runs
CONSTRAINTS = ("max_words", "json", "lowercase", "bullets", "ends_with")
MAX_WORDS = (15, 20, 25)
BULLET_COUNTS = (2, 3)
END_PHRASES = ("Is there anything else?", "Hope this helps.", "Let me know if you have other questions.")
JSON_KEYS = (("answer",), ("answer", "reason"))

# (slug, topic as a noun phrase, a short question about it)
TOPICS = (
    ("rainbows", "rainbows", "How does a rainbow form?"),
    ("water-cycle", "the water cycle", "What is the water cycle?"),
    ("photosynthesis", "photosynthesis", "What do plants need for photosynthesis?"),
    ("moon-phases", "the phases of the Moon", "Why does the Moon have phases?"),
    ("volcanoes", "volcanoes", "Why do volcanoes erupt?"),
    ("honey-bees", "honey bees", "How do honey bees make honey?"),
    ("human-heart", "the human heart", "What does the human heart do?"),
    ("sleep", "sleep", "Why do people need sleep?"),
    ("recycling", "recycling", "Why is recycling useful?"),
    ("olympic-games", "the Olympic Games", "How often are the Summer Olympic Games held?"),
    ("chess", "chess", "How does a game of chess end?"),
    ("coffee", "coffee", "Where do coffee beans come from?"),
    ("bread", "baking bread", "Why does bread dough rise?"),
    ("tides", "ocean tides", "What causes ocean tides?"),
    ("earthquakes", "earthquakes", "What causes earthquakes?"),
    ("seasons", "the seasons", "Why does the Earth have seasons?"),
    ("bird-migration", "bird migration", "Why do some birds migrate?"),
    ("composting", "composting", "How does composting work?"),
    ("piano", "the piano", "How does a piano make sound?"),
    ("football", "football", "How many players does a football team have on the field?"),
    ("deserts", "deserts", "What makes a place a desert?"),
    ("coral-reefs", "coral reefs", "What are coral reefs made of?"),
    ("vaccines", "vaccines", "How do vaccines protect people?"),
    ("bicycles", "bicycles", "How do the gears of a bicycle help?"),
    ("tea", "tea", "How is green tea different from black tea?"),
    ("great-wall", "the Great Wall of China", "Why was the Great Wall of China built?"),
    ("elephants", "elephants", "What do elephants eat?"),
    ("clouds", "clouds", "How do clouds form?"),
    ("snowflakes", "snowflakes", "Why do snowflakes have six sides?"),
    ("lighthouses", "lighthouses", "What is a lighthouse for?"),
)


def _constraint(kind: str, topic: str, question: str, rng: random.Random) -> tuple[str, dict]:
    """The prompt for one topic and constraint type, and the check that verifies the reply."""
    if kind == "max_words":
        n = rng.choice(MAX_WORDS)
        return f"{question} Answer in at most {n} words.", {"type": "max_words", "n": n}
    if kind == "json":
        keys = rng.choice(JSON_KEYS)
        named = " and ".join(f'"{k}"' for k in keys)
        return (f"{question} Reply with a JSON object with the key{'s' if len(keys) > 1 else ''} {named} "
                f"and nothing else.", {"type": "json", "keys": list(keys)})
    if kind == "lowercase":
        return (f"{question} Answer in one sentence. Write your whole reply in lowercase letters, "
                f"with no capital letters at all.", {"type": "lowercase"})
    if kind == "bullets":
        n = rng.choice(BULLET_COUNTS)
        return (f"Give {n} short facts about {topic}, a few words each. Answer as a bulleted list of exactly "
                f'{n} items, each line starting with "- ".', {"type": "bullets", "n": n})
    phrase = rng.choice(END_PHRASES)
    return (f'{question} Answer in one sentence. End your reply with the exact phrase "{phrase}"',
            {"type": "ends_with", "phrase": phrase})


def instruction_items() -> list[dict]:
    """Every topic under every constraint type, interleaved by type; the same list on every call."""
    rng = random.Random(SEED)
    orders = {kind: rng.sample(range(len(TOPICS)), len(TOPICS)) for kind in CONSTRAINTS}
    items = []
    for step in range(len(TOPICS)):
        for kind in CONSTRAINTS:
            slug, topic, question = TOPICS[orders[kind][step]]
            prompt, check = _constraint(kind, topic, question, rng)
            items.append({"id": f"{kind}/{slug}", "kind": "instruction", "prompt": prompt, "checks": [check]})
    return items


if __name__ == "__main__":
    built = instruction_items()
    print(f"instruction-following: {len(built)} items, {len(TOPICS)} topics x {len(CONSTRAINTS)} constraints")
    for item in built[:5]:
        print(item)
