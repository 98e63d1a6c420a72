"""Running unlearning: the run function, its preparation and state, the Ray session, and the worker groups."""
