"""What a person watching sees: Ray dashboard metrics, training metrics, progress, and run reports."""
