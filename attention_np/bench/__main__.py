"""``python -m attention_np.bench [name]`` runs one benchmark (default: sdpa)."""
import argparse
import importlib
import sys

BENCHMARKS = {
    "sdpa": "attention_np.bench.sdpa",          # SDPA forward+backward vs a matmul-only lower bound
    "efficient": "attention_np.bench.efficient",  # naive vs flash vs linear attention: time and memory
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attention_np.bench", description=__doc__)
    parser.add_argument("name", nargs="?", default="sdpa", choices=sorted(BENCHMARKS))
    args, rest = parser.parse_known_args(argv)
    try:
        module = importlib.import_module(BENCHMARKS[args.name])
    except ModuleNotFoundError:
        print(f"benchmark {args.name!r} is not available yet", file=sys.stderr)
        return 2
    return module.main(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
