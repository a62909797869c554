"""Server-mode GRPO (src/sedsft/with_vllm_server.sh): the GPU split, free ports per job, training
only once the rollout server answers /health, a dying or silent server stopping the job, and the
flags passed to `trl vllm-serve`, with stand-ins for `trl`, `nvidia-smi` and the training command."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sedsft import config as C
from sedsft.launch import rl_command_prefix
from workflow_helpers import REPO

SCRIPT = REPO / "src" / "sedsft" / "with_vllm_server.sh"

# `trl vllm-serve ...`: records argv, CUDA_VISIBLE_DEVICES and its pid, then per STANDIN_TRL_MODE
# serves /health on --port after a delay (serve), exits with code 7 (die) or never answers (hang)
TRL = """\
import http.server, json, os, sys, time
log = os.environ["STANDIN_LOG"]
argv = sys.argv[1:]
mode = os.environ.get("STANDIN_TRL_MODE", "serve")
with open(os.path.join(log, "trl.json"), "w") as fh:
    json.dump({"argv": argv, "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid()}, fh)
if mode == "die":
    sys.exit(7)
time.sleep(1.5)  # loading the model: not up yet when the wrapper first asks
if mode == "hang":
    time.sleep(600)
port = int(argv[argv.index("--port") + 1])

class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
        if self.path == "/health":
            with open(os.path.join(log, "health_answered"), "a") as fh:
                fh.write(f"{time.time()}\\n")

    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
"""

NVIDIA_SMI = """\
import os
for i in range(int(os.environ.get("STANDIN_GPUS", "4"))):
    print(f"GPU {i}: NVIDIA H100 80GB HBM3 (UUID: GPU-{i:08d})")
"""

# the training command: what it was given, and whether the server answered when it started
TRAIN = """\
import json, os, sys, time, urllib.request
env = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "SEDSFT_VLLM_SERVER_PORT", "SEDSFT_VLLM_GROUP_PORT")}
try:
    urllib.request.urlopen(f"http://127.0.0.1:{env['SEDSFT_VLLM_SERVER_PORT']}/health", timeout=5)
    answered = True
except Exception:
    answered = False
with open(os.path.join(os.environ["STANDIN_LOG"], "train.json"), "w") as fh:
    json.dump({**env, "health_answered_at_start": answered, "argv": sys.argv[1:], "started": time.time()}, fh)
sys.exit(int(os.environ.get("STANDIN_TRAIN_EXIT", "0")))
"""


@pytest.fixture
def standins(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, source in (("trl", TRL), ("nvidia-smi", NVIDIA_SMI)):
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n{source}")
        path.chmod(0o755)
    train = tmp_path / "train.py"
    train.write_text(TRAIN)
    log = tmp_path / "log"
    log.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SEDSFT_VLLM_SERVER_PORT",
                                                            "SEDSFT_VLLM_GROUP_PORT")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", STANDIN_LOG=str(log))
    return {"env": env, "log": log, "train": [sys.executable, str(train), "rl", "--flag"]}


def run_wrapper(standins, args: list[str], timeout: float = 60, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args, "--", *standins["train"]], capture_output=True, text=True,
                          env={**standins["env"], **env}, timeout=timeout)


def record(standins, name: str) -> dict | None:
    path = standins["log"] / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def assert_gone(pid: int) -> None:
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError(f"the server (pid {pid}) outlived the wrapper")


def server_settings(**rl) -> dict:
    settings = C.experiment_settings(C.load_config(REPO / "config.yaml"), "llama3b", REPO)
    settings["rl"].update({"vllm_mode": "server", "num_processes": 2, "vllm_tensor_parallel_size": 2, **rl})
    return settings


def wrapper_args(settings: dict, trust_remote_code: bool) -> list[str]:
    """The wrapper's arguments as the rl rule writes them (sedsft.launch.rl_command_prefix)."""
    prefix = rl_command_prefix(settings["rl"], "/models/sft", trust_remote_code=trust_remote_code)
    wrapper, _, training = prefix.partition(" -- ")
    assert training.startswith(f"torchrun --standalone --nproc_per_node {settings['rl']['num_processes']} ")
    words = shlex.split(wrapper)
    assert words[:2] == ["bash", str(SCRIPT)]
    return words[2:]


def test_the_server_answers_before_training_starts_on_gpus_of_its_own(standins):
    args = wrapper_args(server_settings(), trust_remote_code=True)
    result = run_wrapper(standins, args)
    assert result.returncode == 0, result.stderr
    trl, train = record(standins, "trl"), record(standins, "train")
    # 4 GPUs (nvidia-smi): the first 2 train, the next 2 serve
    assert trl["cuda"] == "2,3" and train["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert train["argv"] == ["rl", "--flag"]
    # the server had answered /health before the training command started
    assert train["health_answered_at_start"]
    first_answer = float((standins["log"] / "health_answered").read_text().split()[0])
    assert first_answer < train["started"]
    # free ports chosen at run time, the same ones for the server and the training command
    port, group_port = int(train["SEDSFT_VLLM_SERVER_PORT"]), int(train["SEDSFT_VLLM_GROUP_PORT"])
    assert port != group_port and 1024 <= port < 65536 and 1024 <= group_port < 65536
    argv = trl["argv"]
    assert argv[0] == "vllm-serve"
    assert flag(argv, "--model") == "/models/sft" and flag(argv, "--tensor_parallel_size") == "2"
    assert flag(argv, "--port") == str(port) and flag(argv, "--host") == "127.0.0.1"
    assert flag(argv, "--max_model_len") == "4096"  # rl.max_prompt_length + rl.max_completion_length
    assert "--trust_remote_code" in argv
    assert_gone(trl["pid"])  # stopped when training ended


def test_each_job_gets_ports_of_its_own(standins):
    args = wrapper_args(server_settings(), trust_remote_code=False)
    ports = []
    for _ in range(2):
        assert run_wrapper(standins, args).returncode == 0
        train = record(standins, "train")
        ports.append((train["SEDSFT_VLLM_SERVER_PORT"], train["SEDSFT_VLLM_GROUP_PORT"]))
    # not TRL's fixed 8000 / 51216 for every experiment
    assert ("8000", "51216") not in ports
    assert "--trust_remote_code" not in record(standins, "trl")["argv"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def test_pinned_ports_and_visible_devices_are_kept(standins):
    port, group_port = free_port(), free_port()
    args = wrapper_args(server_settings(vllm_server_port=port, vllm_group_port=group_port, num_processes=1),
                        trust_remote_code=False)
    result = run_wrapper(standins, args, CUDA_VISIBLE_DEVICES="3,5,6")
    assert result.returncode == 0, result.stderr
    trl, train = record(standins, "trl"), record(standins, "train")
    assert (train["CUDA_VISIBLE_DEVICES"], trl["cuda"]) == ("3", "5,6")
    assert (train["SEDSFT_VLLM_SERVER_PORT"], train["SEDSFT_VLLM_GROUP_PORT"]) == (str(port), str(group_port))
    assert flag(trl["argv"], "--port") == str(port)


def test_a_pinned_port_in_use_stops_the_job_before_the_server_starts(standins):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_wrapper(standins, ["/m", "1", str(port), "1"])
    assert result.returncode != 0
    assert f"server port {port} is not free" in result.stderr
    assert record(standins, "trl") is None and record(standins, "train") is None


def test_a_server_that_dies_stops_the_job_with_its_exit_code(standins):
    result = run_wrapper(standins, ["/m", "1", "auto", "1"], STANDIN_TRL_MODE="die")
    assert result.returncode == 1
    assert "exited with code 7 before answering http://127.0.0.1:" in result.stderr
    assert record(standins, "train") is None  # training never started


def test_a_server_that_never_answers_times_out(standins):
    start = time.monotonic()
    result = run_wrapper(standins, ["/m", "1", "auto", "1"], STANDIN_TRL_MODE="hang", SEDSFT_VLLM_SERVER_TIMEOUT="4")
    assert result.returncode == 1
    assert "did not answer" in result.stderr and "within 4 s" in result.stderr
    assert time.monotonic() - start < 30
    assert record(standins, "train") is None
    assert_gone(record(standins, "trl")["pid"])


def test_a_failing_training_command_fails_the_job_and_stops_the_server(standins):
    result = run_wrapper(standins, ["/m", "1", "auto", "1"], STANDIN_TRAIN_EXIT="5")
    assert result.returncode == 5
    assert record(standins, "train")["health_answered_at_start"]
    assert_gone(record(standins, "trl")["pid"])


def test_too_few_gpus_is_refused(standins):
    result = run_wrapper(standins, ["/m", "2", "auto", "3"], STANDIN_GPUS="4")
    assert result.returncode == 2 and "need 3 training + 2 server GPUs, have 4" in result.stderr
    assert record(standins, "trl") is None


# ----------------------------------------------------------------------------- the rule's command


def test_the_rl_rule_passes_the_server_its_flags():
    settings = C.experiment_settings(C.load_config(REPO / "config.yaml"), "llama3b", REPO)
    rl = {**settings["rl"], "vllm_mode": "server", "num_processes": 4, "vllm_tensor_parallel_size": 2}
    prefix = rl_command_prefix(rl, "results/x/sft/model")
    assert (f"with_vllm_server.sh results/x/sft/model 2 auto 4 --group-port auto --max-model-len 4096 -- "
            in prefix)
    assert prefix.endswith("torchrun --standalone --nproc_per_node 4 -m sedsft.cli")
    pinned = rl_command_prefix({**rl, "vllm_server_port": 8123, "vllm_group_port": 51300}, "m", trust_remote_code=True)
    assert "with_vllm_server.sh m 2 8123 4 --group-port 51300 --max-model-len 4096 --trust-remote-code -- " in pinned


# ----------------------------------------------------------------------------- what training reads


def rl_config(**changes) -> C.RLConfig:
    cfg = C.load_experiment(REPO / "config.yaml", "llama3b").rl
    return C.RLConfig(**{**cfg.__dict__, "vllm_mode": "server", "num_processes": 4, **changes})


def test_training_connects_to_the_ports_the_wrapper_chose(tmp_path, monkeypatch):
    from sedsft.rl import grpo_config

    monkeypatch.setenv("SEDSFT_VLLM_SERVER_PORT", "41234")
    monkeypatch.setenv("SEDSFT_VLLM_GROUP_PORT", "41235")
    args = grpo_config(rl_config(), seed=0, work_dir=str(tmp_path), world_size=4, check_hardware=False)
    assert (args.vllm_server_host, args.vllm_server_port, args.vllm_group_port) == ("127.0.0.1", 41234, 41235)
    assert args.vllm_max_model_length == 1024 + 3072


def test_without_the_wrapper_training_uses_the_configured_or_trls_ports(tmp_path, monkeypatch):
    from sedsft.rl import grpo_config

    monkeypatch.delenv("SEDSFT_VLLM_SERVER_PORT", raising=False)
    monkeypatch.delenv("SEDSFT_VLLM_GROUP_PORT", raising=False)
    args = grpo_config(rl_config(), seed=0, work_dir=str(tmp_path), world_size=4, check_hardware=False)
    assert (args.vllm_server_port, args.vllm_group_port) == (8000, 51216)  # TRL's defaults
    args = grpo_config(rl_config(vllm_server_port=8123, vllm_group_port=51300), seed=0, work_dir=str(tmp_path),
                       world_size=4, check_hardware=False)
    assert (args.vllm_server_port, args.vllm_group_port) == (8123, 51300)


def test_a_bad_port_in_the_environment_is_named(tmp_path, monkeypatch):
    from sedsft.rl import grpo_config

    monkeypatch.setenv("SEDSFT_VLLM_SERVER_PORT", "80x")
    with pytest.raises(C.ConfigError, match="SEDSFT_VLLM_SERVER_PORT='80x' is not a port number"):
        grpo_config(rl_config(), seed=0, work_dir=str(tmp_path), world_size=4, check_hardware=False)


def test_the_schema_documents_the_environment_variables():
    schema = (REPO / C.SCHEMA_RELPATH).read_text()
    script = SCRIPT.read_text()
    for name in ("SEDSFT_VLLM_SERVER_PORT", "SEDSFT_VLLM_GROUP_PORT"):
        assert name in schema and name in script
    assert "SEDSFT_VLLM_SERVER_TIMEOUT" in script
