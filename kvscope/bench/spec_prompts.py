"""Prompts for the speculative decoding benchmark, written for it.

- input-grounded: rewrite, edit or summarise a passage given in the prompt, where the
  answer copies much of its input (what n-gram lookup is for);
- code: write a small function (what a code model's draft predicts well);
- chat: open questions, where the answer is new text.
"""

from __future__ import annotations

PASSAGES = [
    "The lighthouse keeper climbed the spiral stairs every evening at dusk. He trimmed the "
    "wick, polished the great lens, and wrote the weather in a leather logbook. Ships "
    "passing the rocks at night saw his light sweep across the water every ten seconds.",
    "Our team meets on Mondays at nine to plan the week. Each person lists the tasks they "
    "finished, the tasks they will start, and anything that blocks them. The meeting ends "
    "when every blocked task has an owner who will clear it before Wednesday.",
    "To make bread, mix flour, water, salt and yeast into a dough. Knead the dough for ten "
    "minutes, then let it rise in a warm place for an hour. Shape the loaf, let it rise "
    "again, and bake it in a hot oven for about forty minutes until the crust is brown.",
    "The library will close for repairs from the first of June to the fifteenth of July. "
    "During that time books can be returned at the town hall, and the reading room moves "
    "to the school gym, which is open from ten in the morning to six in the evening.",
]

GROUNDED_TASKS = [
    "Repeat the following text exactly, word for word:\n\n{}",
    "Rewrite the following text in the past tense, changing nothing else:\n\n{}",
    "Fix any spelling and grammar mistakes in this text and return the full corrected "
    "text:\n\n{}",
    "Copy this text and put each sentence on its own line:\n\n{}",
]

CODE_PROMPTS = [
    "Write a Python function `is_prime(n)` that returns True when n is prime.",
    "Write a Python function that reverses a singly linked list and returns the new head.",
    "Write a Python function `merge_sorted(a, b)` that merges two sorted lists.",
    "Write a Python class `Stack` with push, pop, peek and is_empty methods.",
    "Write a Python function that counts how often each word appears in a string.",
    "Write a Python function `binary_search(items, target)` returning the index or -1.",
    "Write a Python function that returns the n-th Fibonacci number iteratively.",
    "Write a Python function that checks whether a string is a palindrome, ignoring case.",
]

CHAT_PROMPTS = [
    "What are three good habits for keeping a small garden healthy?",
    "Explain why the sky looks blue during the day.",
    "Give me some tips for a first job interview.",
    "How do I make a good cup of tea?",
    "What is the difference between weather and climate?",
    "Suggest a plan for learning to play the guitar as an adult.",
    "Why do cats purr?",
    "How can I sleep better at night?",
]


def grounded_prompts(count: int) -> list[str]:
    """`count` input-grounded tasks, cycling over tasks and passages."""
    return [GROUNDED_TASKS[i % len(GROUNDED_TASKS)].format(
        PASSAGES[(i // len(GROUNDED_TASKS) + i) % len(PASSAGES)]) for i in range(count)]
