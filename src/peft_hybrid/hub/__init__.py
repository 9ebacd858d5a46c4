"""The Hugging Face Hub: downloads, uploads, the trainer's push schedule, model cards, and their errors."""
