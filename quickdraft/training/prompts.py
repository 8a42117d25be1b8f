"""The built-in prompt set for self-distillation (``quickdraft train --data builtin``).

No labelled data is needed: the model answers these prompts itself and the
drafter learns to predict the model's own answers. The prompts are built from
templates over small word lists, across the kinds of requests a chat model
gets (conversation, questions, explanations, translation, arithmetic, code,
summaries, rewriting). Every tenth prompt is held out for the final accuracy
report, so the report measures prompts the drafter never trained on.

Written for quickdraft (not taken from any benchmark), so the training set does
not overlap the bench suite's prompts.
"""

from __future__ import annotations

import itertools

_CONCEPTS = [
    "photosynthesis", "gravity", "inflation", "a black hole", "democracy", "the water cycle", "machine learning",
    "a volcano", "the immune system", "electricity", "climate change", "a vaccine", "the internet", "an atom",
    "evolution", "a recession", "the greenhouse effect", "a rainbow", "an earthquake", "plate tectonics",
    "the stock market", "a computer virus", "encryption", "a neural network", "the moon's phases", "a hurricane",
    "compound interest", "supply and demand", "the speed of light", "DNA", "a solar eclipse", "friction",
    "a bank loan", "recycling", "the human heart", "sleep", "a tsunami", "renewable energy", "a database",
    "an operating system",
]
_WHY = [
    "Why is the sky blue?", "Why do leaves change colour in autumn?", "Why do we have seasons?",
    "Why does ice float on water?", "Why is the sea salty?", "Why do cats purr?", "Why does bread rise?",
    "Why does metal feel cold?", "Why do we dream?", "Why do birds migrate?", "Why do onions make you cry?",
    "Why does the moon look bigger near the horizon?", "How can planes fly?", "Why do we get hiccups?",
    "Why do stars twinkle?", "Why does milk turn sour?", "Why does the ocean have tides?",
    "Why is yawning contagious?", "How do bees make honey?", "Why does iron rust?",
]
_ADVICE = [
    "learning a new language", "saving money", "studying for an exam", "staying healthy", "sleeping better",
    "writing a good essay", "starting to run", "cooking for beginners", "public speaking", "working from home",
    "making new friends", "travelling on a budget", "learning to code", "keeping a plant alive",
    "preparing for a job interview", "reducing stress", "reading more books", "staying focused",
    "organising a small party", "taking better photos",
]
_SENTENCES = [
    "Good morning, how are you?", "Where is the train station?", "I would like a cup of coffee, please.",
    "The weather is beautiful today.", "My brother lives in a small town.", "Can you help me find my keys?",
    "We are going to the beach tomorrow.", "This book is very interesting.", "What time does the shop close?",
    "I have been learning to play the piano.", "The children are playing in the garden.",
    "Thank you very much for your help.", "The restaurant is closed on Mondays.",
    "She bought a new red bicycle.", "It is raining again.", "I don't understand the question.",
    "The museum opens at nine o'clock.", "Please close the window.", "Our teacher is very kind.",
    "How much does this ticket cost?",
]
_LANGUAGES = ["French", "Spanish", "German"]
_CODE_TASKS = [
    "reverses a string", "checks whether a number is prime", "returns the largest element of a list",
    "counts the vowels in a string", "computes the factorial of n", "merges two sorted lists",
    "removes duplicates from a list while keeping the order", "returns the n-th Fibonacci number",
    "checks whether a string is a palindrome", "converts Celsius to Fahrenheit", "sums the digits of an integer",
    "flattens a nested list", "counts how often each word appears in a text", "returns the second smallest number",
    "checks whether two strings are anagrams", "computes the average of a list of numbers",
    "finds the greatest common divisor of two numbers", "capitalizes the first letter of every word",
    "returns all even numbers from a list", "reads a text file and returns its number of lines",
]
_TOPICS = [
    "the ocean", "a rainy day", "friendship", "autumn", "a lost cat", "the city at night", "a mountain trip",
    "a robot learning to paint", "a small bakery", "the first day of school", "a dragon who is afraid of fire",
    "a lighthouse keeper", "a garden in spring", "an old library", "a train journey",
]
_PARAGRAPHS = [
    "The town library will close for renovation in March. During the three months of work, a temporary library "
    "will open in the community hall, with a smaller selection of books and two computers for public use.",
    "Researchers found that people who walk for thirty minutes a day sleep better and report less stress. The "
    "study followed two thousand adults for a year and controlled for age, income and diet.",
    "The company announced that its new phone will have a larger battery and a better camera, but no headphone "
    "jack. It will go on sale next month at a slightly higher price than the previous model.",
    "Heavy rain caused flooding in several villages along the river on Sunday. Firefighters helped dozens of "
    "families leave their homes, and the regional government promised financial support for repairs.",
    "A local school started a vegetable garden that the students look after themselves. The vegetables are used "
    "in the school kitchen, and the teachers say the children now eat more salad than before.",
    "The museum's new exhibition shows tools and jewellery from the Bronze Age found in the region. Visitors can "
    "also try to make their own clay pots in a workshop held every Saturday.",
    "The city plans to add two hundred new bicycle parking spaces near the main station. Officials hope this "
    "will encourage more people to cycle to work instead of driving.",
    "After ten years of decline, the number of bees in the valley has started to rise again. Farmers believe the "
    "change is due to the wildflower strips they planted along their fields.",
]
_PEOPLE = [
    "Marie Curie", "Albert Einstein", "Leonardo da Vinci", "Ada Lovelace", "Isaac Newton", "Cleopatra",
    "William Shakespeare", "Nelson Mandela", "Charles Darwin", "Frida Kahlo", "Alan Turing", "Galileo Galilei",
]
_COUNTRIES = [
    "France", "Japan", "Brazil", "Canada", "Egypt", "Australia", "India", "Kenya", "Norway", "Mexico",
    "Italy", "Argentina",
]


def _math() -> list[str]:
    out = []
    pairs = [(17, 25), (48, 37), (125, 76), (9, 14), (230, 415), (63, 29), (12, 12), (305, 96)]
    for a, b in pairs:
        out += [f"What is {a} + {b}?", f"What is {a} times {b}?", f"What is {a + b} minus {b}?"]
    for a, b, c in [(3, 5, 20), (2, 7, 15), (5, 3, 28), (4, 6, 30), (7, 2, 44), (6, 9, 45)]:
        out.append(f"Solve for x: {a}x + {b} = {c}. Show your steps.")
    items = [("apples", 3, 12), ("pencils", 4, 9), ("books", 2, 15), ("cookies", 6, 7), ("tickets", 5, 8)]
    for thing, price, count in items:
        out.append(f"If one of the {thing} costs {price} dollars, how much do {count} {thing} cost? Explain.")
        out.append(f"Tom has {count * 2} {thing} and gives away half of them. How many does he have left?")
    for n in (12, 20, 45, 64, 100):
        out.append(f"What is {n} percent of 250?")
    return out


def builtin_prompts() -> list[str]:
    """Every built-in prompt, in a fixed order (the held-out split depends on it)."""
    groups: list[list[str]] = [
        [f"What is {c}? Explain it in simple terms." for c in _CONCEPTS],
        list(_WHY),
        [f"Give me some tips for {a}." for a in _ADVICE],
        [f"Translate into {lang}: {s}" for s, lang in zip(_SENTENCES, itertools.cycle(_LANGUAGES))],
        _math(),
        [f"Write a Python function that {t}." for t in _CODE_TASKS],
        [f"Write a short poem about {t}." for t in _TOPICS],
        [f"Tell me a short story about {t}." for t in _TOPICS],
        [f"Summarize in one sentence: {p}" for p in _PARAGRAPHS],
        [f"Rewrite this text in a more formal tone: {p}" for p in _PARAGRAPHS[:4]],
        [f"Who was {p}, and why are they famous?" for p in _PEOPLE],
        [f"What is the capital of {c}, and what is it known for?" for c in _COUNTRIES],
        [
            "Hi! How are you today?", "Can you recommend a good book for a long flight?",
            "I feel a bit bored. What could I do this evening?", "What should I cook for dinner tonight?",
            "Tell me a fun fact about animals.", "What is your favourite season, and why?",
            "Can you help me plan a weekend in a new city?", "I have a job interview tomorrow. Any advice?",
            "What are some good hobbies for a rainy day?", "How do I say no politely to a friend?",
            "Explain the rules of chess briefly.", "What is the difference between a lake and a sea?",
            "Give me three ideas for a birthday present for my sister.", "How can I be more productive in the morning?",
            "What are the pros and cons of electric cars?", "Describe a healthy breakfast.",
        ],
    ]
    # Interleave the groups so both the training and the held-out split cover every kind of request.
    out: list[str] = []
    for row in itertools.zip_longest(*groups):
        out.extend(p for p in row if p is not None)
    return out


def split(prompts: list[str], every: int = 10) -> tuple[list[str], list[str]]:
    """(training, held-out): every ``every``-th prompt is held out.

    >>> split(list("abcdefghijk"), every=5)
    (['a', 'b', 'c', 'd', 'f', 'g', 'h', 'i', 'k'], ['e', 'j'])
    """
    train = [p for i, p in enumerate(prompts) if (i + 1) % every]
    held = [p for i, p in enumerate(prompts) if (i + 1) % every == 0]
    return train, held
