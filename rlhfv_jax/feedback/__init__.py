"""AI feedback: claims in an answer, verdicts from a labeler model, corrections and ranking
pairs. `claims` finds the checkable claims of an answer (rule based over the Object
HalBench vocabulary, or read from an external tool's JSON lines), each with its span and a
yes/no question for the labeler; `corrections` turns the labeler's verdicts into
fine-grained corrections and ranking pairs.
"""
