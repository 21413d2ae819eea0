"""``python -m attention_np.book build [OUT]``: the offline HTML edition (default OUT: build/book/)."""
import argparse
import sys
import time

if __name__ == "__main__":
    # jsonschema (via nbformat) would import the optional rfc3987_syntax, which builds a parser
    # at import time (over a second) for a format check notebooks never use.
    sys.modules.setdefault("rfc3987_syntax", None)

from attention_np.book.site import build, default_root  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attention_np.book",
                                     description="Build the book's offline HTML edition from the chapters' "
                                                 "stored outputs (no execution).")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="render chapters/*.ipynb to OUT (index.html, one page per chapter, mathjax/)")
    b.add_argument("out", nargs="?", default=None, help="output directory (default: build/book/ in the repository)")
    b.add_argument("--root", default=None, help="repository root holding chapters/ (default: this checkout)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    root = args.root or default_root()
    try:
        pages = build(args.out, root=root)
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, ModuleNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"built {len(pages)} pages in {time.perf_counter() - start:.1f} s; open {pages[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
