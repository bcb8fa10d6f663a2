"""A/B tests (SPEC §9 `ab`): sticky assignment of each subject to a variant (`assign.py`, `middleware.py`)."""
