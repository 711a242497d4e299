"""Serve the registered digits model and ask it for predictions, as a client would.

Starts ``danlu serve digits@staging`` on 127.0.0.1, waits until it is ready (at most 60 s),
predicts ten handwritten digits through the Python client and with the equivalent raw HTTP call,
prints the server's drift estimate and a few Prometheus lines, then stops it with SIGTERM (a
graceful shutdown: in-flight requests finish first). Run after ``danlu run examples/digits_cnn.yaml``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from sklearn.datasets import load_digits

from danlu.serve import Client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> int:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    danlu = os.path.join(os.path.dirname(sys.executable), "danlu")
    server = subprocess.Popen([danlu, "serve", "digits@staging", "--port", str(port)])
    try:
        client = Client(url)
        deadline = time.monotonic() + 60
        while not client.ready():
            if server.poll() is not None or time.monotonic() > deadline:
                print("the server did not become ready", file=sys.stderr)
                return 1
            time.sleep(0.2)
        digits = load_digits(as_frame=True)
        rows = digits.data.head(10)
        answer = client.predict("digits", rows)
        print(f"{answer['ref']} predicts {answer['predictions']} (true {list(digits.target[:10])})")

        body = json.dumps({"rows": [rows.iloc[0].to_dict()]}).encode()
        request = urllib.request.Request(  # the same call with curl: see the README
            f"{url}/v1/models/digits/predict",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
            print("raw HTTP:", json.loads(response.read())["predictions"])
        drift = client.drift("digits")
        print(f"drift over {drift['window']} rows:", drift["features"][:2])
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:  # noqa: S310
            lines = response.read().decode().splitlines()
        print("\n".join(line for line in lines if line.startswith("danlu_requests_total")))
        return 0
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    sys.exit(main())
