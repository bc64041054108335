"""Learn: the model registry (versions, promotion); annotations and retraining."""
