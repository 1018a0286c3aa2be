"""Cloud TPU VMs for querit_jax: create, install, run, logs, stop, delete (gcloud underneath).

    python launch/tpu.py create  --name=rr --zone=us-east5-a --accelerator=v5p-128 [--spot]
    [--queued]
    python launch/tpu.py install --name=rr --zone=us-east5-a --accelerator=v5p-128
    python launch/tpu.py run     --name=rr --zone=us-east5-a --accelerator=v5p-128 \\
        --config=configs/general_relevance.py --workdir=gs://BUCKET/runs/rr --
        --config.train.num_steps=5000
    python launch/tpu.py logs|stop|delete --name=rr --zone=us-east5-a --accelerator=v5p-128

`--num_slices=N` (N > 1) makes a multislice job: a queued resource with N nodes `<name>-0..N-1`;
`run` then gives every worker MEGASCALE_COORDINATOR_ADDRESS (worker 0 of slice 0),
MEGASCALE_NUM_SLICES, MEGASCALE_SLICE_ID and MEGASCALE_PORT, and the config should set
`sharding.dcn_data=N` (the hybrid mesh). Every command prints the gcloud commands it runs;
`--dry_run` prints them and runs nothing (no gcloud needed). `--name`, `--zone` and `--project`
default to $TPU_NAME, $ZONE and $PROJECT.

`run` starts training in the background on every worker with QUERIT_JAX_INIT=1 (jax.distributed
finds its peers from the TPU metadata) and QUERIT_WATCH_MAINTENANCE=1 (a host-maintenance event
becomes a preemption: checkpoint, exit 0); `stop` sends SIGTERM, which also saves a checkpoint
before exiting. Running `run` again resumes from the newest checkpoint in --workdir. Secrets
(HF_TOKEN, API keys) are never put on command lines: set them on the workers yourself (e.g. in
~/.querit_env, which `run` sources).
"""

import argparse
import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys

REMOTE_DIR = "~/querit_jax"
LOG = "~/querit_train.log"
PID = "~/querit_train.pid"
MEGASCALE_PORT = 8080
# Default TPU VM runtime images per generation.
RUNTIMES = {
    "v4": "tpu-ubuntu2204-base",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v5p": "v2-alpha-tpuv5",
    "v6e": "v2-alpha-tpuv6e",
}
SHIPPED = ("querit_jax", "configs", "launch", "tools", "pyproject.toml", "setup.py", "README.md")


class LaunchError(RuntimeError):
    """Bad arguments or environment; the message says what to set."""


@dataclasses.dataclass(frozen=True)
class Accelerator:
    """An accelerator type and what it means for workers: hosts per slice and chips per host."""

    name: str  # as gcloud spells it, e.g. v5litepod-8, v5p-128
    generation: str
    chips: int
    hosts: int

    @property
    def runtime(self) -> str:
        return RUNTIMES[self.generation]


def parse_accelerator(name: str) -> Accelerator:
    """v5e-N / v5litepod-N and v6e-N count chips (8 on one host, 4 per host beyond); v4-N and v5p-N
    count TensorCores (2 per chip, 4 chips per host)."""
    m = re.fullmatch(r"(v4|v5p|v5e|v5litepod|v6e)-(\d+)", name)
    if not m:
        raise LaunchError(
            f"--accelerator={name!r}: expected e.g. v5e-8 (v5litepod-8), v6e-16, v5p-128 or v4-32."
        )
    gen, n = m.group(1), int(m.group(2))
    gen = "v5litepod" if gen == "v5e" else gen
    if gen in ("v4", "v5p"):
        if n % 8:
            raise LaunchError(f"--accelerator={name}: {gen} sizes are multiples of 8 TensorCores.")
        chips = n // 2
        return Accelerator(f"{gen}-{n}", gen, chips, max(chips // 4, 1))
    hosts = 1 if n <= 8 else n // 4
    return Accelerator(f"{gen}-{n}", gen, n, hosts)


@dataclasses.dataclass
class Job:
    name: str
    zone: str
    project: str
    accelerator: Accelerator
    num_slices: int = 1
    spot: bool = False
    queued: bool = False
    runtime: str = ""

    @property
    def nodes(self) -> list[str]:
        """TPU VM names: one, or `<name>-<i>` per slice of a multislice queued resource."""
        if self.num_slices == 1:
            return [self.name]
        return [f"{self.name}-{i}" for i in range(self.num_slices)]

    @property
    def uses_queued_resource(self) -> bool:
        return self.queued or self.num_slices > 1

    def _where(self) -> list[str]:
        return [f"--zone={self.zone}"] + ([f"--project={self.project}"] if self.project else [])

    def create(self) -> list[list[str]]:
        runtime = self.runtime or self.accelerator.runtime
        common = [f"--accelerator-type={self.accelerator.name}", *self._where()]
        spot = ["--spot"] if self.spot else []
        if not self.uses_queued_resource:
            return [
                [
                    "gcloud",
                    "compute",
                    "tpus",
                    "tpu-vm",
                    "create",
                    self.name,
                    *common,
                    f"--version={runtime}",
                    *spot,
                ]
            ]
        nodes = (
            [f"--node-id={self.name}"]
            if self.num_slices == 1
            else [f"--node-count={self.num_slices}", f"--node-prefix={self.name}"]
        )
        return [
            [
                "gcloud",
                "compute",
                "tpus",
                "queued-resources",
                "create",
                self.name,
                *common,
                f"--runtime-version={runtime}",
                *nodes,
                *spot,
            ]
        ]

    def ssh(self, node: str, command: str, worker: str = "all") -> list[str]:
        return [
            "gcloud",
            "compute",
            "tpus",
            "tpu-vm",
            "ssh",
            node,
            *self._where(),
            f"--worker={worker}",
            f"--command={command}",
        ]

    def install(self, tarball: str) -> list[list[str]]:
        setup = (
            f"mkdir -p {REMOTE_DIR} && tar xzf ~/querit_jax.tgz -C {REMOTE_DIR} && cd {REMOTE_DIR} "
            "&& "
            "python3 -m venv .venv && .venv/bin/pip install -q -U pip && "
            ".venv/bin/pip install -q 'jax[tpu]' -e ."
        )
        out = []
        for node in self.nodes:
            out.append(
                [
                    "gcloud",
                    "compute",
                    "tpus",
                    "tpu-vm",
                    "scp",
                    tarball,
                    f"{node}:~/querit_jax.tgz",
                    *self._where(),
                    "--worker=all",
                ]
            )
            out.append(self.ssh(node, setup))
        return out

    def slice_env(self, slice_id: int, coordinator_ip: str) -> dict[str, str]:
        env = {"QUERIT_JAX_INIT": "1", "QUERIT_WATCH_MAINTENANCE": "1"}
        if self.num_slices > 1:
            env.update(
                MEGASCALE_COORDINATOR_ADDRESS=f"{coordinator_ip}:{MEGASCALE_PORT}",
                MEGASCALE_NUM_SLICES=str(self.num_slices),
                MEGASCALE_SLICE_ID=str(slice_id),
                MEGASCALE_PORT=str(MEGASCALE_PORT),
            )
        return env

    def run(
        self, config: str, workdir: str, extra: list[str], coordinator_ip: str
    ) -> list[list[str]]:
        args = shlex.join(
            ["-m", "querit_jax.train", f"--config={config}", f"--workdir={workdir}", *extra]
        )
        out = []
        for i, node in enumerate(self.nodes):
            env = " ".join(f"{k}={v}" for k, v in self.slice_env(i, coordinator_ip).items())
            command = (
                f"cd {REMOTE_DIR} && {{ [ -f ~/.querit_env ] && . ~/.querit_env; }}; "
                f"nohup env {env} .venv/bin/python {args} > {LOG} 2>&1 & echo $! > {PID}"
            )
            out.append(self.ssh(node, command))
        return out

    def logs(self, worker: str) -> list[list[str]]:
        return [self.ssh(self.nodes[0], f"tail -n 200 -f {LOG}", worker=worker)]

    def stop(self) -> list[list[str]]:
        # SIGTERM: the trainer finishes its step, saves a checkpoint and exits 0.
        return [self.ssh(n, f"[ -f {PID} ] && kill -TERM $(cat {PID}) || true") for n in self.nodes]

    def delete(self) -> list[list[str]]:
        if self.uses_queued_resource:
            return [
                [
                    "gcloud",
                    "compute",
                    "tpus",
                    "queued-resources",
                    "delete",
                    self.name,
                    *self._where(),
                    "--force",
                    "--quiet",
                ]
            ]
        return [
            ["gcloud", "compute", "tpus", "tpu-vm", "delete", self.name, *self._where(), "--quiet"]
        ]

    def coordinator_ip_command(self) -> list[str]:
        return [
            "gcloud",
            "compute",
            "tpus",
            "tpu-vm",
            "describe",
            self.nodes[0],
            *self._where(),
            "--format=value(networkEndpoints[0].ipAddress)",
        ]


# Config fields that name locations, and whether a Hugging Face Hub id is a valid value there.
LOCATION_FIELDS = {
    "model.init_from": True,
    "model.tokenizer": True,
    "data.train": False,
    "data.bm25_tokenizer": True,
    "eval.datasets": False,
    "eval.reference_models": True,
    "mining.target": False,
    "mining.output": False,
    "mining.teacher": True,
    "mining.generator_model": True,
    "mining.first_stage": True,
    "mining.bm25_tokenizer": True,
}
NOT_LOCATIONS = {"", "bm25", "unicode"}  # values of those fields that name no file
_HUB_ID = re.compile(r"^(hf://)?[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


def load_config(config: str, extra: list[str]):
    """The config as the trainer will see it: the file (path[:variant]) with the `--config.*`
    overrides among `extra` applied, through the same ml_collections flags."""
    from absl import flags
    from ml_collections import config_flags

    argv = ["launch", f"--config={config}", *(a for a in extra if a.startswith("--config."))]
    values = flags.FlagValues()
    # The override flags are found in the argv given at definition (as the trainer's in sys.argv).
    holder = config_flags.DEFINE_config_file("config", None, "", flag_values=values, sys_argv=argv)
    try:
        values(argv)
    except Exception as err:  # a missing file, a bad variant or override: say which
        raise LaunchError(f"--config={config}: {err}") from None
    return holder.value


def _entries(value) -> list[str]:
    """The locations in a field: comma lists, DIR[:split] and miracl:ROOT:LANG[:split] entries."""
    from querit_jax.data.sources import split_spec

    items = value.split(",") if isinstance(value, str) else list(value or ())
    out = []
    for item in (str(i).strip() for i in items):
        parts = split_spec(item) or [""]
        item = parts[1] if parts[0] == "miracl" and len(parts) > 1 else parts[0]
        if item not in NOT_LOCATIONS:
            out.append(item)
    return out


def local_locations(cfg) -> list[str]:
    """'field=value' for every location in the config that lives on this machine's disk (neither
    gs:// nor, where a model may be one, a Hugging Face Hub id)."""
    found = []
    for field, hub_ok in LOCATION_FIELDS.items():
        section, name = field.split(".")
        if section not in cfg or cfg[section] is None or name not in cfg[section]:
            continue
        for value in _entries(cfg[section][name]):
            if value.startswith("gs://") or (hub_ok and _HUB_ID.match(value)):
                continue
            found.append(f"{field}={value}")
    return found


def check_locations(job: "Job", config: str, workdir: str, extra: list[str]) -> None:
    """Every worker reads and writes through gs:// (or the Hub): each host has only its own disk,
    which a spot preemption deletes, and nothing but the code is shipped to it."""
    hosts = job.accelerator.hosts * job.num_slices
    where = f"{hosts} hosts" if hosts > 1 else "a TPU VM"
    if not workdir.startswith("gs://"):
        raise LaunchError(
            f"--workdir={workdir} is not a gs:// location; {where} would write checkpoints to a "
            "disk that preemption deletes. Use --workdir=gs://BUCKET/runs/NAME."
        )
    local = local_locations(load_config(config, extra))
    if local:
        raise LaunchError(
            f"{', '.join(local)}: local paths; {where} cannot read them (only the code is "
            "shipped). "
            "Copy them to a bucket (gsutil -m cp -r DIR gs://BUCKET/...) and override, e.g. "
            f"-- --config.{local[0].split('=')[0]}=gs://BUCKET/..., or use a Hub id for models."
        )


def make_tarball(root: str, out: str) -> list[str]:
    return ["tar", "czf", out, "-C", root, "--exclude=__pycache__", *SHIPPED]


def _required(value: str | None, flag: str, env: str) -> str:
    value = value or os.environ.get(env, "")
    if not value:
        raise LaunchError(f"missing --{flag} (or ${env}).")
    return value


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("create", "install", "run", "logs", "stop", "delete"))
    parser.add_argument("--name"), parser.add_argument("--zone"), parser.add_argument("--project")
    parser.add_argument("--accelerator", default=os.environ.get("ACCELERATOR", "v5e-8"))
    parser.add_argument("--num_slices", type=int, default=1)
    parser.add_argument("--runtime", default="", help="TPU VM image (default: per generation)")
    parser.add_argument("--spot", action="store_true", help="preemptible (spot) capacity")
    parser.add_argument("--queued", action="store_true", help="create through a queued resource")
    parser.add_argument("--config", help="run: config path[:variant]")
    parser.add_argument("--workdir", help="run: output dir, e.g. gs://BUCKET/runs/NAME")
    parser.add_argument("--worker", default="0", help="logs: which worker (all, 0, 1, ...)")
    parser.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])
    args.extra = argv[cut + 1 :]  # run: trainer flags after --
    return args


def plan(args: argparse.Namespace) -> tuple[Job, list[list[str]]]:
    """The job and the commands an action runs (a placeholder stands for the coordinator IP)."""
    if args.num_slices < 1:
        raise LaunchError("--num_slices must be >= 1.")
    job = Job(
        _required(args.name, "name", "TPU_NAME"),
        _required(args.zone, "zone", "ZONE"),
        args.project or os.environ.get("PROJECT", ""),
        parse_accelerator(args.accelerator),
        args.num_slices,
        args.spot,
        args.queued,
        args.runtime,
    )
    if args.action == "run":
        config = _required(args.config, "config", "QUERIT_CONFIG")
        workdir = _required(args.workdir, "workdir", "QUERIT_WORKDIR")
        check_locations(job, config, workdir, args.extra)
        commands = job.run(config, workdir, args.extra, "$COORDINATOR_IP")
    elif args.action == "install":
        commands = [
            make_tarball(
                os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "/tmp/querit_jax.tgz"
            )
        ]
        commands += job.install("/tmp/querit_jax.tgz")
    elif args.action == "logs":
        commands = job.logs(args.worker)
    else:
        commands = getattr(job, args.action)()
    return job, commands


def main(argv=None) -> int:
    try:
        args = parse(argv)
        job, commands = plan(args)
        a = job.accelerator
        print(
            f"# {args.action} {job.name}: {job.num_slices} x {a.name} ({a.chips} chips, "
            f"{a.hosts} worker(s) per slice, runtime {job.runtime or a.runtime})"
        )
        needs_ip = any("$COORDINATOR_IP" in " ".join(c) for c in commands) and job.num_slices > 1
        if needs_ip:
            print("COORDINATOR_IP=$(" + shlex.join(job.coordinator_ip_command()) + ")")
        for command in commands:
            print(shlex.join(command))
        if args.dry_run:
            return 0
        if shutil.which("gcloud") is None:
            raise LaunchError(
                "gcloud is not installed or not on PATH (https://cloud.google.com/sdk)."
            )
        ip = ""
        if needs_ip:
            ip = subprocess.run(
                job.coordinator_ip_command(), check=True, capture_output=True, text=True
            )
            ip = ip.stdout.strip()
        for command in commands:
            subprocess.run([c.replace("$COORDINATOR_IP", ip) for c in command], check=True)
        return 0
    except LaunchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as err:
        print(f"error: {shlex.join(err.cmd)} exited with {err.returncode}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
