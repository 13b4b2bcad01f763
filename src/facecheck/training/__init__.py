"""Fine-tuning loop, augmentation and synthetic fakes."""
