"""Python artifacts built in the tests: a real wheel (zip with a .dist-info) of a tiny package."""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile

WORDCOUNT_INIT = '''"""wordcount: a tiny application for entry-point tests."""
import time

IMPORTED_AT = time.time()  # the moment this context imported it: equal across warm jobs
VERSION = {version}
'''

WORDCOUNT_JOBS = '''import json
import os
import time

from wordcount import IMPORTED_AT, VERSION


def count_words(text):
    words = text.split()
    print(f"counting {len(words)} words")
    counts = {w: words.count(w) for w in sorted(set(words))}
    with open("counts.json", "w") as out:
        json.dump(counts, out)
    return {"words": len(words), "distinct": len(counts)}


def context_info():
    return {"imported_at": IMPORTED_AT, "pid": os.getpid(), "version": VERSION, "uid": os.getuid(),
            "cwd": os.getcwd(), "env": sorted(os.environ)}


def spin():
    print("spinning", flush=True)
    while True:
        time.sleep(0.01)


def crash(code):
    os._exit(code)


def segfault():
    import signal

    os.kill(os.getpid(), signal.SIGSEGV)


def exhaust():
    raise MemoryError


def not_json():
    return {1, 2}


def square(x):
    return x * x


def nap(x):
    time.sleep(2)
    return x


def count_file(document, min_length=1):
    with open(document) as source:
        words = [word for word in source.read().split() if len(word) >= min_length]
    return {"words": len(words)}


def fan_out(n):
    from orchestrator import get_client

    client = get_client()
    return sum(client.gather(client.map(square, range(n))))


def fan_out_slowly(n):
    from orchestrator import get_client

    client = get_client()
    print("fanned out", flush=True)
    return sum(client.gather(client.map(nap, range(n))))
'''


def wheel(name: str, version: str, files: dict[str, str]) -> bytes:
    """A pure-Python wheel of `files` (path -> source), with METADATA, WHEEL and RECORD."""
    dist_info = f"{name}-{version}.dist-info"
    contents = dict(files)
    contents[f"{dist_info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    contents[f"{dist_info}/WHEEL"] = "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = [f"{path},sha256={_digest(text)},{len(text.encode())}" for path, text in contents.items()]
    contents[f"{dist_info}/RECORD"] = "\n".join([*record, f"{dist_info}/RECORD,,"]) + "\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, text in contents.items():
            archive.writestr(path, text)
    return buffer.getvalue()


def wordcount_wheel(version: int = 1) -> bytes:
    return wheel("wordcount", f"{version}.0", {
        "wordcount/__init__.py": WORDCOUNT_INIT.format(version=version),
        "wordcount/jobs.py": WORDCOUNT_JOBS,
    })


def _digest(text: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
