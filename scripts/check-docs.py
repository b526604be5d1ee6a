#!/usr/bin/env python3
"""Checks the book and the repository's other Markdown, without a network:

  links     every relative link names a file that exists, and every #anchor a heading in it
            (GitHub's and mdBook's ids: lowercase, spaces to '-', other punctuation dropped);
            so does every link to this repository's files on GitHub (REPOSITORY), which the
            book uses for files outside docs/src, since mdBook copies only those; and no
            page of the book links outside docs/src by a relative path;
  commands  every `rds-rotator <command> --flag` in a code block names a command and flags that
            the binary's `--help` lists (HELP_DIR holds `<command>.txt`, from scripts/docs).

  scripts/check-docs.py ROOT HELP_DIR
Prints each problem as FILE:LINE: what; exits 1 if there is any.
"""
import os
import re
import sys

ROOT, HELP_DIR = sys.argv[1], sys.argv[2]
SKIP_DIRS = {".git", "target", "node_modules", ".venv", "book", ".local-stack", "tf-plugins"}
GENERATED = os.path.join("docs", "src", "reference", "cli")
# Where the book links the repository's files outside docs/src (Cargo.toml's `repository`).
REPOSITORY = "https://github.com/rds-proxy-password-rotation/rds-proxy-password-rotation"


def markdown_files():
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.startswith(".")]
        for f in filenames:
            if f.endswith(".md"):
                yield os.path.relpath(os.path.join(dirpath, f), ROOT)


def split_code(text):
    """(is_code, chunk, first line number) pieces of a Markdown text: fenced blocks apart."""
    out, line, buf, code, start = [], 1, [], False, 1
    for raw in text.split("\n"):
        fence = raw.lstrip().startswith("```")
        if fence and not code:
            out.append((False, "\n".join(buf), start))
            buf, code, start = [raw], True, line
        elif fence and code:
            buf.append(raw)
            out.append((True, "\n".join(buf), start))
            buf, code, start = [], False, line + 1
        else:
            buf.append(raw)
        line += 1
    out.append((code, "\n".join(buf), start))
    return out


def slug(heading):
    heading = re.sub(r"<[^>]+>", "", heading).replace("`", "")
    return "".join(
        ch.lower() if (ch.isalnum() or ch in "_-") else "-" if ch.isspace() else ""
        for ch in heading
    )


anchors_cache = {}


def anchors(path):
    if path not in anchors_cache:
        found, seen = set(), {}
        text = open(os.path.join(ROOT, path), encoding="utf-8").read()
        for code, chunk, _ in split_code(text):
            if code:
                continue
            for m in re.finditer(r"^#+\s+(.*?)\s*#*\s*$", chunk, re.M):
                s = slug(m.group(1))
                n = seen.get(s, 0)
                seen[s] = n + 1
                found.add(s if n == 0 else f"{s}-{n}")
            found.update(re.findall(r'<a\s+(?:name|id)="([^"]+)"', chunk))
        anchors_cache[path] = found
    return anchors_cache[path]


LINK = re.compile(r"(?<!!)\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
problems = []
counted = {"links": 0, "commands": 0}


def check_links(path, text):
    for code, chunk, start in split_code(text):
        if code:
            continue
        for m in LINK.finditer(chunk):
            url = m.group(1)
            line = start + chunk[: m.start()].count("\n")
            counted["links"] += 1
            own = re.match(rf"^{re.escape(REPOSITORY)}/(?:blob|tree)/main/([^#]*)(#.*)?$", url)
            if own:
                # The book links the repository's other files on GitHub (mdBook copies only
                # docs/src): checked here as the files they name.
                target, frag = own.group(1), (own.group(2) or "#")[1:]
                resolved = os.path.normpath(target)
                if not os.path.exists(os.path.join(ROOT, resolved)):
                    problems.append(f"{path}:{line}: no such file in the repository: {url}")
                    continue
            elif re.match(r"^[a-zA-Z][a-zA-Z+.-]*:", url):
                continue  # other http(s), mailto: not checked offline
            else:
                target, _, frag = url.partition("#")
            if own:
                pass
            elif target:
                resolved = os.path.normpath(os.path.join(os.path.dirname(path), target))
                if resolved.startswith(".."):
                    problems.append(f"{path}:{line}: link leaves the repository: {url}")
                    continue
                book = os.path.join("docs", "src")
                if path.startswith(book + os.sep) and not resolved.startswith(book + os.sep):
                    problems.append(
                        f"{path}:{line}: the built book has no {resolved}: link it as "
                        f"{REPOSITORY}/blob/main/{resolved}"
                    )
                    continue
                if not os.path.exists(os.path.join(ROOT, resolved)):
                    problems.append(f"{path}:{line}: no such file: {url}")
                    continue
            else:
                resolved = path
            if frag and resolved.endswith(".md") and frag not in anchors(resolved):
                problems.append(f"{path}:{line}: no heading #{frag} in {resolved}")


def helps():
    out = {}
    for f in os.listdir(HELP_DIR):
        if f.endswith(".txt"):
            out[f[: -len(".txt")]] = open(os.path.join(HELP_DIR, f), encoding="utf-8").read()
    return out


HELP = helps()
COMMAND = re.compile(r"^\s*(?:\$\s+)?rds-rotator(?:\s+(--?[A-Za-z][\w-]*(?:[ =]\S+)?))*\s+([a-z][a-z-]*)(?=\s|$)(.*)$")


def check_commands(path, text):
    for code, chunk, start in split_code(text):
        if not code:
            continue
        for i, raw in enumerate(chunk.split("\n")):
            m = COMMAND.match(raw)
            if not m:
                continue
            name, rest = m.group(2), m.group(3)
            line = start + i
            counted["commands"] += 1
            if name not in HELP:
                problems.append(f"{path}:{line}: `rds-rotator {name}` is no command (rds-rotator --help)")
                continue
            rest = rest.split(" # ")[0]
            for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", rest):
                if flag not in ("--help", "--version") and not re.search(
                    rf"(?<![\w-]){re.escape(flag)}(?![\w-])", HELP[name]
                ):
                    problems.append(
                        f"{path}:{line}: `rds-rotator {name}` has no flag {flag} (rds-rotator {name} --help)"
                    )


for path in sorted(markdown_files()):
    text = open(os.path.join(ROOT, path), encoding="utf-8").read()
    check_links(path, text)
    if not path.startswith(GENERATED):
        check_commands(path, text)

for p in problems:
    print(p)
print(
    f"check-docs: {len(problems)} problem(s) in {len(list(markdown_files()))} Markdown files "
    f"({counted['links']} links, {counted['commands']} rds-rotator commands checked)"
)
sys.exit(1 if problems else 0)
