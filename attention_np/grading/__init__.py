"""Exercise release and grading; the check-cell helpers are importable from here."""
from .checks import DEFAULT_SEED, SEED_ENV, assert_close, check_rng, grading_seed, reference

__all__ = ["DEFAULT_SEED", "SEED_ENV", "assert_close", "check_rng", "grading_seed", "reference"]
