"""The training prompts for self-distillation: the project's own, never benchmark questions.

Two sources, both deterministic for a seed:
- authored instruction templates filled with authored topics, numbers and languages, spread
  over the kinds of requests a chat model meets (writing, role play, reasoning, math, coding,
  extraction, science, humanities, translation, summarisation, questions, answers from a text);
- prompts the target writes itself: it is asked to write a short passage on a topic, which a
  summarise/extract/answer instruction then wraps.
Spec-Bench (the evaluation set) and sample_prompts/ are never read here.
"""

from __future__ import annotations

import random

TOPICS = [
    "volcanoes", "the water cycle", "photosynthesis", "black holes", "the Roman Empire", "the printing press",
    "honey bees", "climate change", "electric cars", "the human heart", "coffee", "the moon landing",
    "ancient Egypt", "recycling", "the internet", "vaccines", "rainforests", "earthquakes", "chess",
    "the Olympic Games", "jazz music", "renewable energy", "the stock market", "sleep", "dinosaurs",
    "the French Revolution", "machine learning", "ocean tides", "the immune system", "bridges",
    "gardening", "the history of money", "friendship", "time management", "public libraries",
    "mountain climbing", "bread baking", "solar panels", "the Silk Road", "penguins", "video games",
    "the Renaissance", "magnets", "healthy eating", "city parks", "trains", "the periodic table",
    "social media", "deserts", "composting", "the violin", "space telescopes", "first aid",
    "the Great Wall of China", "bicycles", "memory and learning", "coral reefs", "weather forecasts",
    "remote work", "museums", "airplanes", "the theory of evolution", "saving money", "robots",
    "glaciers", "ancient Greece", "the microscope", "marathons", "tea", "wind turbines", "owls",
    "languages of the world", "the brain", "lighthouses", "democracy", "paper making", "fungi",
    "the speed of light", "board games", "volunteering", "the Industrial Revolution", "sharks",
]

ROLES = [
    "a tour guide in Rome", "a ship captain", "a detective", "a kindergarten teacher", "a chef",
    "a personal trainer", "a museum curator", "a medieval knight", "a travel agent", "a librarian",
    "a startup founder", "a park ranger", "a sports commentator", "a job interviewer", "a scientist",
]

LANGUAGES = ["French", "Spanish", "German", "Italian", "Portuguese", "Chinese", "Japanese"]

SENTENCES = [
    "The library opens at nine in the morning.", "My brother likes to play football on Sundays.",
    "Please close the window before you leave.", "The weather is very cold today.",
    "We are going to the beach next weekend.", "This book is more interesting than the film.",
    "Could you tell me where the train station is?", "She has been learning to play the piano for years.",
    "The restaurant was full, so we ate at home.", "I would like a cup of tea with milk.",
]

TEMPLATES = [
    "Write a short story about {topic}.",
    "Write a poem about {topic}.",
    "Write a blog post introducing {topic} to beginners.",
    "Write a persuasive paragraph arguing that everyone should learn about {topic}.",
    "Explain {topic} to a ten-year-old.",
    "What are the main facts everyone should know about {topic}?",
    "Give me five interesting facts about {topic}.",
    "What are the advantages and disadvantages of {topic}?",
    "Describe the history of {topic} in a few paragraphs.",
    "How does {topic} affect everyday life?",
    "Compare {topic} and {topic2}. How are they similar and different?",
    "Create a lesson plan for teaching {topic}.",
    "Write a list of questions a student might ask about {topic}, with answers.",
    "Pretend you are {role}. Tell me about your day.",
    "Pretend you are {role}. Give me advice about {topic}.",
    "You are {role}. Describe {topic} in your own words.",
    "If you could change one thing about {topic}, what would it be and why?",
    "Write a Python function that {code_task}.",
    "Explain what this Python code does: {code}",
    "Write a short program in Python that {code_task}, and explain how it works.",
    "What is {a} plus {b}? Show your work.",
    "A shop sells apples for {a} cents each. How much do {b} apples cost? Explain step by step.",
    "If a train travels {a} kilometres in {b} hours, what is its average speed? Explain.",
    "Solve for x: {a}x + {b} = {c}. Show each step.",
    "What is {a} multiplied by {b}? Explain how you calculated it.",
    "Tom has {a} marbles and gives away {b}. Then he buys {c} more. How many does he have now?",
    "Translate into {language}: {sentence}",
    "How do you say \"{sentence}\" in {language}?",
    "Write a formal email to a colleague about {topic}.",
    "Give me a step-by-step guide to getting started with {topic}.",
    "What would happen if {topic} disappeared tomorrow?",
    "Summarize what you know about {topic} in three sentences.",
]

CODE_TASKS = [
    "reverses a string", "checks whether a number is prime", "counts the vowels in a sentence",
    "returns the largest number in a list", "computes the factorial of a number",
    "sorts a list of words by length", "removes duplicates from a list", "converts Celsius to Fahrenheit",
    "checks whether a word is a palindrome", "sums the even numbers in a list",
    "reads a text file and counts its lines", "returns the Fibonacci numbers below 100",
]

CODE_SNIPPETS = [
    "def f(xs): return [x * 2 for x in xs if x > 0]",
    "total = 0\nfor i in range(10):\n    total += i\nprint(total)",
    "def g(s): return s[::-1] == s",
    "words = text.split()\ncounts = {w: words.count(w) for w in set(words)}",
]

SELF_WRITTEN = [  # (request to the target, the instruction that wraps its passage): sources.wrapped_passage_requests
    ("Write a short paragraph of facts about {topic}.", "Summarize the following text in two sentences.\n\n{text}"),
    ("Write a short paragraph about {topic}.", "{text}\n\nWhat is the main idea of the text above?"),
    ("Write a short news report about {topic}.", "List the key facts from this report:\n\n{text}"),
    ("Describe {topic} in one paragraph.", "Based on the text below, answer: why does it matter?\n\n{text}"),
]


def authored_prompts(n: int, seed: int) -> list[str]:
    """n distinct prompts from the templates (deterministic for the seed)."""
    rng = random.Random(seed)
    prompts: list[str] = []
    seen: set[str] = set()
    while len(prompts) < n:
        template = rng.choice(TEMPLATES)
        topic, topic2 = rng.sample(TOPICS, 2)
        a, b = rng.randint(2, 99), rng.randint(2, 30)
        text = template.format(
            topic=topic, topic2=topic2, role=rng.choice(ROLES), language=rng.choice(LANGUAGES),
            sentence=rng.choice(SENTENCES), code_task=rng.choice(CODE_TASKS), code=rng.choice(CODE_SNIPPETS),
            a=a, b=b, c=a * rng.randint(1, 9) + b,
        )
        if text not in seen:
            seen.add(text)
            prompts.append(text)
    return prompts
