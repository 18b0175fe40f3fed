"""Docs that cannot drift: every example in README.md and docs/*.md that shows a command
with its output is run against the real server, and what the server answers is compared
with what the page shows. A change to an error's wording fails here, not in a reader's
terminal. The convention (docs/testing.md, "Examples in the docs", says it for writers):

- An example with output is a ```console block: each command starts with `$ ` (a line
  ending in `\\` goes on), only `curl` runs there, and the lines up to the next `$ ` are
  its output. Commands shown without output go in ```sh blocks, where a curl line may not
  carry its output in a comment (`# {"n": 20}`): that output would not be checked.
- The server is `--app handlers.demo --strategy subinterpreters --workers 2` unless an HTML
  comment right above the block, `<!-- server: ARGS -->`, gives other gilgamesh arguments.
  `build/site-flask` there stands for the Flask site scripts/pure_python_site.py makes.
  Examples with the same arguments share one server; the commands' 127.0.0.1:8080 is
  replaced by its port.
- Output starting with a status line (`curl -i`): the status line is compared exactly,
  each header line shown must be in the response (other headers may follow; a `...` line
  says so), and after a blank line the body is compared. A body that is JSON on the page is
  compared as parsed JSON, where the string "..." stands for any value, a "..." key in an
  object for any further keys, a last "..." in a list for any further items, and "..."
  inside a string for any text. Any other body is compared line by line, where a `...` line
  stands for any number of lines and `...` inside a line for any text.
- A code block right below `<!-- file: PATH -->` must appear word for word in PATH (the
  repository's example apps), so the code a page shows is the code its examples run.
"""

import argparse
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gilgamesh_harness import REPO, GilgameshServer, scaled, strategies

sys.path.insert(0, str(REPO / "scripts"))
import pure_python_site  # noqa: E402

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
DEFAULT_SERVER = ("--app", "handlers.demo", "--strategy", "subinterpreters", "--workers", "2")
DOC_ADDRESS = "127.0.0.1:8080"
FLASK_SITE = "build/site-flask"
SERVER_MARKER = re.compile(r"^<!--\s*server:\s*(.*?)\s*-->$")
FILE_MARKER = re.compile(r"^<!--\s*file:\s*(.*?)\s*-->$")
FENCE_OPEN = re.compile(r"^(\s*)```(\S*)")
FENCE_CLOSE = re.compile(r"^\s*```\s*$")
# A comment after a curl command that shows what it answers instead of describing it.
OUTPUT_COMMENT = re.compile(r"""^(?:[{\["]|HTTP/|[1-5][0-9][0-9]\b)""")


@dataclass
class Block:
    page: Path
    line: int           # of the opening fence, 1-based
    lang: str
    lines: list
    marker: str         # the nearest non-blank line above the fence


@dataclass
class Example:
    page: Path
    line: int           # of the `$ ` line
    command: str
    expected: list = field(default_factory=list)
    server: tuple = DEFAULT_SERVER

    @property
    def where(self):
        return "%s:%d" % (self.page.relative_to(REPO), self.line)


def code_blocks(page):
    lines = page.read_text(encoding="utf-8").split("\n")
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE_OPEN.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, end = opening.group(1), i + 1
        while end < len(lines) and not FENCE_CLOSE.match(lines[end]):
            end += 1
        body = [l[len(indent):] if l.startswith(indent) else l.lstrip() for l in lines[i + 1:end]]
        above = i - 1
        while above >= 0 and not lines[above].strip():
            above -= 1
        blocks.append(Block(page, i + 1, opening.group(2), body,
                            lines[above].strip() if above >= 0 else ""))
        i = end + 1
    return blocks


def all_blocks():
    return [block for page in PAGES for block in code_blocks(page)]


def console_examples(block):
    """The block's examples: (command, expected output lines), each with its line."""
    marker = SERVER_MARKER.match(block.marker)
    server = tuple(shlex.split(marker.group(1))) if marker else DEFAULT_SERVER
    examples, i = [], 0
    lines = block.lines
    while i < len(lines):
        if not lines[i].startswith("$ "):
            raise ValueError("%s:%d: output before any `$ ` command in a console block"
                             % (block.page.relative_to(REPO), block.line + 1 + i))
        start, command = i, lines[i][2:]
        while command.endswith("\\") and i + 1 < len(lines):
            i += 1
            command = command[:-1] + " " + lines[i].strip()
        i += 1
        expected = []
        while i < len(lines) and not lines[i].startswith("$ "):
            expected.append(lines[i])
            i += 1
        while expected and not expected[-1].strip():
            expected.pop()
        examples.append(Example(block.page, block.line + 1 + start, command.strip(), expected,
                                server))
    return examples


def collect_examples():
    examples = []
    for block in all_blocks():
        if block.lang == "console":
            try:
                examples += console_examples(block)
            except ValueError:
                pass  # test_examples_follow_the_convention names it
    return examples


EXAMPLES = collect_examples()


# --- matching ---------------------------------------------------------------------------

def glob_match(pattern, text):
    """`...` in `pattern` stands for any text (newlines included); the rest is literal."""
    if "..." not in pattern:
        return pattern == text
    regex = ".*".join(re.escape(part) for part in pattern.split("..."))
    return re.fullmatch(regex, text, re.S) is not None


def json_mismatch(expected, actual, where="body"):
    """None when `actual` matches `expected` (with the "..." wildcards), else why not."""
    if expected == "...":
        return None
    if isinstance(expected, str):
        if isinstance(actual, str) and glob_match(expected, actual):
            return None
        return "%s: %r on the page, %r from the server" % (where, expected, actual)
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return "%s: an object on the page, %r from the server" % (where, actual)
        keys = [k for k in expected if k != "..."]
        missing = [k for k in keys if k not in actual]
        extra = [k for k in actual if k not in expected] if "..." not in expected else []
        if missing or extra:
            return "%s: keys the server lacks %s, keys the page lacks %s (server: %r)" % (
                where, missing, extra, actual)
        for k in keys:
            why = json_mismatch(expected[k], actual[k], "%s.%s" % (where, k))
            if why:
                return why
        return None
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return "%s: a list on the page, %r from the server" % (where, actual)
        open_ended = bool(expected) and expected[-1] == "..."
        items = expected[:-1] if open_ended else expected
        if len(actual) < len(items) or (not open_ended and len(actual) != len(items)):
            return "%s: %d items on the page, %d from the server: %r" % (
                where, len(items), len(actual), actual)
        for i, item in enumerate(items):
            why = json_mismatch(item, actual[i], "%s[%d]" % (where, i))
            if why:
                return why
        return None
    if type(expected) is not type(actual) or expected != actual:
        return "%s: %r on the page, %r from the server" % (where, expected, actual)
    return None


def lines_match(expected, actual):
    """Line by line, a `...` line standing for any number of lines."""
    memo = {}

    def match(i, j):
        if (i, j) not in memo:
            if i == len(expected):
                result = j == len(actual)
            elif expected[i].strip() == "...":
                result = any(match(i + 1, k) for k in range(j, len(actual) + 1))
            else:
                result = j < len(actual) and glob_match(expected[i].rstrip(), actual[j].rstrip()) \
                    and match(i + 1, j + 1)
            memo[(i, j)] = result
        return memo[(i, j)]

    return match(0, 0)


def body_mismatch(expected_lines, actual_text):
    expected_text = "\n".join(expected_lines).strip()
    try:
        expected_json = json.loads(expected_text)
    except ValueError:
        expected_json = None
    if expected_json is not None or expected_text == "null":
        try:
            actual_json = json.loads(actual_text)
        except ValueError:
            return "JSON on the page, not JSON from the server: %r" % actual_text[:2000]
        return json_mismatch(expected_json, actual_json)
    actual_lines = actual_text.rstrip("\n").split("\n")
    if not lines_match(expected_lines, actual_lines):
        return "text differs: page %r, server %r" % (expected_lines, actual_lines[:200])
    return None


def output_mismatch(expected, actual):
    """None when curl's `actual` output matches the page's `expected` lines, else why not."""
    if not expected or not expected[0].startswith("HTTP/"):
        return body_mismatch(expected, actual)
    head, sep, body = actual.replace("\r\n", "\n").partition("\n\n")
    head_lines = head.split("\n")
    if head_lines[0].rstrip() != expected[0].rstrip():
        return "status line: %r on the page, %r from the server" % (expected[0], head_lines[0])
    headers = {}
    for line in head_lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    blank = next((i for i, l in enumerate(expected) if not l.strip()), len(expected))
    for line in expected[1:blank]:
        if line.strip() == "...":
            continue
        name, colon, value = line.partition(":")
        if not colon:
            return "not a header line on the page: %r" % line
        values = headers.get(name.strip().lower(), [])
        if not any(glob_match(value.strip(), v) for v in values):
            return "header %s: %r on the page, %r from the server (all: %s)" % (
                name.strip(), value.strip(), values, head)
    if blank < len(expected):
        if not sep:
            return "the page shows a body, the server sent only a head: %r" % head
        return body_mismatch(expected[blank + 1:], body)
    return None


# --- servers ----------------------------------------------------------------------------

def server_options(args):
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--app", default="handlers.demo")
    parser.add_argument("--wsgi")
    parser.add_argument("--strategy", default="subinterpreters")
    parser.add_argument("--workers", type=int, default=2)
    return parser.parse_known_args(list(args))


class Servers:
    """One running server per distinct `<!-- server: -->` argument list, kept for the module."""

    def __init__(self, tmp_path_factory):
        self.tmp_path_factory = tmp_path_factory
        self.running = {}
        self.flask_site = None

    def _path(self, arg):
        if arg != FLASK_SITE:
            return arg
        if self.flask_site is None:
            self.flask_site = str(pure_python_site.copy_pure_python(
                pure_python_site.FLASK, self.tmp_path_factory.mktemp("site-flask")))
        return self.flask_site

    def get(self, args):
        if args not in self.running:
            options, extra = server_options(args)
            if options.strategy not in strategies():
                pytest.skip("strategy %s is not in GILGAMESH_STRATEGIES" % options.strategy)
            self.running[args] = GilgameshServer(
                options.strategy, workers=options.workers, app=options.app, wsgi=options.wsgi,
                args=[self._path(a) for a in extra]).start()
        return self.running[args]

    def stop_all(self):
        codes = {args: server.stop() for args, server in self.running.items()}
        bad = {args: code for args, code in codes.items() if code != 0}
        assert not bad, "servers exited with %r\n%s" % (
            bad, "\n".join(self.running[a].log()[-3000:] for a in bad))


@pytest.fixture(scope="module")
def servers(gilgamesh_bin, tmp_path_factory):
    pool = Servers(tmp_path_factory)
    yield pool
    pool.stop_all()


def run_curl(example, port):
    argv = shlex.split(example.command)
    argv = [a.replace(DOC_ADDRESS, "127.0.0.1:%d" % port) for a in argv]
    result = subprocess.run(["curl", "-sS", "--max-time", str(int(scaled(15))), *argv[1:]],
                            stdin=subprocess.DEVNULL, capture_output=True, timeout=scaled(30))
    assert result.returncode == 0, "%s: curl exited %d: %s" % (
        example.where, result.returncode, result.stderr.decode("utf-8", "replace"))
    return result.stdout.decode("utf-8", "replace")


# --- tests ------------------------------------------------------------------------------

def test_the_docs_have_examples():
    # A floor, so that a change in how pages are parsed cannot make every test below vanish.
    pages = {e.page.name for e in EXAMPLES}
    assert len(EXAMPLES) >= 20 and "README.md" in pages, [e.where for e in EXAMPLES]


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.where for e in EXAMPLES])
def test_example_output_is_what_the_server_sends(servers, example):
    server = servers.get(example.server)
    actual = run_curl(example, server.port)
    why = output_mismatch(example.expected, actual)
    assert why is None, "%s: `%s`\n%s\n--- the page shows ---\n%s\n--- the server sent ---\n%s" % (
        example.where, example.command, why, "\n".join(example.expected), actual[:4000])


def test_examples_follow_the_convention():
    problems = []
    for block in all_blocks():
        where = "%s:%d" % (block.page.relative_to(REPO), block.line)
        if block.lang == "console":
            try:
                examples = console_examples(block)
            except ValueError as e:
                problems.append(str(e))
                continue
            if not examples:
                problems.append("%s: a console block without a `$ ` command" % where)
            for e in examples:
                argv = shlex.split(e.command)
                if argv[0] != "curl":
                    problems.append("%s: only curl runs in a console block, not `%s` (show "
                                    "other commands in a ```sh block)" % (e.where, e.command))
                elif not any(DOC_ADDRESS in a for a in argv):
                    problems.append("%s: the example must address %s" % (e.where, DOC_ADDRESS))
                if not e.expected:
                    problems.append("%s: `%s` shows no output (a command without output "
                                    "goes in a ```sh block)" % (e.where, e.command))
            server = SERVER_MARKER.match(block.marker)
            if server:
                options, _ = server_options(shlex.split(server.group(1)))
                if options.strategy not in ("subinterpreters", "threads", "processes",
                                            "free-threaded"):
                    problems.append("%s: unknown strategy %s" % (where, options.strategy))
            continue
        if SERVER_MARKER.match(block.marker):
            problems.append("%s: a server marker above a %r block (only console blocks run)"
                            % (where, block.lang))
        for offset, line in enumerate(block.lines):
            at = "%s:%d" % (block.page.relative_to(REPO), block.line + 1 + offset)
            if line.startswith("$ "):
                problems.append("%s: a `$ ` prompt outside a console block" % at)
            if re.search(r"\bcurl\b", line) and " # " in line:
                comment = line.split(" # ", 1)[1].strip()
                if OUTPUT_COMMENT.match(comment):
                    problems.append("%s: curl with its output in a comment (%r): show it in a "
                                    "```console block, where it is checked" % (at, comment))
    assert not problems, "\n".join(problems)


def test_shown_code_is_the_code_that_runs():
    checked = 0
    problems = []
    for block in all_blocks():
        marker = FILE_MARKER.match(block.marker)
        if not marker:
            continue
        checked += 1
        source = REPO / marker.group(1)
        where = "%s:%d" % (block.page.relative_to(REPO), block.line)
        if not source.is_file():
            problems.append("%s: %s does not exist" % (where, marker.group(1)))
        elif "\n".join(block.lines).strip() not in source.read_text(encoding="utf-8"):
            problems.append("%s: the block is not word for word in %s" % (where, marker.group(1)))
    assert checked >= 2 and not problems, (checked, problems)


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page):
    text = re.sub(r"^\s*```.*?^\s*```\s*$", "", page.read_text(encoding="utf-8"), flags=re.M | re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.*?)\s*$", text, re.M)}


def test_links_between_pages_resolve():
    problems = []
    for page in PAGES:
        text = re.sub(r"^\s*```.*?^\s*```\s*$", "", page.read_text(encoding="utf-8"),
                      flags=re.M | re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target):
                continue  # http:, mailto:
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                problems.append("%s: link to %s: no such file" % (page.name, target))
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                problems.append("%s: link to %s: no such heading" % (page.name, target))
    assert not problems, "\n".join(problems)
