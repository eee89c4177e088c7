#!/usr/bin/env python3
"""Stand-in for `/usr/bin/time -v` where GNU time is not installed (e.g. a GPU machine's image).

Runs the command given as arguments, passes its stdout through, and writes to stderr the
command's own stderr followed by the one line `bench/compare_table.py` reads from GNU time:
`Maximum resident set size (kbytes): N`, the peak RSS of the child (getrusage RUSAGE_CHILDREN,
which Linux reports in KiB). Exits with the command's exit status.
"""
import resource
import subprocess
import sys


def main() -> int:
    if len(sys.argv) < 2:
        print("usage: timev.py COMMAND [ARGS...]", file=sys.stderr)
        return 2
    code = subprocess.run(sys.argv[1:], check=False).returncode
    rss_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(f"\tMaximum resident set size (kbytes): {rss_kib}", file=sys.stderr)
    print(f"\tExit status: {code}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
