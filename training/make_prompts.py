"""Write training/prompts.jsonl: the user turns the target answers to make the draft's training data.

Templates x subjects, in the benchmark's four categories (chat, code, math, prose); deterministic; no prompt
equals a benchmark prompt (benchmarks/prompts.jsonl), which is checked. Run: python training/make_prompts.py
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

HERE = Path(__file__).parent
SUBJECTS = [
    "photosynthesis",
    "the water cycle",
    "gravity",
    "volcanoes",
    "the moon",
    "rainbows",
    "electricity",
    "magnets",
    "the human heart",
    "sleep",
    "exercise",
    "healthy eating",
    "recycling",
    "bees",
    "the ocean",
    "deserts",
    "earthquakes",
    "the internet",
    "computers",
    "money",
    "saving money",
    "time management",
    "friendship",
    "learning a language",
    "music",
    "reading",
    "the stock market",
    "vaccines",
    "climate change",
    "solar energy",
    "wind power",
    "dinosaurs",
    "the pyramids",
    "the Roman Empire",
    "democracy",
    "taxes",
    "coffee",
    "tea",
    "bread baking",
    "gardening",
    "cats",
    "dogs",
    "birds",
    "rivers",
    "mountains",
    "stars",
    "black holes",
    "the brain",
    "memory",
    "stress",
    "public speaking",
    "teamwork",
    "remote work",
    "email etiquette",
    "cooking pasta",
    "camping",
    "cycling",
    "running",
    "chess",
    "photography",
    "painting",
    "writing a resume",
]
CHAT = [
    "Explain {s} in simple terms.",
    "What is {s}? Give a short answer.",
    "Why is {s} important?",
    "Give me three interesting facts about {s}.",
    "How would you explain {s} to a ten-year-old?",
    "What are the pros and cons of {s}?",
    "Give me some tips about {s}.",
    "Summarize what you know about {s}.",
    "What are common misconceptions about {s}?",
    "How can I learn more about {s}?",
]
PROSE = [
    "Write a short story about {s}.",
    "Write a short poem about {s}.",
    "Describe {s} in a few sentences.",
    "Write a product description for a book about {s}.",
    "Write a short blog post introduction about {s}.",
    "Write a haiku about {s}.",
    "Write a friendly email inviting a friend to a talk about {s}.",
]
CODE_TASKS = [
    "reverses a string",
    "counts the vowels in a string",
    "finds the largest number in a list",
    "checks whether a number is prime",
    "computes the factorial of n",
    "sorts a list of numbers with bubble sort",
    "merges two sorted lists",
    "counts word frequencies in a text",
    "converts Celsius to Fahrenheit",
    "returns the sum of the digits of a number",
    "checks whether two strings are anagrams",
    "flattens a nested list",
    "finds the second smallest element of a list",
    "computes the greatest common divisor",
    "removes the vowels from a string",
    "returns the even numbers of a list",
    "computes the average of a list",
    "capitalizes every word in a sentence",
    "checks whether a year is a leap year",
    "implements binary search",
    "reads a text file and counts its lines",
    "validates an email address",
    "generates the first n primes",
    "converts a binary string to an integer",
    "finds duplicates in a list",
    "rotates a list by k positions",
]
CODE = [
    "Write a Python function that {t}.",
    "Write a JavaScript function that {t}.",
    "Write a Python function that {t}, with a docstring.",
    "Write a C function that {t}.",
    "Explain how to write a function that {t}.",
]
MATH = [
    "What is {a} + {b}? Explain.",
    "What is {a} times {b}? Show your work.",
    "What is {p}% of {n}? Show your work.",
    "Solve for x: {a}x + {b} = {c}. Explain each step.",
    "A car travels {n} km in {h} hours. What is its average speed? Explain step by step.",
    "A rectangle is {a} cm long and {b} cm wide. What are its area and perimeter?",
    "If a shirt costs ${n} and is on sale for {p}% off, what is the sale price?",
    "Tom has {a} apples and gives away {b}. How many does he have left?",
    "What is the square of {a}? Explain.",
    "Convert {n} minutes to hours and minutes.",
]


SUBJECTS_2 = [
    "the solar system",
    "oceans and tides",
    "plants",
    "insects",
    "the immune system",
    "nutrition",
    "meditation",
    "habits",
    "motivation",
    "leadership",
    "negotiation",
    "budgeting",
    "investing",
    "inflation",
    "supply and demand",
    "renewable energy",
    "electric cars",
    "trains",
    "airplanes",
    "bridges",
    "cities",
    "villages",
    "forests",
    "rainforests",
    "polar bears",
    "whales",
    "dolphins",
    "elephants",
    "owls",
    "horses",
    "artificial intelligence",
    "machine learning",
    "programming",
    "databases",
    "cybersecurity",
    "passwords",
    "smartphones",
    "social media",
    "video games",
    "movies",
    "theater",
    "poetry",
    "novels",
    "history",
    "ancient Greece",
    "the printing press",
    "the industrial revolution",
    "space exploration",
    "astronauts",
    "robots",
    "3D printing",
    "weather forecasts",
    "snow",
    "thunderstorms",
    "hurricanes",
    "soil",
    "farming",
    "cheese",
    "chocolate",
    "pizza",
    "soup",
    "breakfast",
    "hiking",
    "swimming",
    "yoga",
    "football",
    "basketball",
    "tennis",
    "the Olympics",
    "museums",
    "libraries",
    "school",
    "homework",
    "exams",
    "teachers",
    "university",
    "job interviews",
    "volunteering",
    "kindness",
    "travel",
]
CHAT_2 = [
    "Tell me about {s}.",
    "What should a beginner know about {s}?",
    "Write a short paragraph about {s}.",
    "List five key points about {s}.",
    "How does {s} affect everyday life?",
    "Compare {s} with something similar.",
    "What are the main benefits of {s}?",
    "Explain the history of {s} briefly.",
]
PROSE_2 = [
    "Write a short story for children about {s}.",
    "Write a limerick about {s}.",
    "Write a motivational message about {s}.",
    "Write a diary entry about a day spent thinking about {s}.",
    "Write a short speech about {s}.",
]
CODE_TASKS_2 = [
    "returns the length of the longest word in a sentence",
    "converts a list of strings to uppercase",
    "computes the product of a list of numbers",
    "checks whether a list is sorted",
    "counts the uppercase letters in a string",
    "returns the unique elements of a list in order",
    "computes the n-th triangular number",
    "swaps the keys and values of a dictionary",
    "splits a list into chunks of size n",
    "returns the index of the maximum value",
    "computes the median of a list",
    "checks whether a string contains only digits",
    "computes the power of a number without using **",
    "finds the common elements of two lists",
    "converts a number to Roman numerals",
    "counts the words in a sentence",
]
CODE_2 = [
    "Write a Python function that {t}. Include an example.",
    "Write a Java method that {t}.",
    "Write a Python function that {t} and explain how it works.",
    "Write a TypeScript function that {t}.",
]
MATH_2 = [
    "What is {a} minus {b}? Explain.",
    "What is {n} divided by {h}? Show your work.",
    "A book costs ${a} and a pen costs ${b}. How much do {h} books and one pen cost?",
    "A garden is {a} m by {b} m. What is its area?",
    "What is the average of {a}, {b} and {c}?",
    "Sarah reads {a} pages a day. How many pages does she read in {h} weeks?",
    "Convert {n} grams to kilograms.",
    "What is {p}% of {c}? Explain step by step.",
]


def more_prompts(seed: int = 1) -> list[dict]:
    """A second round of templates and subjects (appended after the first, so earlier data stays aligned)."""
    rng = random.Random(seed)
    rows = [("chat", t.format(s=s)) for t, s in itertools.product(CHAT + CHAT_2, SUBJECTS_2)]
    rows += [("chat", t.format(s=s)) for t, s in itertools.product(CHAT_2, SUBJECTS)]
    rows += [("prose", t.format(s=s)) for t, s in itertools.product(PROSE + PROSE_2, SUBJECTS_2)]
    rows += [("code", t.format(t=task)) for t, task in itertools.product(CODE + CODE_2, CODE_TASKS_2)]
    rows += [("code", t.format(t=task)) for t, task in itertools.product(CODE_2, CODE_TASKS)]
    for template in MATH + MATH_2:
        for _ in range(25):
            numbers = dict(
                a=rng.randint(2, 60),
                b=rng.randint(2, 60),
                c=rng.randint(41, 300),
                n=rng.randint(20, 900),
                h=rng.randint(2, 9),
                p=rng.choice([5, 10, 12, 15, 20, 25, 30, 40, 50, 60, 75]),
            )
            rows.append(("math", template.format(**numbers)))
    unique = list(dict.fromkeys(rows))
    rng.shuffle(unique)
    return [{"category": c, "prompt": p} for c, p in unique]


def prompts(seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = [("chat", t.format(s=s)) for t, s in itertools.product(CHAT, SUBJECTS)]
    rows += [("prose", t.format(s=s)) for t, s in itertools.product(PROSE, SUBJECTS)]
    rows += [("code", t.format(t=task)) for t, task in itertools.product(CODE, CODE_TASKS)]
    for template in MATH:
        for _ in range(30):
            numbers = dict(
                a=rng.randint(2, 40),
                b=rng.randint(2, 40),
                c=rng.randint(41, 200),
                n=rng.randint(20, 600),
                h=rng.randint(2, 8),
                p=rng.choice([5, 10, 15, 20, 25, 30, 40, 50, 75]),
            )
            rows.append(("math", template.format(**numbers)))
    unique = list(dict.fromkeys(rows))
    rng.shuffle(unique)
    return [{"category": c, "prompt": p} for c, p in unique]


def main() -> None:
    bench = {json.loads(line)["prompt"] for line in (HERE.parent / "benchmarks" / "prompts.jsonl").open()}
    first = [r for r in prompts() if r["prompt"] not in bench]
    seen = {r["prompt"] for r in first} | bench
    rows = first + [r for r in more_prompts() if r["prompt"] not in seen]
    with (HERE / "prompts.jsonl").open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(f"{len(rows)} prompts -> {HERE / 'prompts.jsonl'}")


if __name__ == "__main__":
    main()
