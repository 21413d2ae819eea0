# Notebooks under tests/fixtures are inputs of the grading tests (some are broken
# or hostile on purpose); they must not be collected by nbval.
#
# Do not set MPLBACKEND here: nbval's kernels inherit this process's environment,
# and a non-inline backend would make every chapter lose its stored PNG outputs.
# Tests that plot select Agg themselves (matplotlib.use("Agg")).
collect_ignore_glob = ["fixtures/*"]
