"""``python -m attention_np.release``: generate ``exercises/`` from ``solutions/`` (see attention_np.grading.release)."""
import sys

from attention_np.grading.release import main

if __name__ == "__main__":
    sys.exit(main())
