"""`unlearn sweep`: Ray Tune over unlearning methods and their hyperparameters (see driver.py).

Modules, one job each: `config` (the `sweep:` section), `space` (cells and trial overrides), `trainable` (one trial
= one Ray Train run), `analysis` (pure figures: fronts, hypervolume, robustness, expected max), `plots`, `report`
(sweep_summary.json, sweep_report.md), `driver` (run_sweep, resume_sweep). Nothing is imported here, so that
`orchestrator.config` can import the section's model without Ray or torch.
"""
