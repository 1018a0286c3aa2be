"""Start N CPU processes on 127.0.0.1 that form one JAX job, and stream their logs.

    python launch/local.py --num_processes=2 --devices_per_process=4 -- \\
        -m querit_jax.train --config=configs/general_relevance.py:demo --workdir=/tmp/run

Every process gets QUERIT_COORDINATOR / QUERIT_NUM_PROCESSES / QUERIT_PROCESS_ID (so
`querit_jax.distributed.maybe_initialize` calls `jax.distributed.initialize` with gloo collectives),
XLA_FLAGS=--xla_force_host_platform_device_count=<devices_per_process> (after the caller's other XLA
flags, which are kept) and JAX_PLATFORMS=cpu: the
same code path a TPU pod slice takes, on one machine. Output lines are prefixed with `[i]`. If one
process fails the others are stopped (SIGTERM, then SIGKILL after `--grace_s` seconds: a peer would
otherwise wait for it forever); each process's exit code is printed at the end and the launcher's is
the first non-zero one. `--dry_run` prints the commands and environment without starting anything.
"""

import argparse
import os
import shlex
import socket
import subprocess
import sys
import threading
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def xla_flags(devices_per_process: int) -> str:
    """The caller's XLA_FLAGS with its fake-device count (if any) replaced by ours."""
    kept = [
        flag
        for flag in os.environ.get("XLA_FLAGS", "").split()
        if not flag.startswith("--xla_force_host_platform_device_count")
    ]
    return " ".join([*kept, f"--xla_force_host_platform_device_count={devices_per_process}"])


def process_envs(num_processes: int, devices_per_process: int, port: int) -> list[dict[str, str]]:
    """The extra environment of each process."""
    return [
        {
            "QUERIT_COORDINATOR": f"127.0.0.1:{port}",
            "QUERIT_NUM_PROCESSES": str(num_processes),
            "QUERIT_PROCESS_ID": str(i),
            "XLA_FLAGS": xla_flags(devices_per_process),
            "JAX_PLATFORMS": "cpu",
        }
        for i in range(num_processes)
    ]


def _pump(index: int, stream, out) -> None:
    for line in stream:
        out.write(f"[{index}] {line}")
        out.flush()


def run(
    command: list[str],
    envs: list[dict],
    timeout: float | None,
    cwd: str | None = None,
    grace_s: float = 10.0,
) -> int:
    """Starts one `python <command>` per env, streams output, returns the first failing exit
    code. Processes still running when one fails (or at `timeout`) get SIGTERM, and SIGKILL
    `grace_s` seconds later (time to finish a shard or a checkpoint, as on a preempted VM)."""
    procs = [
        subprocess.Popen(
            [sys.executable, *command],
            env={**os.environ, **env},
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        for env in envs
    ]
    pumps = [
        threading.Thread(target=_pump, args=(i, p.stdout, sys.stdout), daemon=True)
        for i, p in enumerate(procs)
    ]
    for t in pumps:
        t.start()
    deadline = None if timeout is None else time.time() + timeout
    failed = 0
    while any([p.poll() is None for p in procs]):  # a list: every process polled, every time
        codes = [p.returncode for p in procs if p.returncode not in (None, 0)]
        if codes and not failed:
            failed = codes[0]
            print(f"[launch] a process exited with {failed}; stopping the others.", file=sys.stderr)
            _stop(procs, grace_s)
        if deadline is not None and time.time() > deadline:
            print(f"[launch] timed out after {timeout:.0f} s; stopping all.", file=sys.stderr)
            _stop(procs, grace_s)
            failed = failed or 124
        time.sleep(0.2)
    for t in pumps:
        t.join(timeout=5)
    print(f"[launch] exit codes: {' '.join(str(p.returncode) for p in procs)}", file=sys.stderr)
    return failed or next((p.returncode for p in procs if p.returncode), 0)


def _stop(procs, grace_s: float) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.time() + grace_s
    while time.time() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.1)
    for p in procs:
        if p.poll() is None:
            p.kill()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_processes", type=int, default=2)
    parser.add_argument("--devices_per_process", type=int, default=4)
    parser.add_argument("--port", type=int, default=0, help="coordinator port (0: a free one)")
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds before all are stopped"
    )
    parser.add_argument(
        "--grace_s",
        type=float,
        default=10.0,
        help="seconds between SIGTERM and SIGKILL when the others are stopped",
    )
    parser.add_argument(
        "--dry_run", action="store_true", help="print what would run, start nothing"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then python arguments")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the python arguments after --, e.g. -- -m querit_jax.train --config=...")
    if args.num_processes < 1 or args.devices_per_process < 1:
        parser.error("--num_processes and --devices_per_process must be >= 1")
    envs = process_envs(args.num_processes, args.devices_per_process, args.port or free_port())
    for i, env in enumerate(envs):
        shown = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        print(f"[launch] process {i}: {shown} python {shlex.join(command)}", flush=True)
    if args.dry_run:
        return 0
    return run(command, envs, args.timeout, grace_s=args.grace_s)


if __name__ == "__main__":
    sys.exit(main())
