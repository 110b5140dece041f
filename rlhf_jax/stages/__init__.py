"""The pipeline's stages: the trainers (SFT, reward model, PPO, DPO), online label
collection and evaluation, and what they share (`context`, `batched`)."""
