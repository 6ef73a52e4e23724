"""`r1jax launch`: N JAX processes on one machine running the same command, as the hosts of a pod do.

    r1jax launch --processes 2 --cpu_devices 4 -- train --config configs/r1_zero.py:tiny
    r1jax launch --processes 8 --gpus_per_process 1 -- rl --config ...     # one process per GPU

Each process gets the coordinator's address, the process count and its own id in the environment
(R1JAX_COORDINATOR_ADDRESS, R1JAX_NUM_PROCESSES, R1JAX_PROCESS_ID); `r1jax.main` hands them to
`jax.distributed.initialize` (CPU collectives over gloo), so the command runs exactly as on a pod's
workers: global arrays over every process's devices, a reward server per process, one workdir.

One process dying ends the job: the launcher watches its children, and when one exits with an error
or is killed, it stops the others (SIGTERM, then SIGKILL after `grace_s`) and exits with that status.
A job stopped that way resumes from its last checkpoint when the same command is started again.
Without the launcher (a pod), jax.distributed's heartbeat ends the survivors (R1JAX_HEARTBEAT_S).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

ENV_COORDINATOR = "R1JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "R1JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "R1JAX_PROCESS_ID"
ENV_HEARTBEAT = "R1JAX_HEARTBEAT_S"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(base: dict, process_id: int, processes: int, address: str, cpu_devices: int,
              gpus_per_process: int) -> dict:
    env = dict(base, **{ENV_COORDINATOR: address, ENV_NUM_PROCESSES: str(processes),
                        ENV_PROCESS_ID: str(process_id)})
    if gpus_per_process:
        first = process_id * gpus_per_process
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(first + i) for i in range(gpus_per_process))
    elif cpu_devices:
        env["JAX_PLATFORMS"] = "cpu"
        flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
        env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={cpu_devices}"])
    return env


def launch(command: list[str], processes: int, cpu_devices: int = 0, gpus_per_process: int = 0,
           port: int = 0, grace_s: float = 10.0) -> int:
    """Runs `r1jax COMMAND...` in `processes` processes; returns the job's exit status (0 when every
    process succeeded, else the first failure's status; a process killed by signal S gives 128 + S)."""
    if processes < 1:
        raise ValueError(f"--processes must be >= 1, got {processes}")
    address = f"localhost:{port or free_port()}"
    children = [
        subprocess.Popen([sys.executable, "-m", "r1jax.main", *command],
                         env=child_env(os.environ, i, processes, address, cpu_devices, gpus_per_process))
        for i in range(processes)
    ]

    def stop_all(sig=signal.SIGTERM):
        for c in children:
            if c.poll() is None:
                c.send_signal(sig)
        deadline = time.time() + grace_s
        while time.time() < deadline and any(c.poll() is None for c in children):
            time.sleep(0.1)
        for c in children:
            if c.poll() is None:
                c.kill()
                c.wait()

    previous = {s: signal.signal(s, lambda signum, frame: (stop_all(), sys.exit(128 + signum)))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            codes = [c.poll() for c in children]
            failed = [(i, code) for i, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                i, code = failed[0]
                status = 128 - code if code < 0 else code
                print(f"r1jax launch: process {i} exited with status {status}; stopping the other "
                      f"{sum(c is None for c in codes)} process(es)", file=sys.stderr, flush=True)
                stop_all()
                return status
            if all(code == 0 for code in codes):
                return 0
            time.sleep(0.2)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="r1jax launch", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--processes", "-n", type=int, required=True, help="JAX processes to start")
    ap.add_argument("--cpu_devices", type=int, default=0,
                    help="simulated CPU devices per process (JAX_PLATFORMS=cpu); 0 = the machine's accelerators")
    ap.add_argument("--gpus_per_process", type=int, default=0, help="GPUs per process (CUDA_VISIBLE_DEVICES)")
    ap.add_argument("--port", type=int, default=0, help="coordinator port (0 = a free one)")
    ap.add_argument("--grace_s", type=float, default=10.0, help="SIGTERM to SIGKILL when stopping the job")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]: an r1jax command")
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("give the r1jax command to run, e.g. `r1jax launch -n 2 --cpu_devices 4 -- train`")
    sys.exit(launch(command, args.processes, args.cpu_devices, args.gpus_per_process, args.port, args.grace_s))
