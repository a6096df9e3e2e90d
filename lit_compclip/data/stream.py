"""A resumable stream loader: epochs of a WebDataset pipeline whose position (epoch, batches) Lightning saves."""

from __future__ import annotations

import logging
from typing import Callable

import torch

from lit_compclip.data.skips import SKIP_NOTES, SKIPS_ONLY, HeldSkips
from lit_compclip.errors import ConfigError

log = logging.getLogger(__name__)

PADDING = "padding"  # a worker's placeholder batch that keeps the loader's worker round-robin aligned on resume


def fast_forward_share(batches: int, worker: int, workers: int) -> tuple[int, bool]:
    """(batches this worker skips, whether it first yields a padding batch) so that `workers` round-robin workers
    continue at global batch `batches`: batch i came from worker i % workers, and the loader asks worker 0 first."""
    ahead = worker < batches % workers  # this worker already made one batch of the unfinished round
    return batches // workers + ahead, ahead


class StreamLoader:
    """A DataLoader over a pipeline, run as numbered epochs of passes; a known length when the epoch is fixed, a
    clear error when nothing comes out.

    Lightning saves `state_dict()` with every checkpoint and calls `load_state_dict()` on resume (it does so for any
    loader with both methods); the next iteration then continues the checkpointed epoch at its next batch.
    `start_pass(epoch, repeat, skip)` seeds the pipeline's stages for a pass (repeat counts passes of a finite
    stream inside one fixed-length epoch) before its workers are started; with `fast_forward` the workers skip
    `skip` batches themselves (cheap), otherwise the loader replays and drops them here (exact, costs decoding)."""

    def __init__(self, loader: torch.utils.data.DataLoader, num_batches: int | None, name: str, spec: str,
                 batch_size: int, start_pass: Callable[[int, int, int], None] | None = None,
                 fast_forward: bool = False):
        self.loader, self.num_batches, self.name, self.spec, self.batch_size = \
            loader, num_batches, name, spec, batch_size
        self.start_pass, self.fast_forward = start_pass, fast_forward
        self.epoch, self.batches, self.complete = -1, 0, False  # the epoch being read and its batches handed out
        self._restored: dict | None = None
        self._held = HeldSkips()  # SKIPS_ONLY counts (and log lines) that no later batch of the epoch could carry
        self._live = None  # the running pass (a generator), until it ends or close() stops it

    def take_held(self) -> dict[str, int]:
        """Skip counts (reason -> count) that came after the epoch's last batch, each handed out (and logged) once."""
        held, notes = self._held.take()
        self._log(notes)
        return held

    @staticmethod
    def _log(notes) -> None:
        for note in notes:
            log.warning("%s", note)

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError(f"{self.name} stream length is unknown (set data.samples_per_epoch to fix it)")
        return self.num_batches

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches": self.batches, "complete": self.complete}

    def load_state_dict(self, state: dict) -> None:
        if not {"epoch", "batches", "complete"} <= set(state):
            raise ValueError(f"{self.name} data: checkpointed loader state {sorted(state)} is not a StreamLoader's "
                             f"(epoch, batches, complete)")
        self._restored = dict(state)

    def _next_start(self) -> tuple[int, int]:
        """(epoch, batches already consumed in it) for the iteration that starts now."""
        state, self._restored = self._restored, None
        if state is None:
            return self.epoch + 1, 0
        done = state["complete"] or (self.num_batches is not None and state["batches"] >= self.num_batches)
        if done or state["batches"] == 0:
            return state["epoch"] + (1 if done else 0), 0
        how = "skipped in the loader workers" if self.fast_forward else \
            "replayed and dropped (data.resampled=false streams cannot skip inside workers)"
        log.info("%s data: resuming epoch %d after its first %d batches, %s", self.name, state["epoch"],
                 state["batches"], how)
        return state["epoch"], state["batches"]

    def __iter__(self):
        self.close()  # an unfinished earlier pass's workers stop before this pass starts its own
        self._live = self._batches()
        return self._live

    def close(self) -> None:
        """Stop the workers of an unfinished pass now. A pass cut short (a step limit, Lightning's limit_val_batches)
        leaves its generator suspended, and Lightning keeps its last iterators in reference cycles: left to a later
        garbage collection, the DataLoader's workers may outlive their queues and cost seconds each to stop."""
        live, self._live = self._live, None
        if live is not None:
            live.close()  # unwinds the pass: its DataLoader iterator is released and stops its workers

    def _batches(self):
        # A generator: nothing below runs before the first batch is asked for, after Lightning restored the state.
        epoch, skip = self._next_start()
        self.epoch, self.batches, self.complete = epoch, skip, False
        self._held.clear()  # an unfinished iteration's: its batches were never consumed
        # Lightning prefetches one batch ahead of training when the length is unknown, so a batch counts as consumed
        # only once the next one is asked for; with a length it fetches each batch when it trains on it. Its skips
        # are logged then too: the log names what the record counts.
        late = self.num_batches is None
        for batch in self._epoch(epoch, skip):
            notes = batch.pop(SKIP_NOTES, [])
            if not late:
                self.batches += 1
                self._log(notes)
            yield batch
            if late:
                self.batches += 1
                self._log(notes)
        self.complete = True

    def _epoch(self, epoch: int, skip: int):
        drop = 0 if self.fast_forward else skip
        position = skip - drop  # batches of this epoch the workers have already moved past
        repeat = 0
        while True:
            if self.start_pass is not None:
                self.start_pass(epoch, repeat, skip if self.fast_forward and repeat == 0 else 0)
            came = 0
            for batch in self.loader:  # a fresh pass: the workers start with the stages set just above
                if PADDING in batch:
                    continue
                if SKIPS_ONLY in batch:
                    self._held.hold(batch)
                    continue
                came += 1
                if drop:
                    drop -= 1
                    # carried by a batch consumed before the checkpoint: counted (and logged) then
                    self._held.clear()
                else:
                    self._held.carry(batch)
                    yield batch
                position += 1
                if self.num_batches is not None and position >= self.num_batches:
                    return
            if came == 0 and (position == 0 or repeat > 0):
                self.take_held()  # the warnings the message points to
                raise ConfigError(f"data.{self.name}_shards: no {self.name} batch came out of {self.spec!r}: every "
                                  f"shard/sample was skipped or a worker had fewer than batch_size={self.batch_size} "
                                  f"good samples (see warnings above)")
            if self.num_batches is None:
                return
            repeat += 1  # a finite stream shorter than the fixed epoch: read it again, reshuffled
