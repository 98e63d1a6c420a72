"""Recovery attacks: what an adversary does to bring back what unlearning removed, run after the evaluation.

- relearn (`relearn.py`): fine-tune on a slice of the forget set, score the rest; the retain model, relearned the
  same way, is the control;
- quantise (`quantise.py`): round-to-nearest weight quantisation, 8 and 4 bits, group-wise;
- probe (`prompts.py`): the forget questions rephrased, and behind a few-shot prefix of retained pairs.

`run.py` runs them on one model where it is held (a Ray Train worker); `recovery.py` turns their values into
recovery figures. The section's config (`config.py`) is torch-free: it is validated when the experiment loads.
"""
