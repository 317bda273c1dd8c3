"""The output folder of a training run (`--out`) and the device it trains on: the plumbing under train.py.

Everything a run writes goes through `atomic_write`: a temp file, flushed and fsynced, then renamed into place, so an
output is complete or absent and a killed run never leaves half a file. Model checkpoints are plain dicts
    {"model": state_dict, "config": ModelConfig as a dict, "cls": the model's class name}
read back with weights_only=True; the resumable state of a stage in progress is `<name>.partial.pt` (model,
optimiser, batch generator and random states, step), removed when the stage's model is saved.

A folder belongs to one run: its config.json holds what the trained outputs depend on, the training settings and a
SHA-256 of every file of the data set that data.load reads, and a later run with other settings or other data stops
(`claim`), naming what changed. Settings that change nothing trained (see train.UNTRAINED) and the data set's path
may differ. A checkpoint that cannot be read stops the run with its path and how to recover (`load`).
"""
import dataclasses
import hashlib
import io
import json
import os
import pickle
import time
import zipfile
from contextlib import nullcontext

import torch

import data
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
    """Write `content` (str or bytes) to path through a fsynced temp file and a rename; the temp file is removed
    if anything (Ctrl-C included) stops the write, and a write the system refuses (a full disk) is a Stop."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "w" if isinstance(content, str) else "wb", **({"encoding": "utf-8"} if isinstance(content, str) else {})) as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise Stop(f"{path}: cannot write ({e.strerror})") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# What torch.load raises on a file that is not a whole checkpoint (found by feeding it truncated, bit-flipped and
# random files: the error depends on where the damage is).
UNREADABLE = (OSError, EOFError, RuntimeError, pickle.UnpicklingError, ValueError, LookupError)


def chosen(judged):
    """The best of a stage's (step, score) judgements: the highest score, the earliest step among equals."""
    return max(judged, key=lambda j: j[1])  # max keeps the first of equal keys


def data_files(root):
    """The files of a data set that data.load reads, as sorted paths relative to root."""
    names = ["corpus.jsonl", "queries.jsonl", *(f"qrels/{s}.tsv" for s in data.SPLITS), "answers.jsonl",
             "translations.jsonl"]
    if os.path.isdir(os.path.join(root, "unlabelled")):
        names += [f"unlabelled/{n}" for n in os.listdir(os.path.join(root, "unlabelled")) if n.endswith(".txt")]
    return sorted(n for n in names if os.path.isfile(os.path.join(root, n)))


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(root, settings):
    """What a run's trained outputs depend on: {"settings": the training settings, "data": {file: its SHA-256}}."""
    return {"settings": settings, "data": {name: sha256(os.path.join(root, name)) for name in data_files(root)}}


def difference(made, now):
    """The first thing that differs between two fingerprints, worded for the user, or None."""
    old, new = made["settings"], now["settings"]
    for k in [*new, *(k for k in old if k not in new)]:
        if old.get(k) != new.get(k):
            flag, missing = "--" + k.replace("_", "-"), "(no such setting)"
            return f"this folder was trained with {flag} {old.get(k, missing)}, now {new.get(k, missing)}"
    old, new = made["data"], now["data"]
    for name in sorted(set(old) | set(new)):
        if old.get(name) != new.get(name):
            how = "is new" if name not in old else "is gone" if name not in new else "changed"
            return f"the data set's {name} {how} since this folder was made"
    return None


class OutDir:
    """The files of one run, by name relative to the folder (an absolute name is taken as it is). `makers`
    ({output name: the stage that makes it}) lets a message about a damaged file say how to remake it."""

    def __init__(self, root, makers=None):
        self.root, self.makers = root, makers or {}
        self.making = None  # the output the running stage is making (set by todo), recorded in its partial state
        self.new = False    # made by this run (create)

    @classmethod
    def create(cls, root, makers=None):
        """The run folder `root` (--out), made if absent."""
        if os.path.exists(root) and not os.path.isdir(root):
            raise Stop(f"{root}: not a folder (--out)")
        out = cls(root, makers)
        out.new = not os.path.exists(root)
        try:
            os.makedirs(root, exist_ok=True)
        except OSError as e:
            raise Stop(f"{root}: cannot make the folder ({e.strerror}) (--out)") from None
        return out

    def remove_if_new(self):
        """Undo `create` and `claim` of a folder this run made, once it holds no more than config.json and the
        tokenizer: a run that stops before training leaves no folder behind."""
        if self.new and set(os.listdir(self.root)) <= {"config.json", "tokenizer.json"}:
            for name in os.listdir(self.root):
                os.remove(self.path(name))
            os.rmdir(self.root)

    def path(self, name):
        return os.path.join(self.root, name)

    def exists(self, name):
        return os.path.exists(self.path(name))

    def drop(self, name):
        if self.exists(name):
            os.remove(self.path(name))

    def todo(self, stage, name):
        """True when output `name` is still to be made (the partial states saved from now on record it, see
        `tidy`); says so when it is skipped."""
        if self.exists(name):
            log(stage, f"{name} exists, skipped")
            return False
        self.making = name
        return True

    def claim(self, data_root, settings):
        """Make the folder this run's: write config.json = fingerprint(data_root, settings), or stop, naming the
        first setting or data file that differs from the run that made the folder."""
        made_now = fingerprint(data_root, settings)
        if self.exists("config.json"):
            made = self.read_json("config.json", "a config.json of train.py", "; use a new --out")
            if not (isinstance(made, dict) and isinstance(made.get("settings"), dict) and isinstance(made.get("data"), dict)):
                raise Stop(f"{self.path('config.json')}: not a config.json of this version of train.py; use a new --out")
            if why := difference(made, made_now):
                raise Stop(f"{self.path('config.json')}: {why}; use a new --out")
        self.write_text("config.json", json.dumps(made_now, indent=1) + "\n")

    def settings(self):
        """The training settings of the run that made the folder (its config.json)."""
        made = self.read_json("config.json", "a config.json of train.py")
        if not (isinstance(made, dict) and isinstance(made.get("settings"), dict)):
            raise Stop(f"{self.path('config.json')}: not a config.json of this version of train.py")
        return made["settings"]

    def tidy(self):
        """At the start of a run: stop at a damaged checkpoint (`*.pt` that is not a whole zip file, torch's format:
        empty, truncated, garbage), and remove what an earlier run killed at the wrong moment can leave: temp files,
        and a partial state whose stage's output exists (killed between saving the model and removing the partial)."""
        for name in sorted(os.listdir(self.root)):
            if name.endswith(".pt") and os.path.isfile(self.path(name)) and not zipfile.is_zipfile(self.path(name)):
                raise self.unreadable(name)
        if self.exists("runs") and not os.path.isdir(self.path("runs")):
            raise Stop(f"{self.path('runs')}: not a folder; delete it and run again: stage eval will remake it")
        for folder in (self.root, self.path("runs")):
            for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
                path = os.path.join(folder, name)
                if name.endswith(".tmp") and os.path.isfile(path):
                    os.remove(path)
                    log("out", f"removed {path}, left by a run that was stopped")
        for name in sorted(os.listdir(self.root)):
            if name.endswith(".partial.pt"):
                ck = self.load(name)
                makes = ck.get("makes") if isinstance(ck, dict) else None
                if makes and self.exists(makes):
                    os.remove(self.path(name))
                    log("out", f"removed {name}: {makes} is finished")

    def load_tokenizer(self, name="tokenizer.json"):
        try:
            return data.load_tokenizer(self.path(name))
        except Exception as e:  # the tokenizers library raises a bare Exception for any file it cannot parse
            raise Stop(f"{self.path(name)}: not a readable tokenizer ({e}); delete it and run again: "
                       f"{self.remade(name)}") from None

    def write_text(self, name, text):
        atomic_write(self.path(name), text)

    def read_json(self, name, what, fix=""):
        """The JSON file `name`, or stop: `{path}: not {what} (why){fix}`."""
        try:
            with open(self.path(name), encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError) as e:  # ValueError: bad JSON or not UTF-8
            raise Stop(f"{self.path(name)}: not {what} ({e.strerror if isinstance(e, OSError) else e}){fix}") from None

    def save(self, name, obj):
        buf = io.BytesIO()
        torch.save(obj, buf)
        atomic_write(self.path(name), buf.getvalue())

    def load(self, name):
        """A file saved by `save`; one that cannot be read (empty, truncated, garbage) stops the run with its path
        and how to recover."""
        path = self.path(name)
        if not os.path.isfile(path):
            raise Stop(f"{path}: not found" if not os.path.exists(path) else f"{path}: not a file")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except UNREADABLE:
            raise self.unreadable(name) from None

    def unreadable(self, name):
        why = "empty" if os.path.getsize(self.path(name)) == 0 else "truncated?"
        return Stop(f"{self.path(name)}: not a readable checkpoint ({why}); delete it and run again: {self.remade(name)}")

    def remade(self, name):
        base = os.path.basename(name)
        if base.endswith(".partial.pt"):
            return f"{base[:-len('.partial.pt')]} restarts from step 0"
        return f"stage {self.makers[base]} will remake it" if base in self.makers else "the stage that made it will remake it"

    # ------------------------------------------------------------------------- models

    def save_model(self, name, model):
        self.save(name, {"model": model.state_dict(), "config": dataclasses.asdict(model.cfg),
                         "cls": type(model).__name__})

    def load_checkpoint(self, name):
        """A model checkpoint {"model", "config", "cls"}; anything else stops the run."""
        ck = self.load(name)
        if not (isinstance(ck, dict) and {"model", "config", "cls"} <= set(ck) and isinstance(ck["config"], dict)):
            raise Stop(f"{self.path(name)}: not a model checkpoint of train.py")
        return ck

    def load_model(self, cls, name):
        """A saved model of class `cls`, rebuilt from its own config, in eval mode on the device."""
        ck = self.load_checkpoint(name)
        if ck["cls"] != cls.__name__:
            raise Stop(f"{self.path(name)}: holds a model of class {ck['cls']}, not {cls.__name__}")
        try:
            cfg = ModelConfig(**ck["config"])
        except TypeError as e:  # a field this model.py does not know, or lacks
            raise Stop(f"{self.path(name)}: its model config does not fit this version of model.py ({e})") from None
        m = cls(cfg)
        try:
            m.load_state_dict(ck["model"])
        except RuntimeError:
            raise Stop(f"{self.path(name)}: its weights do not fit a {cls.__name__} of its own config") from None
        return m.to(DEVICE).eval()

    def new_model(self, cls, cfg, seed, init=None):
        """A fresh model on the device, initialised from `seed`; `init` names a checkpoint to start from: its whole
        state_dict when it holds a model of the same class (a DE copied for distillation), else its encoder
        (pretrain.pt's MLM encoder)."""
        torch.manual_seed(seed)
        m = cls(cfg)
        if init:
            ck = self.load_checkpoint(init)
            try:
                (m.load_state_dict if ck["cls"] == cls.__name__ else m.load_encoder)(ck["model"])
            except RuntimeError:  # another shape: a file from another run folder
                raise Stop(f"{self.path(init)}: its weights do not fit this run's {cls.__name__}") from None
        return m.to(DEVICE)

    # ------------------------------------------------------------------------- a stage in progress

    def save_progress(self, name, model, opt, gen, step, **extra):
        """`<name>.partial.pt`: everything a restarted run needs to continue a stage from `step` bit for bit, and the
        output the stage is making (and `extra` entries)."""
        self.save(f"{name}.partial.pt", {
            "model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(), "step": step, "makes": self.making,
            "rng": torch.get_rng_state(), "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            **extra})

    def resume(self, name, model, opt, gen):
        """Restore `<name>.partial.pt` into model, optimiser, generator and random states -> (its step, the whole
        partial state, with save_progress's `extra` entries): (0, {}) if none."""
        if not self.exists(f"{name}.partial.pt"):
            return 0, {}
        ck = self.load(f"{name}.partial.pt")
        bad = Stop(f"{self.path(name + '.partial.pt')}: not a partial state of this stage; delete it and run again: "
                   f"{name} restarts from step 0")
        if not (isinstance(ck, dict) and {"model", "opt", "gen", "step", "rng", "cuda_rng"} <= set(ck)):
            raise bad
        try:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["opt"])
        except (RuntimeError, ValueError):  # another shape or optimiser: a file from another run folder
            raise bad from None
        gen.set_state(ck["gen"])
        torch.set_rng_state(ck["rng"])
        if ck["cuda_rng"]:
            torch.cuda.set_rng_state_all(ck["cuda_rng"])
        return ck["step"], ck

    def load_chosen(self, name, model, save_as, judged, best, every):
        """fit's checkpoint choice: load the weights `best` of the chosen judgement (`chosen`) into model, and write
        every judgement and the choice to <save_as stem>.select.json."""
        step, score = chosen(judged)
        log(name, f"chosen on dev: step {step} of {judged[-1][0]} (p+ first among C(q) {score:.3f})")
        self.write_text(save_as.replace(".pt", ".select.json"), json.dumps(
            {"every": every, "step": step, "rate": round(score, 4), "judged": [[s, round(r, 4)] for s, r in judged]},
            indent=1) + "\n")
        model.load_state_dict(best)

    def finish(self, name, model, out):
        """Save the trained model as `out`, then drop the stage's partial state."""
        self.save_model(out, model)
        self.drop(f"{name}.partial.pt")
