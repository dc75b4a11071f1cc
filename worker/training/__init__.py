"""Training and evaluation: datasets, extraction cache, fit, speaker recipe, the training job."""
