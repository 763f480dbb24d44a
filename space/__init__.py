"""The Gradio app for the brain tumor classifier (also the Hugging Face Space).

``space.ui`` builds the interface and ``space.model_choice`` picks the models to serve. Importing
this package imports neither, so ``app.py`` can read its options before Gradio and PyTorch load.
"""
