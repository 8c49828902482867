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
        print("FAIL:", what, file=sys.stderr, flush=True)
    return condition


def failures():
    return list(_failures)


def error_table(cases, messages):
    """The markdown table of a bad-input catalogue: group, case and message of each case, exit 2."""
    def escape(cell):
        return cell.replace("|", "\\|")
    rows = ["| input | case | message (after `slearn_dist: error: `) | exit |", "| --- | --- | --- | --- |"]
    for group, name, *_ in cases:
        message = messages.get(name, ("", "?"))[1]
        rows.append(f"| {group} | {escape(name)} | `{escape(message)}` | 2 |")
    return "\n".join(rows) + "\n"


def check_doc_section(path, marker, wanted):
    """Checks that the text between <!-- BEGIN marker --> and <!-- END marker --> in path is `wanted`;
    with SLEARN_UPDATE_DOCS=1 rewrites it instead."""
    begin, end = f"<!-- BEGIN {marker} -->\n", f"<!-- END {marker} -->"
    with open(path, encoding="utf-8") as f:
        doc = f.read()
    if not check(begin in doc and end in doc, f"{path} has the {marker} markers"):
        return
    head, rest = doc.split(begin, 1)
    current, tail = rest.split(end, 1)
    if current != wanted and os.environ.get("SLEARN_UPDATE_DOCS"):
        with open(path, "w", encoding="utf-8") as f:
            f.write(head + begin + wanted + end + tail)
        print(f"{path}: {marker} rewritten", file=sys.stderr)
        return
    check(current == wanted, f"{path}'s {marker} is current (run with SLEARN_UPDATE_DOCS=1 to rewrite it); "
                             "differing rows:\n" + "\n".join(sorted(set(wanted.splitlines()) ^ set(current.splitlines()))))


def finish():
    print(f"{_passed} passed, {len(_failures)} failed")
    sys.exit(1 if _failures else 0)
