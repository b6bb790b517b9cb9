"""Evaluations: each is data in conf/eval/*.yaml (`_target_` + parameters) and one class here implementing
the Evaluator contract in dart.evals.base. The Lightning loop (dart.lit) drives them."""
