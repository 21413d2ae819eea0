"""``python -m attention_np.release``: generate ``exercises/`` from ``solutions/`` (see attention_np.grading.release)."""
import sys

if __name__ == "__main__":
    # jsonschema (via nbformat) would import the optional rfc3987_syntax, which builds a parser
    # at import time (over a second) for a format check notebooks never use.
    sys.modules.setdefault("rfc3987_syntax", None)

from attention_np.grading.release import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
