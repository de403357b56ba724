"""What a weight load matched, grouped by module prefix so a mismatch reads at a glance."""
from collections import Counter
from dataclasses import dataclass, field

MAX_SHAPE_EXAMPLES = 5


def key_group(key):
    """'base.layer3.0.conv1.weight' -> 'base.layer3' (likewise 'backbone.'); 'bottleneck.weight' -> 'bottleneck'."""
    parts = key.split(".")
    if parts[0] in ("base", "backbone") and len(parts) > 2:
        return ".".join(parts[:2])
    return parts[0]


def state_signature(state, ignored_prefixes=()):
    """{key: shape} of the tensors a load compares: ignored prefixes and BatchNorm step counters left out.

    Two state dicts with one signature load into each other's models; comparing signatures tells
    which architecture a file fits without building anything from its tensors.
    """
    ignored_prefixes = tuple(ignored_prefixes)
    return {key: tuple(tensor.shape) for key, tensor in state.items()
            if not key.startswith(ignored_prefixes) and not key.endswith("num_batches_tracked")}


def grouped_counts(keys, label):
    """One 'group: count label' line per key group, in first-seen order."""
    counts = Counter(key_group(key) for key in keys)
    return [f"{group}: {count} {label}" for group, count in counts.items()]


@dataclass
class LoadReport:
    """Outcome of copying checkpoint tensors into a model.

    ``mismatched`` maps a key to (checkpoint shape, model shape); ``ignored`` lists checkpoint
    keys skipped on purpose (the training classifier, ImageNet ``fc``); ``kept_initial`` lists
    model keys the source cannot provide by design (non-local blocks absent from ImageNet weights).
    """

    source: str
    loaded: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)
    mismatched: dict = field(default_factory=dict)
    ignored: list = field(default_factory=list)
    kept_initial: list = field(default_factory=list)

    @property
    def ok(self):
        return not (self.missing or self.mismatched or self.unexpected)

    def problem_lines(self):
        lines = grouped_counts(self.missing, "missing")
        lines += grouped_counts(self.mismatched, "wrong shape")
        for key, (found, wanted) in list(self.mismatched.items())[:MAX_SHAPE_EXAMPLES]:
            lines.append(f"{key}: checkpoint {tuple(found)} vs model {tuple(wanted)}")
        lines += grouped_counts(self.unexpected, "unexpected")
        return lines

    def summary(self):
        head = f"{self.source}: loaded {len(self.loaded)} tensors"
        if self.ignored:
            groups = ", ".join(sorted({key_group(key) for key in self.ignored}))
            head += f", ignored {len(self.ignored)} ({groups})"
        lines = self.problem_lines() + grouped_counts(self.kept_initial, "kept at initialisation")
        return "\n".join([head] + [f"  {line}" for line in lines])
