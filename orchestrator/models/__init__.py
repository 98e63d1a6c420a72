"""Models: loading, the embedded tiny models and their fine-tuning, shapes, and the memory planner."""
