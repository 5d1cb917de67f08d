#!/usr/bin/env python3
"""A demo download on a local stack: start Cartd, archive sample files, download an event.

Run it through ``python3 dev.py demo``, which installs everything first.
It starts the local Cartd stack (see tests/support/cartd_stack.py), archives a few
sample files, writes a Notifications CloudEvent for them to
``demo-download/event.json``, downloads it with the ``pacifica-downloader``
command line (progress shows on a terminal), lists the verified files, runs
the download again to show that nothing is fetched twice, and stops the stack.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.cartd_stack import CartdStack, default_stack_venv_path, ensure_stack_venv  # noqa: E402

DEMO_DIR = ROOT / "demo-download"
SAMPLES = {
    "raw/run-01.h5": 24 * 1024 * 1024,
    "raw/run-02.h5": 16 * 1024 * 1024,
    "raw/calibration.dat": 3 * 1024 * 1024,
    "metadata/instrument.json": 4096,
    "README.txt": 900,
    "\u8cc7\u6599/\u30e1\u30e2.txt": 300,
}


def sample_event(stack: CartdStack) -> dict[str, Any]:
    """Archive the sample files under fresh ids; return the CloudEvent announcing them."""
    rng = random.Random(42)
    records: list[dict[str, Any]] = [
        {"destinationTable": "Transactions._id", "value": 1234},
        {"destinationTable": "Transactions.project", "value": "demo"},
    ]
    for index, (path, size) in enumerate(SAMPLES.items()):
        content = rng.randbytes(size) if hasattr(rng, "randbytes") else os.urandom(size)
        file_id = 9000 + index
        stack.put_file(file_id, content)
        subdir, _, name = path.rpartition("/")
        records.append(
            {
                "destinationTable": "Files",
                "_id": file_id,
                "name": name,
                "subdir": subdir,
                "hashtype": "sha256",
                "hashsum": hashlib.sha256(content).hexdigest(),
                "size": size,
                "mimetype": "application/octet-stream",
            }
        )
    return {
        "cloudEventsVersion": "0.1",
        "eventType": "org.pacifica.metadata.ingest",
        "eventID": "demo-1",
        "source": "/pacifica/metadata/ingest",
        "contentType": "application/json",
        "data": records,
    }


def main() -> int:
    """Run the demo; return the command line's exit status."""
    with tempfile.TemporaryDirectory(prefix="pacifica-demo-") as workdir:
        print("== starting the local Cartd stack (archive interface, Cartd, Celery, Redis, PostgreSQL)")
        with CartdStack(Path(workdir), ensure_stack_venv(default_stack_venv_path())) as stack:
            print(f"   Cartd at {stack.cart_url}")
            print(f"== archiving {len(SAMPLES)} sample files")
            DEMO_DIR.mkdir(exist_ok=True)
            event_file = DEMO_DIR / "event.json"
            event_file.write_text(json.dumps(sample_event(stack), indent=2))
            command = [
                sys.executable,
                "-m",
                "pacifica.downloader",
                "cloudevent",
                str(event_file),
                "-d",
                str(DEMO_DIR),
                "--cart-url",
                stack.cart_url,
            ]
            if not sys.stderr.isatty():
                command.append("-v")  # no progress bar without a terminal: show the steps instead
            print(f"== downloading:  pacifica-downloader cloudevent {event_file} -d {DEMO_DIR}", flush=True)
            status = subprocess.call(command)
            if status:
                return status
            print("== the files, each verified against its sha256:")
            for path in sorted((DEMO_DIR / "data").rglob("*")):
                if path.is_file():
                    print(f"   {path.stat().st_size:>12,d}  {path.relative_to(ROOT)}")
            print("== running it again: files already present are not fetched, no cart is made", flush=True)
            status = subprocess.call(command)
            print("== done; the files are in {}".format(DEMO_DIR / "data"))
            return status


if __name__ == "__main__":
    sys.exit(main())
