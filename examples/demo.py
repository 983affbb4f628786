"""The main demo: the same unchanged program, plainly and under the launcher.

    python examples/demo.py [--tasks N] [--size N]

Runs examples/nested_eigh.py (a multiprocessing.Pool whose tasks call NumPy's
eigh) twice in fresh processes: with plain ``python``, then with
``python -m composepar``, and prints both times and the speed-up.
"""

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PROGRAM = os.path.join(HERE, "nested_eigh.py")


def timed(command, env):
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"demo: {' '.join(command)} failed:\n{result.stderr}")
    return elapsed, result.stdout.strip()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    program = [PROGRAM, "--tasks", str(args.tasks), "--size", str(args.size)]
    # The baseline gets the environment a user has: nothing of composepar's.
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSEPAR_")}
    plain, plain_out = timed([sys.executable, *program], env)
    print(f"plain python:          {plain_out}   (wall {plain:.2f} s)")
    composed, composed_out = timed([sys.executable, "-m", "composepar", *program], env)
    print(f"python -m composepar:  {composed_out}   (wall {composed:.2f} s)")
    print(f"speed-up: {plain / composed:.1f}x on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
