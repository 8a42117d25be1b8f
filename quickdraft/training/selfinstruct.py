"""A larger self-instruct prompt set (``quickdraft train --data selfinstruct``).

``builtin`` is 247 short requests; a drafter trained on its answers learns them
well and transfers poorly to requests of other shapes (long articles to
summarize, foreign text to translate, follow-up turns). This set is built in
two rounds, both answered by the frozen model itself, so it still needs no
labelled data and no download:

1. *first requests*: explanations, advice, arithmetic word problems with
   seeded random numbers, code, conversation, and requests for texts to work
   on (news articles, reports, memos, paragraphs in six other languages);
2. *derived requests* over the model's own first answers: summarize, translate
   or answer questions about an article it wrote, translate its foreign
   paragraphs, and a follow-up turn after a first answer (the conversation so
   far is the prompt).

Written for quickdraft from word lists and templates of its own; a test checks
that no prompt shares a run of eight words with the bench suites, so the
training data does not overlap what ``quickdraft bench`` measures.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from .prompts import split

_SUBJECTS = [
    "gravity", "inflation", "a black hole", "democracy", "the water cycle", "machine learning", "a volcano",
    "electricity", "climate change", "the internet", "an atom", "evolution", "a recession", "a rainbow",
    "an earthquake", "plate tectonics", "the stock market", "a computer virus", "encryption", "a neural network",
    "the moon's phases", "a hurricane", "compound interest", "supply and demand", "the speed of light", "DNA",
    "a solar eclipse", "friction", "a bank loan", "recycling", "the human heart", "sleep", "renewable energy",
    "a database", "an operating system", "magnetism", "the Roman Empire", "the printing press", "a glacier",
    "the French Revolution", "antibiotics", "a credit score", "blockchain", "the placebo effect", "a comet",
    "a coral reef", "the nervous system", "a transistor", "cloud computing", "a tax return", "an election",
    "a microwave oven", "the Silk Road", "a rain forest", "nuclear energy", "a search engine", "a mortgage",
    "the Industrial Revolution", "a desert", "the metric system", "an allergy", "a telescope", "a battery",
    "the ozone layer", "a hash table", "version control", "a compiler", "photography", "a satellite",
    "the Olympic Games", "a symphony orchestra", "a pension", "a bee colony", "fermentation", "a jet engine",
    "an ecosystem", "a spreadsheet", "a password manager", "the Renaissance", "a tide", "a thunderstorm",
    "a budget", "a startup company", "minimum wage", "the carbon cycle", "a food chain", "a refrigerator",
]
_FORMS = [
    "What is {x}? Explain it in simple terms.", "How does {x} work?", "Explain {x} to a ten-year-old.",
    "What are the most important facts about {x}?", "Why does {x} matter in everyday life?",
    "Give a short history of {x}.", "What are common misconceptions about {x}?",
    "Describe {x} in two paragraphs.",
]
_GOALS = [
    "learning a new language", "saving money", "studying for an exam", "staying healthy", "sleeping better",
    "writing a good essay", "cooking for beginners", "public speaking", "working from home", "making new friends",
    "travelling on a budget", "learning to code", "keeping a plant alive", "preparing for a job interview",
    "reducing stress", "reading more books", "staying focused", "organising a small party", "taking better photos",
    "moving to a new city", "training a puppy", "learning to swim", "painting a room", "buying a used car",
    "writing a CV", "negotiating a salary", "starting a podcast", "growing tomatoes", "managing a small team",
    "cycling to work", "spending less time on the phone", "planning a wedding", "teaching a child to read",
    "decluttering a flat", "learning the guitar", "hiking in the mountains", "caring for an elderly parent",
]
_ADVICE_FORMS = [
    "Give me some tips for {x}.", "I want to get better at {x}. Where should I start?",
    "What mistakes do people make when {x}?", "Make a step-by-step plan for {x}.",
]
_GENRES = [
    "a short news article", "a short report", "an office memo", "a blog post", "a press release",
    "a short story", "a letter to a friend", "a product description", "a museum guide text",
    "the minutes of a club meeting",
]
_THEMES = [
    "a new bicycle lane in a small town", "a school that opens a library", "a bakery that wins a prize",
    "a storm that closes the airport", "a city that plants a thousand trees", "a football club's new stadium",
    "a farmers' market moving to the town square", "a hospital opening a new wing", "a lost dog found after a week",
    "a village festival", "a company that lets staff work four days a week", "a new train line to the coast",
    "a water shortage in summer", "a student who builds a robot", "a concert in the park",
    "a museum that reopens after repairs", "a bridge closed for repairs", "a heat wave", "a recycling project",
    "a chess tournament", "a new electric bus service", "a power cut in the city centre",
    "a volunteer beach clean-up", "a theatre's new season", "the discovery of an old shipwreck",
    "a small shop that delivers by bicycle", "a marathon through the old town", "a new swimming pool",
    "a software update that went wrong", "a charity book sale",
]
_LANGUAGES = ["German", "French", "Spanish", "Italian", "Dutch", "Portuguese"]
_CODE = [
    "reverses a linked list", "checks whether a year is a leap year", "parses a date string",
    "computes the median of a list", "finds all prime numbers below n", "counts the lines in a file",
    "validates an email address", "implements binary search", "converts a number to Roman numerals",
    "removes the vowels from a string", "rotates a list by k positions", "computes the power set of a list",
    "merges two dictionaries", "finds the longest word in a sentence", "implements a stack class",
    "reads a CSV file and sums a column", "checks whether brackets are balanced", "computes a moving average",
    "transposes a matrix", "groups words by their first letter", "implements bubble sort",
    "returns the most common element of a list", "converts a string to title case", "computes simple interest",
]
_LANGS = ["Python", "JavaScript", "Java", "C"]
_CHAT = [
    "Hi there! What can you do?", "I just moved to a new city and I don't know anyone. What should I do?",
    "What is a good way to spend a Sunday afternoon?", "Can you suggest a name for my new cat?",
    "I can't decide between studying history or biology. Can you help me think about it?",
    "Tell me something interesting about space.", "What are some easy recipes with eggs?",
    "My friend is sad because she failed an exam. How can I cheer her up?", "Recommend three classic films.",
    "How do I start a conversation with a stranger at a party?", "What should I pack for a week of camping?",
    "Tell me a joke about computers.", "Is it better to rent or to buy a house?", "What makes a good teacher?",
    "How can I make my small balcony look nicer?", "What board games are fun for four people?",
    "I want to write a diary. How should I begin?", "What are the benefits of learning to cook?",
    "Why do people enjoy scary movies?", "Can you describe a perfect day at the seaside?",
]
_FOLLOW_UPS = [
    "Can you make that shorter?", "Can you give me a concrete example?", "Thanks! Can you explain that more simply?",
    "What would you add to that?", "Please rewrite your answer as a bulleted list.", "Why is that the case?",
]
_NAMES = ["Anna", "Ben", "Carla", "David", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Kemal", "Lena"]
_ITEMS = ["apples", "books", "tickets", "pens", "cakes", "plants", "shirts", "bottles of juice"]


def _word_problems(rng: random.Random, count: int) -> list[str]:
    out: list[str] = []
    while len(out) < count:
        kind = rng.randrange(6)
        name, other = rng.sample(_NAMES, 2)
        thing = rng.choice(_ITEMS)
        a, b, c = rng.randint(2, 40), rng.randint(2, 15), rng.randint(2, 9)
        if kind == 0:
            problem = (f"{name} buys {a} {thing} at ${b} each and pays with a ${(a * b // 50 + 1) * 50} note. "
                       f"How much change does {name} get? Solve it step by step.")
        elif kind == 1:
            problem = (f"{name} has {a + b * c} {thing}. {name} gives {other} {a} of them and then buys {b} more. "
                       f"How many {thing} does {name} have now? Explain each step.")
        elif kind == 2:
            speed = rng.randint(40, 120)
            problem = (f"A car drives {speed * c // 2} km at {speed} km/h. How long does the trip take? "
                       f"Show your reasoning.")
        elif kind == 3:
            problem = (f"A room is {a} m long and {b} m wide. How many square metres of carpet are needed, and what "
                       f"does it cost at ${c} per square metre? Show your work.")
        elif kind == 4:
            pct = rng.choice([10, 15, 20, 25, 30, 40])
            problem = (f"A jacket costs ${a * 10}. It is reduced by {pct}%. What is the new price? "
                       f"Reason step by step.")
        else:
            problem = (f"{name} reads {b} pages on the first day and {c} more pages each day than the day before. "
                       f"How many pages has {name} read after {rng.randint(3, 8)} days? Show the calculation.")
        if problem not in out:
            out.append(problem)
    return out


@dataclass(frozen=True)
class Derived:
    """A request over the model's answer to first request ``source``: ``template`` with ``{text}``, or a follow-up."""

    source: int
    template: str = ""
    follow_up: str = ""

    def prompt(self, first: str, answer: str) -> str | list[dict[str, str]]:
        if self.follow_up:
            return [{"role": "user", "content": first}, {"role": "assistant", "content": answer},
                    {"role": "user", "content": self.follow_up}]
        return self.template.format(text=answer)


@dataclass(frozen=True)
class PromptSet:
    """First requests, and requests derived from the model's answers to them (answered in a second round)."""

    first: list[str]
    derived: list[Derived]

    def split(self, every: int = 10) -> tuple[PromptSet, PromptSet]:
        """(training, held-out): every ``every``-th first request is held out, with what derives from it."""
        index = list(range(len(self.first)))
        train_ix, held_ix = split(index, every=every)
        return self._subset(train_ix), self._subset(held_ix)

    def _subset(self, keep: list[int]) -> PromptSet:
        where = {old: new for new, old in enumerate(keep)}
        return PromptSet([self.first[i] for i in keep],
                         [Derived(where[d.source], d.template, d.follow_up) for d in self.derived if d.source in where])

    def __len__(self) -> int:
        return len(self.first) + len(self.derived)


def selfinstruct_prompts(seed: int = 0) -> PromptSet:
    """The ``selfinstruct`` set: about 1,000 first requests and 500 derived ones, fixed by ``seed``."""
    rng = random.Random(seed)
    first: list[str] = []
    derived: list[Derived] = []

    def add(prompt: str) -> int:
        first.append(prompt)
        return len(first) - 1

    groups: list[list[str]] = [
        rng.sample([f.format(x=x) for x, f in itertools.product(_SUBJECTS, _FORMS)], 300),
        rng.sample([f.format(x=x) for x, f in itertools.product(_GOALS, _ADVICE_FORMS)], 100),
        _word_problems(rng, 150),
        [f"Write a {lang} function that {task}." for task in _CODE for lang in rng.sample(_LANGS, 2)],
        list(_CHAT),
    ]
    for prompt in itertools.chain.from_iterable(itertools.zip_longest(*groups)):
        if prompt is not None:
            source = add(prompt)
            if rng.random() < 0.25:  # a second turn after some of the conversations
                derived.append(Derived(source, follow_up=rng.choice(_FOLLOW_UPS)))
    texts = [f"Write {g} about {t}." for g, t in itertools.product(_GENRES, _THEMES)]
    for prompt in rng.sample(texts, 240):
        source = add(prompt)
        task = rng.choice([
            "Summarize the following text in three sentences.\n\n{text}",
            "Write a short summary of this text in no more than 60 words.\n\n{text}",
            "Summarize the main points of this text as a bulleted list.\n\n{text}",
            "Read the text and answer: who is involved, and what happened?\n\nText:\n{text}",
            "Using only the information in the text below, answer the question: what is the most important fact "
            "in it?\n\n{text}",
            "Translate the following English text into {lang}.\n\n{text}",
            "Rewrite this text in a more formal tone.\n\n{text}",
        ])
        derived.append(Derived(source, task.replace("{lang}", rng.choice(["French", "German", "Spanish"]))))
    for lang, theme in rng.sample(list(itertools.product(_LANGUAGES, _THEMES)), 120):
        source = add(f"Write a short paragraph in {lang} about {theme}.")
        derived.append(Derived(source, f"Translate the following {lang} text into English.\n\n{{text}}"))
    rest = 1000 - len(first)
    for prompt in rng.sample([f.format(x=x) for x, f in itertools.product(_SUBJECTS, _FORMS)], rest):
        if prompt not in first:
            add(prompt)
    return PromptSet(first, derived)
