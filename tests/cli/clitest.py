"""A few helpers for the command-line tests: run slearn_dist, collect failures, report like a test runner."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
SHARED_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")
BINARY = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build", "bin", "slearn_dist")

_failures = []
_passed = 0


def run(args, stdin=None):
    """Runs slearn_dist with args; returns (exit code, stdout, stderr)."""
    done = subprocess.run([BINARY] + args, input=stdin, capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout, done.stderr


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def check(condition, what):
    global _passed
    if condition:
        _passed += 1
    else:
        _failures.append(what)
        print("FAIL:", what, file=sys.stderr)


def finish():
    print(f"{_passed} passed, {len(_failures)} failed")
    sys.exit(1 if _failures else 0)
