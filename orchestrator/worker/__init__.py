"""What runs inside a Ray Train worker: the unlearning loop, batching, engines, checkpoints, early stop, evaluation."""
