"""Orbax CheckpointManager holding the train state, the grain iterator state and the config JSON.

Saves are asynchronous (device-to-host copies happen before `save` returns, so the state can be
donated to the next step right away). Orbax writes each step into a `<step>.orbax-checkpoint-tmp-*`
directory and renames it when complete, so a kill at any moment leaves either a finished step or a
temporary directory that `cleanup_tmp_directories` removes on the next start; old steps beyond
`keep` are deleted only after the new one is finalised, so a complete checkpoint always exists.
Restores take an abstract target with the new run's shardings, so a checkpoint restores onto any
mesh or rule preset.

A finished step can still be unreadable (a truncated file, a lost object on a bucket):
`restore_latest` then falls back to the previous step with a warning naming the bad one and, once
that older step has restored, moves the bad step aside to `<directory>.rejected/` so that training
can save that step number again. It never starts fresh while checkpoints exist (or were rejected),
and a state of another structure (another optimiser or model setting) is a ConfigError, not a reason
to fall back.

The directory may be local or a bucket (Orbax and grain write gs:// themselves; the rest goes
through `storage`). A run may resume on another number of processes: the arrays are resharded by
Orbax, and the input position comes from the grain state any process saved. That is valid because
element k of every process's training pipeline is its share of global batch k (data/pipeline.py):
all processes hold the same position.
"""

import json
import re
import time

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from querit_jax import storage
from querit_jax.errors import CheckpointError, ConfigError
from querit_jax.models.checkpoint import use_array_handler
from querit_jax.training import preemption


class Checkpointer:
    def __init__(self, directory: str, keep: int, async_save: bool = True):
        self.directory = storage.absolute(directory)
        use_array_handler()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
            create=True,
        )
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_names=("state", "data_iter", "config"),
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data_iter": grain.checkpoint.CheckpointHandler(),
                "config": ocp.JsonCheckpointHandler(),
            },
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state, data_iter, config: dict) -> None:
        """Starts an async save of `step` (a previous one still in flight is waited for first)."""
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data_iter=grain.checkpoint.CheckpointSave(data_iter),
                config=ocp.args.JsonSave(config),
            ),
            force=True,
        )
        preemption.inject_fault("save", step)

    def wait(self) -> None:
        """Blocks until every save in flight is finalised (and re-raises its error if it failed)."""
        self.manager.wait_until_finished()

    def restore(self, step: int, abstract_state, data_iter):
        """Restores the state onto the shardings of `abstract_state`, then the iterator in place.

        The state comes first and alone, so a failed restore leaves `data_iter` untouched.
        """
        state = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        )["state"]
        self._restore_iterator(step, data_iter)
        return state

    def _restore_iterator(self, step: int, data_iter) -> None:
        """The iterator position of `step`: this process's saved state, or, when the checkpoint was
        written by another number of processes, the state they all saved (one position: element k
        is a share of global batch k, so the same state is right for any process count)."""
        item = storage.join(self.directory, str(step), "data_iter")
        own = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        if storage.exists(storage.join(item, own)):
            self.manager.restore(
                step,
                args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(data_iter)),
            )
            return
        saved = storage.glob(item, "process_*-of-*.json")
        states = {json.dumps(json.loads(storage.read_text(f)), sort_keys=True) for f in saved}
        if len(states) != 1:
            raise CheckpointError(
                f"{item}: {'no' if not states else 'differing'} input iterator states "
                f"({[storage.basename(f) for f in saved]}); cannot place this run's input."
            )
        data_iter.set_state(json.loads(states.pop()))
        if hasattr(data_iter, "start_prefetch"):
            data_iter.start_prefetch()

    def restore_config(self, step: int) -> dict:
        """The config JSON saved with `step`."""
        return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))[
            "config"
        ]

    def restore_latest(self, abstract_state, data_iter, check_config, warn):
        """(step, state) of the newest step that restores, or (0, None) when there is no checkpoint.

        `check_config(saved_config_dict)` raises ConfigError for a run that must not be resumed
        (that error is never a reason to fall back), and so does a state whose structure or shapes
        differ from this run's (another optimiser or model config: falling back would not help).
        Unreadable steps are reported with `warn` and the next older one is tried; only once an
        older step has restored are the bad ones moved aside (so a failure that is not the
        checkpoint's fault never costs the run its checkpoints). If none restores, CheckpointError
        lists why and nothing moves.
        """
        if not self.all_steps() and _nonempty(self.directory + ".rejected"):
            raise CheckpointError(
                f"{self.directory} has no checkpoint left but {self.directory}.rejected holds "
                "steps "
                "that could not be restored earlier. Not starting from scratch silently: inspect "
                "them, or remove that directory (or use a new --workdir) to train from the start."
            )
        failures, bad_steps = [], []
        for step in reversed(self.all_steps()):
            try:
                check_config(self.restore_config(step))
                self._check_structure(step, abstract_state)
                state = self.restore(step, abstract_state, data_iter)
                ok, reason = True, ""
            except ConfigError:
                raise
            except Exception as err:
                ok, reason = (
                    False,
                    f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}",
                )
            if not _all_processes(ok, step):
                reason = reason or "another process could not restore it"
                failures.append(f"step {step} ({reason})")
                bad_steps.append(step)
                warn(
                    f"WARNING: checkpoint step {step} in {self.directory} cannot be restored "
                    f"({reason}); trying an older step."
                )
                continue
            for bad in bad_steps:
                self._reject(bad)
            if failures:
                warn(
                    f"Fell back to checkpoint step {step}; the unreadable newer steps were moved "
                    "to "
                    f"{self.directory}.rejected."
                )
            return step, state
        if failures:
            raise CheckpointError(
                f"{self.directory}: no checkpoint restores ({'; '.join(failures)}). Not starting "
                "from "
                "scratch silently: inspect them, or use a new --workdir to train from the start."
            )
        return 0, None

    def _check_structure(self, step: int, abstract_state) -> None:
        """ConfigError when the saved state's tree or shapes differ from this run's state."""
        try:
            saved = self.manager.item_metadata(step)["state"]
        except Exception:  # no readable metadata: the restore itself will say what is wrong
            return
        if saved is None:
            return
        have = {_key(p): getattr(x, "shape", None) for p, x in _leaves(saved)}
        want = {_key(p): x.shape for p, x in _leaves(abstract_state)}
        missing = sorted(set(want) - set(have))
        extra = sorted(set(have) - set(want))
        shapes = [
            k for k in want if k in have and have[k] is not None and tuple(have[k]) != want[k]
        ]
        if missing or extra or shapes:
            detail = (
                f"missing {missing[:3]}"
                if missing
                else f"unexpected {extra[:3]}"
                if extra
                else f"{shapes[0]} has shape {tuple(have[shapes[0]])} there, {want[shapes[0]]} here"
            )
            raise ConfigError(
                f"checkpoint step {step} in {self.directory} holds a train state of another "
                "structure "
                f"({detail}): it was written with another optimiser or model setting (e.g. "
                "optim.clip_norm, optim.freeze) or by an older version. Use the original config, "
                "or a "
                "new --workdir."
            )

    def _reject(self, step: int) -> None:
        """Moves a bad step out of the manager's directory (process 0), then re-lists the steps."""
        if jax.process_index() == 0:
            target = storage.join(self.directory + ".rejected", f"{step}.{int(time.time())}")
            storage.move(storage.join(self.directory, str(step)), target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"querit_reject_checkpoint_{step}")
        self.manager.reload()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _leaves(tree):
    return jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]


def _key(path) -> str:
    """A leaf's path as 'a/b/0/c', whatever containers (dicts, attributes, sequences) hold it."""
    return "/".join(re.findall(r"[A-Za-z0-9_]+", jax.tree_util.keystr(path)))


def _nonempty(directory: str) -> bool:
    return bool(storage.listdir(directory))


def _all_processes(ok: bool, step: int) -> bool:
    """Whether every process restored `step` (all must agree before falling back or going on)."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


def abstract_like(tree, shardings):
    """ShapeDtypeStructs with shardings, the restore target for `tree`."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )
