# The plots of `slearn_dist report` (src/report/report.cpp), drawn with matplotlib from the series the report
# wrote (series.json): the binary embeds this text at build time and runs it with the system python3, as
#   python3 -I -c <this text> SERIES_JSON OUT_DIR PARENT_PID
# It draws every plot named in series["plots"] into OUT_DIR, each written to a temporary name there and renamed
# into place, and writes nowhere else. Exit 3: matplotlib cannot be imported (the caller names the package);
# any other failure: a traceback and a non-zero exit.
import json
import os
import sys


def end_with_parent(parent):
    # Drawing takes a second or two; if the process that started us is killed meanwhile (its launcher died,
    # say), we must not go on writing into a directory that a resumed run is about to clear: Linux kills us
    # with it (PR_SET_PDEATHSIG = 1, SIGKILL = 9). Without ctypes or prctl, the plots are drawn as before.
    try:
        import ctypes
        ctypes.CDLL(None).prctl(1, 9)
    except (ImportError, OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the prctl took hold
        os._exit(4)


if len(sys.argv) > 3:
    end_with_parent(int(sys.argv[3]))

try:
    import matplotlib
    matplotlib.use("Agg")  # no display on a cluster node
    import matplotlib.pyplot as plt
except ImportError as e:
    print(f"matplotlib cannot be imported by {sys.executable}: {e}", file=sys.stderr)
    sys.exit(3)

series_path, out_dir = sys.argv[1], os.path.realpath(sys.argv[2])
with open(series_path, encoding="utf-8") as f:
    series = json.load(f)
unit = series["unit"]
title = series["title"]


def save(fig, name):
    # Only a plain file name, only in out_dir: the report owns that directory and nothing else.
    if os.path.basename(name) != name or not name.endswith(".png"):
        raise ValueError(f"refusing to write {name!r}: not a plain .png name")
    final = os.path.join(out_dir, name)
    tmp = f"{final}.tmp.{os.getpid()}"
    fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


def training(name):
    # Loss and learning rate against the optimizer step; later rounds continue the step count of the earlier
    # ones, with a dotted line where each round starts.
    fig, (loss_ax, lr_ax) = plt.subplots(2, 1, sharex=True, figsize=(8, 6))
    offset = 0
    for part in series["training"]:
        steps = [s + offset for s in part["step"]]
        label = f"round {part['round']}" if len(series["training"]) > 1 else None
        # null losses (a step skipped for a non-finite value) are gaps in the line
        loss = [float("nan") if v is None else v for v in part["loss"]]
        loss_ax.plot(steps, loss, marker="." if len(steps) < 40 else None, label=label)
        lr_ax.plot(steps, part["learning_rate"], label=label)
        if offset > 0:
            for ax in (loss_ax, lr_ax):
                ax.axvline(offset + 0.5, color="grey", linestyle=":", linewidth=1)
        offset = steps[-1] if steps else offset
    loss_ax.set_ylabel("training loss")
    loss_ax.set_title(f"Training loss and learning rate: {title}")
    loss_ax.grid(alpha=0.3)
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_xlabel("optimizer step" + (" (all rounds)" if len(series["training"]) > 1 else ""))
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    lr_ax.grid(alpha=0.3)
    if len(series["training"]) > 1:
        loss_ax.legend()
    save(fig, name)


def accuracy(name):
    acc = series["accuracy"]
    rounds = series["rounds"]
    panels = 2 if len(rounds) > 1 else 1
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels + 1, 4.5), squeeze=False)
    ax = axes[0][0]
    labels, values, colors = [], [], []
    for key, label, color in (("before", "before training", "tab:grey"), ("after", "after training", "tab:blue"),
                              ("baseline_after", "baseline after\n(train_on: all)", "tab:orange")):
        if acc.get(key) is not None:
            labels.append(label)
            values.append(100.0 * acc[key])
            colors.append(color)
    bars = ax.bar(labels, values, color=colors)
    ax.bar_label(bars, fmt="%.1f%%")
    if not values:
        ax.text(0.5, 0.5, "no validation set evaluated", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylim(0, 110)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"Validation accuracy ({acc['eval_records']} records)")
    if panels == 2:
        ax = axes[0][1]
        names = [f"round {r['round']}" for r in rounds]
        correct = [100.0 * (r["answered"] - r["incorrect"]) / max(1, r["answered"]) for r in rounds]
        bars = ax.bar(names, correct, color="tab:green")
        ax.bar_label(bars, labels=[f"{r['answered'] - r['incorrect']}/{r['answered']}" for r in rounds])
        ax.set_ylim(0, 110)
        ax.set_ylabel("answered correctly (%)")
        ax.set_title("Each round's questions\n(round r: those wrong in round r-1)")
    fig.suptitle(title)
    fig.tight_layout()
    save(fig, name)


def stages(name):
    runs = [("this run", series["stages"])]
    if series.get("baseline_stages") is not None:
        runs.append(("baseline (train_on: all)", series["baseline_stages"]))
    names = []
    for _, run_stages in runs:
        names += [s["stage"] for s in run_stages if s["stage"] not in names]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    width = 0.8 / len(runs)
    for panel, (key, label) in enumerate((("wall_seconds", "wall time (s)"), ("device_hours", unit))):
        ax = axes[panel]
        for i, (run_label, run_stages) in enumerate(runs):
            by_name = {s["stage"]: s for s in run_stages}
            values = [by_name[n][key] if n in by_name else 0.0 for n in names]
            xs = [x + (i - (len(runs) - 1) / 2) * width for x in range(len(names))]
            bars = ax.bar(xs, values, width, label=run_label)
            # the values written on the bars: a stage of a few milliseconds has no visible bar
            ax.bar_label(bars, labels=[f"{v:.3g}" for v in values], fontsize=8)
        ax.set_xticks(range(len(names)), names)
        ax.set_xlabel("stage")
        ax.set_ylabel(label)
        ax.set_title(f"Time per stage: {label}")
        ax.margins(y=0.12)
        ax.grid(axis="y", alpha=0.3)
        if len(runs) > 1:
            ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    save(fig, name)


set_labels = {"answers": "training data (round 1)", "eval before": "validation, before training",
              "eval after": "validation, after training"}


def judge(name):
    sets = series["judge"]
    scored = [s for s in sets if s["scores"]]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if scored:
        bins = [x - 0.5 for x in range(12)]  # scores 0..10, one bar each
        ax.hist([s["scores"] for s in scored], bins=bins, label=[set_labels.get(s["name"], s["name"]) for s in scored])
        ax.set_xticks(range(11))
        ax.set_xlabel("judge score (0-10)")
        ax.set_ylabel("answers")
        ax.set_title("Judge scores (answers decided without a score are not counted)")
        ax.legend()
    else:
        # No judgement carries a score (a rule judge decides by verdict alone): the verdicts are what there is.
        names = [set_labels.get(s["name"], s["name"]) for s in sets]
        width = 0.4
        xs = range(len(names))
        correct = ax.bar([x - width / 2 for x in xs], [s["correct"] for s in sets], width, label="correct",
                         color="tab:green")
        wrong = ax.bar([x + width / 2 for x in xs], [s["incorrect"] for s in sets], width, label="incorrect",
                       color="tab:red")
        ax.bar_label(correct)
        ax.bar_label(wrong)
        ax.set_xticks(list(xs), names)
        ax.set_xlabel("set of answers")
        ax.set_ylabel("answers")
        ax.margins(y=0.15)
        ax.set_title("Judge verdicts (this judge writes no scores)")
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    save(fig, name)


drawers = {"training": training, "accuracy": accuracy, "stages": stages, "judge": judge}
for plot in series["plots"]:
    drawers[plot["kind"]](plot["file"])
