"""train.py's command line: its flags, the config flags made from the commented `Config`, and the stage runner.

The config flags make train.py's `Config` the one place where a setting, its default, its help text and its
allowed values are written:

    @dataclass
    class Config:
        # networks                             <- a comment line opens a group of flags
        dim: int = 128       # channels, in [1, inf)          <- help text, and the values --dim accepts
        pooling: str = "cls" # DE pooling, one of {cls, mean}

    ap = Parser()
    add_config_flags(ap, Config)               # --dim, --pooling, ...: one flag per field, help = its comment
    cfg = config_from_args(ap.parse_args(), Config(**preset))   # given flags replace the preset's; all checked

A comment may end with `in [lo, hi]` (brackets as in mathematics: `(` excludes, `inf` allowed) or `one of {a, b}`;
a float must be finite, an int below 2**31 (seeds and sizes reach torch as 64-bit integers, some multiplied).
Booleans accept true/false, yes/no, 1/0 and nothing else. Every problem is a FlagError with one line that names the
flag.
"""
import argparse
import dataclasses
import inspect
import math
import os
import re
import time

import dist
from outdir import Stop, log

RANGE = re.compile(r"in ([\[(])([^,]+), ([^\])]+)([\])])$")
CHOICES = re.compile(r"one of \{(.*)\}$")
INT_LIMIT = 2 ** 31


class FlagError(ValueError):
    """A bad flag or config value, worded as one line."""


class Parser(argparse.ArgumentParser):
    """argparse that raises FlagError (one line) instead of printing the usage and exiting with status 2."""

    def error(self, message):
        raise FlagError(message)


def parse_bool(text):
    low = text.lower()
    if low in ("1", "true", "yes"):
        return True
    if low in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean (true/false, yes/no, 1/0)")


def comments(cls):
    """The comments in the dataclass's source: ({field: its comment}, [(group title, [fields])])."""
    helps, groups = {}, [("", [])]
    for line in inspect.getsource(cls).splitlines():
        if m := re.match(r"\s+# (.*)", line):
            groups.append((m.group(1), []))
        elif m := re.match(r"\s+(\w+): \w+ = .*?# (.*)", line):
            helps[m.group(1)] = m.group(2).strip()
            groups[-1][1].append(m.group(1))
    return helps, [g for g in groups if g[1]]


def add_config_flags(ap, cls):
    """One flag --field-name per dataclass field, in the field's group, with its comment as help. Defaults are None,
    so that config_from_args can tell a flag that was given from one that was not."""
    helps, groups = comments(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    missing = set(fields) - set(helps)
    assert not missing, f"{cls.__name__} fields without a comment: {sorted(missing)}"
    for title, names in groups:
        group = ap.add_argument_group(f"config: {title}")
        for name in names:
            f = fields[name]
            group.add_argument("--" + name.replace("_", "-"), dest=name, type=parse_bool if f.type is bool else f.type,
                               metavar=f.type.__name__.upper(), help=f"{helps[name]} (default {f.default})")


def problem(value, comment):
    """What is wrong with `value` against the range or choices its comment states, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    if isinstance(value, int) and abs(value) >= INT_LIMIT:
        return f"must be below {INT_LIMIT}"
    if m := CHOICES.search(comment):
        allowed = [a.strip() for a in m.group(1).split(",")]
        return None if value in allowed else f"choose from {', '.join(allowed)}"
    if m := RANGE.search(comment):
        left, lo, hi, right = m.group(1), float(m.group(2)), float(m.group(3)), m.group(4)
        ok = (lo <= value if left == "[" else lo < value) and (value <= hi if right == "]" else value < hi)
        return None if ok else f"must be {m.group(0)}"
    return None


def check(cfg):
    """Every field of a config against its comment's range or choices; raises FlagError naming the first bad one."""
    helps, _ = comments(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if why := problem(value, helps[f.name]):
            raise FlagError(f"--{f.name.replace('_', '-')} {value!r}: {why}")


def config_from_args(args, base):
    """`base` (a config dataclass) with every field given on the command line replaced, then checked."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(base) if getattr(args, f.name) is not None}
    cfg = dataclasses.replace(base, **given)
    check(cfg)
    return cfg


def parse_args(argv, doc, config_cls, presets, stage_names, synth_size):
    """train.py's flags and the config flags -> (args, config, selected stage names). --data and --out default to
    the preset's synthetic benchmark data/<preset's size> (args.synth: write it when absent) and out/<preset>."""
    ap = Parser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="BEIR-layout data set (default: data/<size>, the preset's synthetic benchmark, "
                    "written by data.py synth if absent)")
    ap.add_argument("--out", help="outputs and checkpoints (default: out/<preset>)")
    ap.add_argument("--preset", choices=list(presets), default="tiny", help="defaults for the config flags")
    ap.add_argument("--stages", default=",".join(stage_names), help=f"comma-separated, any of {','.join(stage_names)}")
    ap.add_argument("--threads", type=int, help="CPU threads (default: torch's, one per core)")
    ap.add_argument("--encode", metavar="CKPT", help="only search: a DE saved by a run (its folder gives the tokenizer "
                    "and config) over --data's corpus, the top --eval-k for each query of --split")
    ap.add_argument("--split", default="test", help="with --encode: the queries to search")
    ap.add_argument("--run", default="run.trec", help="with --encode: the TREC run to write")
    add_config_flags(ap, config_cls)
    args = ap.parse_args(argv)
    cfg = config_from_args(args, config_cls(**presets[args.preset]))
    stages = args.stages.split(",")
    if any(s not in stage_names for s in stages):
        raise FlagError(f"--stages {args.stages!r}: unknown stage; choose from {', '.join(stage_names)}")
    if args.threads is not None and args.threads < 1:
        raise FlagError(f"--threads {args.threads}: must be in [1, inf)")
    args.synth = args.data is None
    args.data = args.data or os.path.join("data", synth_size[args.preset])
    args.out = args.out or os.path.join("out", args.preset)
    return args, cfg, stages


def write_synth(path, size):
    """The synthetic benchmark of `size` at `path` (train.py's default --data), written whole or not at all."""
    import shutil
    import synth
    shutil.rmtree(path + ".tmp", ignore_errors=True)
    try:
        synth.generate(path + ".tmp", size, 0)
        os.replace(path + ".tmp", path)
    finally:
        shutil.rmtree(path + ".tmp", ignore_errors=True)
    print(f"wrote the {size} synthetic benchmark to {path}")


def run_folder(args, cfg, makers):
    """The run folder (under torchrun rank 0 alone writes), claimed for these settings and data set (OutDir.claim),
    tidied, with its tokenizer loaded where one exists."""
    out = dist.outdir(args.out, makers)
    out.claim(args.data, {k: v for k, v in dataclasses.asdict(cfg).items() if k not in UNTRAINED})
    out.tidy()
    if out.exists("tokenizer.json"):
        out.load_tokenizer()
    return out


def check_inputs(stages, selected, lacks, out):
    """Before any stage runs: every input of a selected stage that the data set can feed (`lacks(name)` is None) is
    in the run folder `out` or made by such a stage before it; else stop, naming the stage to add."""
    maker = {name: s.name for s in stages for name in s.makes}
    made = set()
    for stage in stages:
        if stage.name not in selected or lacks(stage.name):
            continue
        for name in stage.needs:
            if name not in made and not out.exists(name):
                raise Stop(f"{out.path(name)}: not found; stage {stage.name} needs it: add stage {maker[name]} to --stages")
        made.update(stage.makes)


def run_stages(stages, selected, cfg, d, out):
    """Run the selected stages in table order (check_inputs has found their inputs). A stage the data set cannot
    feed is skipped with its reason (d.lacks)."""
    times, t_all = {}, time.time()
    for stage in stages:
        if stage.name not in selected:
            continue
        if why := d.lacks(stage.name):
            log(stage.name, f"skipped: {why}")
            continue
        t0 = time.time()
        stage.run(cfg, d, out)
        times[stage.name] = time.time() - t0
    print("time per stage: " + ", ".join(f"{s} {t:.0f}s" for s, t in times.items()) + f"; total {time.time() - t_all:.0f}s")


def check_corpus(cfg, ds, root):
    """Every query's candidates come from the corpus: it must hold --pool (--teacher-pool, --kd-k) passages beyond its
    positives."""
    most = max(sum(s > 0 for s in rel.values()) for split in ds.qrels.values() for rel in split.values())
    need = max(cfg.pool, cfg.teacher_pool, cfg.kd_k) + most
    if len(ds.pids) < need:
        raise Stop(f"{root}/corpus.jsonl:0: {len(ds.pids)} passages; --pool, --teacher-pool and --kd-k need {need}")


# Settings that change nothing trained (a resumed stage is exact whatever ckpt_every): left out of a run folder's
# fingerprint (OutDir.claim), so later runs in the folder may change them.
UNTRAINED = {"eval_k", "log_every", "ckpt_every"}


def check_config(cfg, world=1):
    """The rules between train.Config's fields (each field's own range is checked by `check`, from its comment), and
    under torchrun with `world` processes, batches they can share equally."""
    for ok, problem in [(cfg.dim % cfg.n_heads == 0, "--dim must be a multiple of --n-heads"),
                        (cfg.vocab_size == 0 or cfg.vocab_size >= 64, "--vocab-size must be 0 (sized to the data) or >= 64"),
                        (cfg.rank_negs <= cfg.teacher_pool, "--rank-negs must be at most --teacher-pool"),
                        (cfg.negatives <= cfg.pool, "--negatives must be at most --pool"),
                        (cfg.batch % world == 0 and cfg.rank_batch % world == 0,
                         f"--batch {cfg.batch} and --rank-batch {cfg.rank_batch} must be multiples of the {world} "
                         "processes of torchrun (each takes an equal share of a batch)")]:
        if not ok:
            raise Stop(problem)
