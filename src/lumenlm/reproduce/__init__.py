"""Reproduce a seed model card end to end: prepare → train → eval → sample → card → export.

This part orchestrates the features (data, train, evaluate, infer, export), which may
not import each other; it sits in its own layer between the CLI and them. The cards'
published numbers are data here (`cards.CARDS`), read by the comparison table and the
generated card, never typed into a template.
"""

from __future__ import annotations

from lumenlm.reproduce.cards import CARDS, Card, get_card
from lumenlm.reproduce.pipeline import STEPS, Reproduction, reproduce

__all__ = ["CARDS", "STEPS", "Card", "Reproduction", "get_card", "reproduce"]
