"""Model cards for run folders: a README.md with metadata, results and limitations, built from the run's files."""

from .render import CARD_NAME, render_model_card, write_model_card

__all__ = ["CARD_NAME", "render_model_card", "write_model_card"]
