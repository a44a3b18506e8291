"""Generate the frozen built-in probe corpus ``python-docstrings`` (run once).

The corpus is the docstrings (module, class, function and method) of a fixed list
of pure-Python standard-library modules, cleaned with :func:`inspect.cleandoc`,
with short ones (< 80 characters) dropped and exact duplicates removed, in a
deterministic order: sorted module names, then each module's docstring, then its
public members in sorted name order (a class is followed by its own members).

The output is shipped inside the package and never regenerated at run time
(docs/method.md, "Data points"): docstrings differ between Python versions, so a corpus
rebuilt on another machine would make reports incomparable.  After regenerating,
record the printed sha256 in ``audit/corpus.py`` (``BUILTIN_CORPORA``).

The shipped ``audit/corpora/python-docstrings.jsonl`` was produced by
CPython 3.11.7 (Linux) with::

    python scripts/make_docstring_corpus.py

Usage: ``python scripts/make_docstring_corpus.py [OUTPUT]`` (default: the shipped
file's path).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import sys
import warnings
from pathlib import Path

# Well-known pure-Python modules without side effects on import.  Kept sorted; the
# script sorts again, so the order of this list does not matter.
MODULES = [
    "abc", "argparse", "ast", "base64", "bisect", "calendar", "cmd", "codecs",
    "collections", "colorsys", "configparser", "contextlib", "copy", "csv",
    "dataclasses", "datetime", "decimal", "difflib", "dis", "email.message",
    "email.utils", "enum", "filecmp", "fileinput", "fnmatch", "fractions",
    "ftplib", "functools", "getopt", "gettext", "glob", "gzip", "heapq", "hmac",
    "html", "html.parser", "http.client", "http.cookiejar", "http.server",
    "imaplib", "inspect", "ipaddress", "json", "json.decoder", "json.encoder",
    "logging", "logging.handlers", "mailbox", "mimetypes", "netrc", "numbers",
    "operator", "optparse", "os", "pathlib", "pdb", "pickle", "pickletools",
    "pkgutil", "platform", "plistlib", "poplib", "pprint", "queue", "quopri",
    "random", "re", "reprlib", "sched", "secrets", "selectors", "shelve",
    "shlex", "shutil", "smtplib", "socket", "socketserver", "statistics",
    "string", "subprocess", "tarfile", "tempfile", "textwrap", "threading",
    "timeit", "tokenize", "trace", "traceback", "types", "typing",
    "unittest.case", "unittest.mock", "urllib.parse", "urllib.request", "uuid",
    "warnings", "wave", "weakref", "xml.dom.minidom", "xml.etree.ElementTree",
    "zipfile",
]

MIN_CHARS = 80            # shorter docstrings carry too little running text
MAX_CHARS = 560_000       # stop adding documents once the corpus reaches this size

DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "audit" / "corpora" / "python-docstrings.jsonl"


def _own_doc(obj: object) -> str | None:
    """The object's own docstring (not one inherited from a base class)."""
    if inspect.isclass(obj):
        doc = obj.__dict__.get("__doc__")
    else:
        doc = getattr(obj, "__doc__", None)
    return doc if isinstance(doc, str) else None


def _is_documentable(obj: object) -> bool:
    return (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismethod(obj)
            or isinstance(obj, (property, staticmethod, classmethod)))


def _unwrap(obj: object) -> object:
    if isinstance(obj, (staticmethod, classmethod)):
        return obj.__func__
    return obj


def module_docstrings(modname: str) -> list[str]:
    """Raw docstrings of one module in deterministic order ([] when it fails to import)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = importlib.import_module(modname)
    except Exception:  # noqa: BLE001 - a missing optional module is skipped
        return []
    docs: list[str] = []
    if isinstance(module.__doc__, str):
        docs.append(module.__doc__)
    for name in sorted(vars(module)):
        if name.startswith("_"):
            continue
        obj = vars(module)[name]
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if getattr(obj, "__module__", None) != module.__name__:
            continue  # re-exported from elsewhere
        doc = _own_doc(obj)
        if doc:
            docs.append(doc)
        if inspect.isclass(obj):
            for member_name in sorted(obj.__dict__):
                if member_name.startswith("_") and member_name != "__init__":
                    continue
                member = obj.__dict__[member_name]
                if not _is_documentable(member):
                    continue
                doc = _own_doc(_unwrap(member)) if not isinstance(member, property) else member.__doc__
                if isinstance(doc, str) and doc:
                    docs.append(doc)
    return docs


def build_documents(modules: list[str] = MODULES) -> list[str]:
    """Cleaned, deduplicated documents, capped at MAX_CHARS characters in total."""
    seen: set[str] = set()
    documents: list[str] = []
    total = 0
    for modname in sorted(set(modules)):
        for raw in module_docstrings(modname):
            text = inspect.cleandoc(raw).strip()
            if len(text) < MIN_CHARS or text in seen:
                continue
            seen.add(text)
            documents.append(text)
            total += len(text)
            if total >= MAX_CHARS:
                return documents
    return documents


def main(argv: list[str]) -> int:
    output = Path(argv[1]) if len(argv) > 1 else DEFAULT_OUTPUT
    documents = build_documents()
    lines = [json.dumps({"text": doc}, ensure_ascii=False, sort_keys=True) for doc in documents]
    data = ("\n".join(lines) + "\n").encode("utf-8")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(data)
    text = "\n\n".join(documents)
    print(f"python {sys.version.split()[0]}")
    print(f"wrote {output}")
    print(f"documents {len(documents)}")
    print(f"characters {len(text)}")
    print(f"bytes {len(data)}")
    print(f"sha256 {hashlib.sha256(data).hexdigest()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
