"""Package the registered digits model for deployment, then serve the package without the store.

Runs ``danlu package digits@staging --out .danlu/build/digits --k8s --force`` (a container build
context: Dockerfile, locked packages, the version's files, Kubernetes manifests and monitoring
files), lists what it wrote, then starts ``danlu serve --package .danlu/build/digits/model`` on
127.0.0.1 with an empty ``DANLU_HOME`` (no store: the package is all it reads), predicts ten
digits and stops it. Run after ``danlu run examples/digits_cnn.yaml``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sklearn.datasets import load_digits

from danlu.serve import Client

OUT = Path(os.environ.get("DANLU_HOME", ".danlu")) / "build" / "digits"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> int:
    danlu = os.path.join(os.path.dirname(sys.executable), "danlu")
    subprocess.run(
        [danlu, "package", "digits@staging", "--out", str(OUT), "--k8s", "--force"], check=True
    )
    for folder in ("", "model", "model/files", "k8s", "monitoring"):
        names = sorted(p.name for p in (OUT / folder).iterdir() if p.is_file())
        print(f"{folder or '.'}/: {', '.join(names)}")
    with tempfile.TemporaryDirectory() as empty:
        env = {**os.environ, "DANLU_HOME": empty}
        env.pop("DANLU_DB_URL", None)
        port = free_port()
        server = subprocess.Popen(
            [danlu, "serve", "--package", str(OUT / "model"), "--port", str(port)], env=env
        )
        try:
            client = Client(f"http://127.0.0.1:{port}")
            deadline = time.monotonic() + 60
            while not client.ready():
                if server.poll() is not None or time.monotonic() > deadline:
                    print("the packaged server did not become ready", file=sys.stderr)
                    return 1
                time.sleep(0.2)
            digits = load_digits(as_frame=True)
            answer = client.predict("digits", digits.data.head(10))
            print(
                f"packaged {answer['ref']} predicts {answer['predictions']} "
                f"(true {list(digits.target[:10])})"
            )
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    print(f"build the image: docker build -t danlu-digits {OUT}  (docs/packaging.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
