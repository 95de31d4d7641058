"""Starts the real mock provider and the real gateway for the SDK tests.

The binaries come from TOLLGATE_BIN and TOLLGATE_LOADTEST_BIN (tests/run-all builds them).
Each process listens on a free loopback port and prints the address it chose; keys are made
through the admin API, as an operator makes them.
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "sdk-admin-token-0123456789"
PROVIDER_KEY = "sk-provider-sdk"

ORG = """
[[team]]
name = "research"
org = "acme"

[[project]]
name = "chatbot"
team = "research"

[[allocation]]
name = "open"
project = "chatbot"
cost_center = "cc-1"

[[allocation]]
name = "openai-only"
project = "chatbot"
models = ["openai/*"]

[[allocation]]
name = "ledger"
project = "chatbot"

[[allocation]]
name = "parquet"
project = "chatbot"

[[allocation]]
name = "focus"
project = "chatbot"

[[allocation]]
name = "focus-parquet"
project = "chatbot"

[[allocation]]
name = "tiny"
project = "chatbot"
budget = { limit = "0.000001", period = "day" }

[[allocation]]
name = "busy-openai"
project = "chatbot"
budget = { limit = "0.02", period = "total" }

[[allocation]]
name = "busy-anthropic"
project = "chatbot"
budget = { limit = "0.02", period = "total" }

[[allocation]]
name = "stop-openai"
project = "chatbot"
budget = { limit = "0.02", period = "total" }

[[allocation]]
name = "stop-anthropic"
project = "chatbot"
budget = { limit = "0.02", period = "total" }
"""


def binary(variable):
    path = os.environ.get(variable)
    if not path or not Path(path).is_file():
        pytest.fail(f"{variable} must name a built binary (tests/run-all sets it)")
    return path


def spawn(command, env):
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=None, env=env, text=True)
    found = {}

    def read():
        for line in process.stdout:
            if "listening on http://" in line and "address" not in found:
                found["address"] = line.strip().split("listening on http://", 1)[1]
                ready.set()
        ready.set()

    ready = threading.Event()
    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(60) or "address" not in found:
        process.kill()
        pytest.fail(f"{command[0]} did not start")
    return process, found["address"]


class Stack:
    def __init__(self, directory):
        self.directory = Path(directory)
        env = dict(os.environ, MOCK_PROVIDER_KEY=PROVIDER_KEY)
        self.mock, mock_address = spawn([binary("TOLLGATE_LOADTEST_BIN"), "mock", "--listen", "127.0.0.1:0"], env)
        shutil.copy(ROOT / "gateway/config/rates.example.toml", self.directory / "rates.toml")
        (self.directory / "tollgate.toml").write_text(f"""rate_card = "rates.toml"

[server]
listen = "127.0.0.1:0"

[admission]
# Short, so a busy budget's 429 comes quickly.
wait_ms_max = 300

[[provider]]
name = "openai"
kind = "openai"
base_url = "http://{mock_address}/v1"
api_key_env = "SDK_PROVIDER_KEY"

[[provider]]
name = "anthropic"
kind = "anthropic"
base_url = "http://{mock_address}"
api_key_env = "SDK_PROVIDER_KEY"

[[provider]]
name = "bedrock"
kind = "bedrock"
region = "us-east-1"
base_url = "http://{mock_address}"
{ORG}""")
        # The test-only Bedrock model, appended to the version in force (the card's last).
        with open(self.directory / "rates.toml", "a") as card:
            card.write('\n[[version.model]]\nname = "bedrock/anthropic.claude-3-haiku-20240307-v1:0"\n'
                       'input_per_mtok = "0.25"\noutput_per_mtok = "1.25"\n')
        env = dict(os.environ, SDK_PROVIDER_KEY=PROVIDER_KEY, TOLLGATE_ADMIN_TOKEN=ADMIN_TOKEN,
                   AWS_ACCESS_KEY_ID="AKIDEXAMPLE", AWS_SECRET_ACCESS_KEY="sdk-test-secret")
        env.pop("AWS_SESSION_TOKEN", None)
        self.gateway, address = spawn(
            [binary("TOLLGATE_BIN"), "serve", "--config", str(self.directory / "tollgate.toml")], env
        )
        self.url = f"http://{address}"

    def admin(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url + path, data=data, method=method,
            headers={"authorization": f"Bearer {ADMIN_TOKEN}", "content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read())

    def key(self, allocation, **extra):
        return self.admin("POST", "/admin/v1/keys", {"allocation": allocation, "user": "sdk", **extra})["key"]

    def hold_budget(self, allocation, seconds):
        """Starts a slow stream on `allocation` that holds its whole room for about `seconds`;
        returns the thread (join it to wait for the stream's end)."""
        key = self.key(allocation)
        body = json.dumps({
            "model": "openai/gpt-4o", "max_tokens": 4096, "stream": True,
            "messages": [{"role": "user", "content": "hold"}],
            "mock": {"answer_tokens": 10, "token_ms": int(seconds * 100)},
        }).encode()

        def stream():
            request = urllib.request.Request(
                self.url + "/v1/chat/completions", data=body, method="POST",
                headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=60) as answer:
                answer.read()

        thread = threading.Thread(target=stream, daemon=True)
        thread.start()
        return thread

    def parquet_dir(self):
        return self.directory / "data" / "usage"

    def spent_nanos(self, allocation):
        allocations = self.admin("GET", "/admin/v1/allocations")["allocations"]
        return next(a for a in allocations if a["name"] == allocation)["budget"]["spent_nanos"]

    def flush(self):
        """Waits until every event so far is written (the admin API's flush)."""
        assert self.admin("POST", "/admin/v1/events/flush") == {"flushed": True}

    def events(self):
        """Every usage event in the gateway's durable log, read with `tollgate events dump`."""
        dump = subprocess.run(
            [binary("TOLLGATE_BIN"), "events", "dump", "--dir", str(self.directory / "events" / "log")],
            check=True, capture_output=True, text=True,
        )
        return [json.loads(line) for line in dump.stdout.splitlines()]

    def stop(self):
        if self.gateway.poll() is None:
            self.gateway.send_signal(signal.SIGTERM)
            assert self.gateway.wait(60) == 0, "gateway did not exit cleanly"
        self.mock.kill()
        self.mock.wait(10)


@pytest.fixture(scope="session")
def stack():
    directory = tempfile.mkdtemp(prefix="tollgate-sdk-")
    stack = Stack(directory)
    try:
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(directory, ignore_errors=True)

