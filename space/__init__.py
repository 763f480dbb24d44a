"""The Gradio app for the brain tumor classifier (also the Hugging Face Space)."""

from .ui import DISCLAIMER, build_demo, example_images

__all__ = ["DISCLAIMER", "build_demo", "example_images"]
