"""Training loops: pretraining, reward model training + SPL, evaluator training, fine-tuning."""
