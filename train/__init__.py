"""Training, evaluation, comparison and publishing for the brain tumor MRI classifiers."""
