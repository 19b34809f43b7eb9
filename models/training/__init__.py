"""Making the trained speculators: their prompts (corpus, sources, mix, follow-ups, evals
registry), the contamination check against every evaluation prompt, the target's answers and
hidden states on disk (data, dataset), the training loops (train) and held-out scoring
(evaluate). Inference needs none of it: the heads and their shipped weights live in
models/speculative/speculators/."""
