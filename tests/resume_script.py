"""Run by test_resume.py (forked from the session's warm interpreter, tests/cli_forks.py): `compclip train` with every
training step recorded, optionally killed.

    resume_script.py RECORD KILL_AT_STEP [key=value ...]

Each training step appends {"step", "epoch", "keys", "lr", "log_logit_scale"} (as the step sees them, before its
update) and its "loss" to the JSON-lines file RECORD. With KILL_AT_STEP >= 0 the process SIGKILLs itself as the step with that
global step begins: no cleanup, no final checkpoint, like a pre-empted job.
"""

import json
import os
import signal
import sys

from lit_compclip.cli import main
from lit_compclip.training.module import CompClip


def recording(record: str, kill_at: int):
    train_step = CompClip.training_step

    def training_step(self, batch, batch_idx):
        if self.global_step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        row = {"step": self.global_step, "epoch": self.current_epoch, "keys": list(batch["key"]),
               "lr": self.trainer.optimizers[0].param_groups[0]["lr"], "log_logit_scale": self.model.log_logit_scale.item()}
        loss = train_step(self, batch, batch_idx)
        row["loss"] = float(loss)  # with dropout in the trained text layers: it depends on the RNG state too
        with open(record, "a") as f:
            f.write(json.dumps(row) + "\n")
        return loss

    return training_step


if __name__ == "__main__":
    CompClip.training_step = recording(sys.argv[1], int(sys.argv[2]))
    sys.exit(main(["train", *sys.argv[3:]]))
