"""Orbax CheckpointManager holding the train state, the grain iterator state and the config JSON.

Saves are asynchronous (device-to-host copies happen before `save` returns, so the state can be donated
to the next step right away). Orbax writes each step into a `<step>.orbax-checkpoint-tmp-*` directory
and renames it when complete, so a kill at any moment leaves either a finished step or a temporary
directory that `cleanup_tmp_directories` removes on the next start; old steps beyond `keep` are deleted
only after the new one is finalised, so a complete checkpoint always exists. Restores take an abstract
target with the new run's shardings, so a checkpoint restores onto any mesh or rule preset.

A finished step can still be unreadable (a truncated file, a lost object on a bucket): `restore_latest`
then falls back to the previous step with a warning naming the bad one, and moves the bad step aside to
`<directory>.rejected/` so that training can save that step number again. It never starts fresh while
checkpoints exist.
"""

import os
import shutil
import time

import grain
import jax
import orbax.checkpoint as ocp

from querit_jax.config_lib import ConfigError
from querit_jax.models.api import CheckpointError
from querit_jax.training import preemption


class Checkpointer:
    def __init__(self, directory: str, keep: int, async_save: bool = True):
        self.directory = os.path.abspath(directory)
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
        self.manager.restore(
            step, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(data_iter))
        )
        return state

    def restore_config(self, step: int) -> dict:
        """The config JSON saved with `step`."""
        return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))[
            "config"
        ]

    def restore_latest(self, abstract_state, data_iter, check_config, warn):
        """(step, state) of the newest step that restores, or (0, None) when there is no checkpoint.

        `check_config(saved_config_dict)` raises ConfigError for a run that must not be resumed (that
        error is never a reason to fall back). Unreadable steps are reported with `warn`, moved aside,
        and the next older one is tried; if none restores, CheckpointError lists why.
        """
        failures = []
        for step in reversed(self.all_steps()):
            try:
                check_config(self.restore_config(step))
                state = self.restore(step, abstract_state, data_iter)
            except ConfigError:
                raise
            except Exception as err:
                reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}"
                failures.append(f"step {step} ({reason})")
                warn(
                    f"WARNING: checkpoint step {step} in {self.directory} cannot be restored "
                    f"({reason}); moving it to {self.directory}.rejected and trying an older step."
                )
                self._reject(step)
                continue
            if failures:
                warn(f"Fell back to checkpoint step {step} (newer ones were unreadable).")
            return step, state
        if failures:
            raise CheckpointError(
                f"{self.directory}: no checkpoint restores ({'; '.join(failures)}); they were moved "
                f"to {self.directory}.rejected. Not starting from scratch silently: inspect them, or "
                "use a new --workdir to train from the start."
            )
        return 0, None

    def _reject(self, step: int) -> None:
        """Moves a bad step out of the manager's directory (process 0), then re-lists the steps."""
        if jax.process_index() == 0:
            target = os.path.join(self.directory + ".rejected", f"{step}.{int(time.time())}")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.move(os.path.join(self.directory, str(step)), target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"querit_reject_checkpoint_{step}")
        self.manager.reload()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(tree, shardings):
    """ShapeDtypeStructs with shardings, the restore target for `tree`."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )
