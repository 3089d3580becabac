"""Fine-tuning as equations: the loss, the backward pass derived from the forward equations, the updates."""
