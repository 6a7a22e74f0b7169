"""``python -m owl_plugin.kernels build``: compile the C++ kernels now (set-up), then print which path runs.

Exit 0 when the compiled extension loads; 1 (with the compiler's error) when it cannot be built, in
which case the op still works through its pure-torch twin, only without the speed-up.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m owl_plugin.kernels", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("build", "info"), help="build: compile if needed; info: print only")
    parser.add_argument("--verbose", "-v", action="store_true", help="show the compiler's output")
    args = parser.parse_args(argv)
    from owl_plugin.kernels.build import load_extension
    from owl_plugin.kernels.dispatch import kernel_info

    module = load_extension(verbose=args.verbose) if args.action == "build" else None
    info = kernel_info()
    print(json.dumps(info, indent=2))
    if args.action == "build" and module is None:
        print(f"owl kernels: the C++ extension could not be built: {info['extension_error']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
