import os

os.environ.setdefault("MPLBACKEND", "Agg")

# Notebooks under tests/fixtures are inputs of the grading tests (some are broken
# or hostile on purpose); they must not be collected by nbval.
collect_ignore_glob = ["fixtures/*"]
