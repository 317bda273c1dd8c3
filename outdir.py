"""The output folder of a training run (`--out`) and the device it trains on: the plumbing under train.py.

Everything a run writes goes through `atomic_write`: a temp file, flushed and fsynced, then renamed into place, so an
output is complete or absent and a killed run never leaves half a file. Model checkpoints are plain dicts
    {"model": state_dict, "config": ModelConfig as a dict, "cls": the model's class name}
read back with weights_only=True; the resumable state of a stage in progress is `<name>.partial.pt` (model,
optimiser, batch generator and random states, step), removed when the stage's model is saved.
"""
import dataclasses
import io
import json
import os
import time
from contextlib import nullcontext

import torch

from model import ModelConfig

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast():
    """bf16 autocast on CUDA (no GradScaler needed), nothing on a CPU: a fresh context for each use."""
    return torch.autocast("cuda", torch.bfloat16) if DEVICE.type == "cuda" else nullcontext()


class Stop(Exception):
    """A problem the user can fix, reported as one line `error: ...` and exit status 1."""


def log(stage, msg):
    print(f"[{stage}] {msg}", flush=True)


class Progress:
    """Calls `tick(done, total, extra)` often; prints a line at most every `every` seconds (and at the end) with
    the rate and the time left."""

    def __init__(self, stage, every, start=0):
        self.stage, self.every, self.start = stage, every, start
        self.t0 = self.last = time.time()

    def tick(self, done, total, extra=""):
        now = time.time()
        if now - self.last > self.every or done == total:
            rate = (done - self.start) / max(now - self.t0, 1e-9)
            log(self.stage, f"{done}/{total}{extra} | {rate:.1f}/s | eta {(total - done) / max(rate, 1e-9):.0f}s")
            self.last = now


def atomic_write(path, content):
    """Write `content` (str or bytes) to path through a fsynced temp file and a rename."""
    tmp = path + ".tmp"
    with open(tmp, "w" if isinstance(content, str) else "wb", **({"encoding": "utf-8"} if isinstance(content, str) else {})) as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class OutDir:
    """The files of one run, by name relative to the folder (an absolute name is taken as it is)."""

    def __init__(self, root):
        self.root = root

    def path(self, name):
        return os.path.join(self.root, name)

    def exists(self, name):
        return os.path.exists(self.path(name))

    def todo(self, stage, name):
        """True when output `name` is still to be made; says so when it is skipped."""
        if self.exists(name):
            log(stage, f"{name} exists, skipped")
            return False
        return True

    def claim(self, fingerprint):
        """Make the folder this run's: write config.json = fingerprint (a dict), or stop if the folder holds another's."""
        want = json.dumps(fingerprint, indent=1)
        if self.exists("config.json") and open(self.path("config.json")).read() != want:
            raise Stop(f"{self.path('config.json')}: {self.root} was made with another config or data set; use a new --out")
        self.write_text("config.json", want)

    def write_text(self, name, text):
        atomic_write(self.path(name), text)

    def save(self, name, obj):
        buf = io.BytesIO()
        torch.save(obj, buf)
        atomic_write(self.path(name), buf.getvalue())

    def load(self, name):
        return torch.load(self.path(name), map_location="cpu", weights_only=True)

    # ------------------------------------------------------------------------- models

    def save_model(self, name, model):
        self.save(name, {"model": model.state_dict(), "config": dataclasses.asdict(model.cfg),
                         "cls": type(model).__name__})

    def load_model(self, cls, name):
        """A saved model, rebuilt from its own config, in eval mode on the device."""
        ck = self.load(name)
        m = cls(ModelConfig(**ck["config"]))
        m.load_state_dict(ck["model"])
        return m.to(DEVICE).eval()

    def new_model(self, cls, cfg, seed, init=None):
        """A fresh model on the device, initialised from `seed`; `init` names a checkpoint to start from: its whole
        state_dict when it holds a model of the same class (a DE copied for distillation), else its encoder
        (pretrain.pt's MLM encoder)."""
        torch.manual_seed(seed)
        m = cls(cfg)
        if init:
            ck = self.load(init)
            (m.load_state_dict if ck.get("cls") == cls.__name__ else m.load_encoder)(ck["model"])
        return m.to(DEVICE)

    # ------------------------------------------------------------------------- a stage in progress

    def save_progress(self, name, model, opt, gen, step):
        """`<name>.partial.pt`: everything a restarted run needs to continue a stage from `step` bit for bit."""
        self.save(f"{name}.partial.pt", {
            "model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(), "step": step,
            "rng": torch.get_rng_state(), "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []})

    def resume(self, name, model, opt, gen):
        """Restore `<name>.partial.pt` into model, optimiser, generator and random states -> its step (0 if none)."""
        if not self.exists(f"{name}.partial.pt"):
            return 0
        ck = self.load(f"{name}.partial.pt")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        gen.set_state(ck["gen"])
        torch.set_rng_state(ck["rng"])
        if ck["cuda_rng"]:
            torch.cuda.set_rng_state_all(ck["cuda_rng"])
        return ck["step"]

    def finish(self, name, model, out):
        """Save the trained model as `out`, then drop the stage's partial state."""
        self.save_model(out, model)
        if self.exists(f"{name}.partial.pt"):
            os.remove(self.path(f"{name}.partial.pt"))
