"""The README's and docs/http-api.md's curl examples of the Open Inference Protocol, run as a reader runs them."""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = (ROOT / "README.md", ROOT / "docs" / "http-api.md")


def documented_oip_curls(model: str) -> list[str]:
    """Every documented curl command that calls `model`'s /v2 infer route, as written (its comment lines out)."""
    commands = []
    for document in DOCUMENTS:
        for block in re.findall(r"```bash\n(.*?)```", document.read_text(), re.S):
            text = "\n".join(line for line in block.splitlines() if not line.lstrip().startswith("#"))
            commands += [c.strip() for c in re.split(r"\n(?=curl )", text) if c.startswith("curl")]
    return [command for command in commands if f"/v2/models/{model}/infer" in command]


def run_documented_curl(server, command: str) -> tuple[dict, dict]:
    """(the request the command sends, the JSON answer), the command run by bash against `server` after the
    documented `python -m training token --header-file` wrote the header file in its run directory."""
    if not (server.run_dir / "auth-header").exists():
        token = [sys.executable, "-m", "training", "token", "--header-file", "--run-dir", str(server.run_dir)]
        subprocess.run(token, cwd=ROOT, check=True, capture_output=True)
    words = shlex.split(command)
    request = json.loads(words[words.index("-d") + 1])
    here = command.replace("@.serve/", f"@{server.run_dir}/").replace("http://127.0.0.1:8080", server.inference_url)
    done = subprocess.run(["bash", "-c", here], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return request, json.loads(done.stdout)


def check_documented_curls(server, model: str, minimum: int = 1) -> list[tuple[dict, dict]]:
    """Each documented call of `model` answers what the same body answers from this suite's own client, with the
    outputs it names (or the predictions alone)."""
    commands = documented_oip_curls(model)
    assert len(commands) >= minimum, commands
    answered = []
    for command in commands:
        request, answer = run_documented_curl(server, command)
        asked = [output["name"] for output in request.get("outputs", [])] or None
        assert answer["model_name"] == model and answer["id"] == request.get("id", ""), answer
        if asked:
            assert [output["name"] for output in answer["outputs"]] == asked, answer
        url = f"{server.inference_url}/v2/models/{model}/infer"
        status, direct, _ = server.request("POST", url, request, server.token())
        assert status == 200 and direct == answer, command
        answered.append((request, answer))
    return answered
