"""Which files are cutouts of one object, and a split that keeps each object on one side.

A survey often holds several cutouts of one object (epochs, overlapping tiles,
shifted stamps); split per file, the same galaxy lands in train and in test and
the test score measures memory. A :class:`Grouping` names each file's object
(its *group*), from either

- ``data.group_by``: a regular expression searched (``re.search``) in the
  file's **base name**, whose first group is the object id. The base name, not
  the relative path: the path starts with the class folder (``lenses/``,
  ``nonlenses/``), and the point is to join an object's cutouts across classes;
  for ids that live in folder names, give a CSV. TFRecord data is grouped the
  same way: its file ids are the records' ``filename`` features, the source
  files' relative paths. A file the regex does not match is refused, by name.
- ``data.groups``: a CSV file with a header ``file,group`` (other columns are
  ignored), one row per data file, ``file`` relative to the data folder as
  ``split.json`` names it. A file of the data missing from the CSV, a row naming
  a file the data lacks, a file listed twice or an empty group is refused.

:func:`assign_groups` puts every group wholly in train, val or test (see its
docstring for the algorithm). ``RUN/split.json`` records the rule (the regex,
or the CSV's path and sha256) and the number of groups per part, and a later
stage refuses a run whose rule changed.

Example:
    >>> grouping = Grouping.from_config(DataConfig(group_by=r"^(?:nl_)?(\\d+)_"))
    >>> grouping.group_ids(image_set)[:2]
    ['0', '1']
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Dict, List, Optional, Sequence

import numpy as np

from kerasssl.errors import DataError

#: The parts a group may go to, in the order ties are broken.
PARTS = ("test", "val", "train")


@dataclass(frozen=True)
class Grouping:
    """A rule that names each file's object: a regex (``group_by``) or a CSV (``groups``).

    Args:
        group_by: regex whose first group is the object id in the file's base name.
        groups: path of a ``file,group`` CSV.
        sha256: the CSV's content hash (recorded; a changed CSV is a changed rule).

    Example:
        >>> Grouping(group_by=r"_(\\d+)\\.npy$").record()
        {'group_by': '_(\\\\d+)\\\\.npy$', 'matched_on': 'base name'}
    """

    group_by: Optional[str] = None
    groups: Optional[str] = None
    sha256: Optional[str] = None
    table: Optional[Dict[str, str]] = field(default=None, compare=False, repr=False)

    @classmethod
    def from_config(cls, data_cfg) -> Optional["Grouping"]:
        """The grouping ``data_cfg`` asks for (None: every file its own group).

        A CSV is read and checked for its form here (not yet against the data).

        Raises:
            DataError: the CSV is missing, unreadable or malformed (one line naming it).
        """
        if getattr(data_cfg, "group_by", None) is not None:
            return cls(group_by=data_cfg.group_by)
        path = getattr(data_cfg, "groups", None)
        if path is None:
            return None
        raw = _read_bytes(Path(path))
        return cls(groups=str(path), sha256=hashlib.sha256(raw).hexdigest(), table=_parse_csv(path, raw))

    @classmethod
    def from_record(cls, record) -> Optional["Grouping"]:
        """The grouping a ``split.json`` records (None for a per-file split)."""
        if not record:
            return None
        return cls(group_by=record.get("group_by"), groups=record.get("groups"), sha256=record.get("sha256"))

    def record(self) -> dict:
        """What ``split.json`` holds of the rule (key ``grouping``)."""
        if self.group_by is not None:
            return {"group_by": self.group_by, "matched_on": "base name"}
        return {"groups": self.groups, "sha256": self.sha256}

    def same_rule(self, other: Optional["Grouping"]) -> bool:
        """Whether ``other`` groups files the same way (a CSV by its content, wherever it lies)."""
        if other is None:
            return False
        if self.group_by is not None:
            return other.group_by == self.group_by
        return other.group_by is None and other.sha256 == self.sha256

    def describe(self) -> str:
        if self.group_by is not None:
            return f"data.group_by {self.group_by!r}"
        return f"data.groups {self.groups} (sha256 {str(self.sha256)[:12]})"

    def group_ids(self, image_set) -> List[str]:
        """The object id of each file of ``image_set``, in its order.

        Raises:
            DataError: a file the regex does not match (or whose group is empty);
                the CSV and the data disagree about which files there are.
        """
        files = list(image_set.files)
        if self.group_by is not None:
            pattern = re.compile(self.group_by)
            ids = []
            for f in files:
                m = pattern.search(PurePosixPath(f).name)
                if m is None or not m.group(1):
                    what = "does not match" if m is None else "matches with an empty first group"
                    raise DataError(f"{image_set.root}/{f}", f"data.group_by {self.group_by!r} {what} the file's "
                                    "name; the regex's first group must give every file its object id")
                ids.append(m.group(1))
            return ids
        table = self.table if self.table is not None else _parse_csv(self.groups, _read_bytes(Path(self.groups)))
        missing = [f for f in files if f not in table]
        if missing:
            raise DataError(self.groups, f"has no row for {len(missing)} file(s) of {image_set.root} "
                            f"(e.g. {missing[0]}); every data file needs a group")
        known = set(files)
        extra = [f for f in table if f not in known]
        if extra:
            raise DataError(self.groups, f"names {len(extra)} file(s) absent from {image_set.root} "
                            f"(e.g. {extra[0]}); was it written for other data?")
        return [table[f] for f in files]


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, "groups CSV not found (data.groups / --groups)") from None
    except IsADirectoryError:
        raise DataError(path, "is a folder; data.groups (--groups) names a CSV file") from None
    except OSError as e:
        raise DataError(path, f"cannot read the groups CSV ({e.strerror or type(e).__name__})") from None


def _parse_csv(path, raw: bytes) -> Dict[str, str]:
    """``{file: group}`` from a CSV with a ``file,group`` header (utf-8, an Excel BOM allowed)."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(path, "is not UTF-8 text; expected a CSV with columns file,group") from None
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as e:
        raise DataError(path, f"not a valid CSV ({e})") from None
    header = [h.strip().lower() for h in rows[0]] if rows else []
    if "file" not in header or "group" not in header:
        raise DataError(path, f"needs a header row with columns file,group, got {','.join(header) or 'nothing'}")
    at_file, at_group = header.index("file"), header.index("group")
    table, line_of = {}, {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue  # blank line
        if len(row) <= max(at_file, at_group):
            raise DataError(path, f"line {line}: expected columns file,group, got {len(row)} value(s)")
        name = row[at_file].strip().replace("\\", "/")
        name = name[2:] if name.startswith("./") else name
        group = row[at_group].strip()
        if not name or not group:
            raise DataError(path, f"line {line}: empty {'file' if not name else 'group'}")
        if name in table:
            raise DataError(path, f"line {line}: {name} is listed twice (also line {line_of[name]})")
        table[name], line_of[name] = group, line
    if not table:
        raise DataError(path, "has a header but no rows; expected one row per data file")
    return table


def assign_groups(group_ids: Sequence[str], labels: np.ndarray, n_classes: int, targets: Dict[str, np.ndarray],
                  seed: int, hash_key, root="data", class_names=None, describe="the grouping") -> Dict[str, str]:
    """Put every group wholly in one part, per-class counts as close to the targets as the groups allow.

    Algorithm (greedy, deterministic for a seed):

    1. Groups are taken largest first; groups of one size in the seeded hash
       order of their ids (``hash_key(seed, id)``), so the seed decides which
       objects are held out.
    2. Each goes to the part (test, val, train; a part with target 0 for every
       class, i.e. a zero fraction, is never used) where it raises the squared
       error ``sum_k ((assigned_k - target_k) / n_k)^2`` least: relative per-class
       errors, so a rare class (lenses) weighs as much as a common one, and a
       group mixing classes is placed by all of its classes at once. Ties go to
       the first part in (test, val, train) order.
    3. Repair: while a part lacks a class it needs (every class needs one file
       in train and in each held-out part with a non-zero fraction), the
       smallest group (hash order among equals) holding that class is moved there
       from a part that keeps at least one file of every class it had.
       Each move fills a hole and opens none, so this ends.

    Args:
        group_ids: the object id of each file (files in the data's order).
        labels: class index of each file.
        n_classes: number of classes.
        targets: part name -> per-class target file counts (the per-file split's
            cut sizes); train's target is the rest.
        seed / hash_key: the split's seed and its hash (``hash_key(seed, text)``).
        root / class_names / describe: for the error message.

    Returns:
        ``{group id: part name}``.

    Raises:
        DataError: the groups cannot give every needed part a file of every
            class (too few groups of a class, or classes locked together).

    Example:
        >>> targets = {"test": np.array([1, 1]), "val": np.array([1, 1])}  # train: the rest
        >>> assign_groups(["7", "7", "8", "9", "9", "10"], np.array([0, 1, 0, 1, 0, 1]), 2,
        ...               targets, seed=0, hash_key=hash_rank_key)  # {'7': ..., '9': ..., '8': ..., '10': ...}
    """
    labels = np.asarray(labels)
    members: Dict[str, List[int]] = {}
    for i, g in enumerate(group_ids):
        members.setdefault(g, []).append(i)
    counts = {g: np.bincount(labels[idx], minlength=n_classes) for g, idx in members.items()}
    class_totals = np.bincount(labels, minlength=n_classes)
    weight = 1.0 / np.maximum(class_totals, 1).astype(np.float64) ** 2
    parts = [p for p in PARTS if p == "train" or np.any(targets[p] > 0)]
    target = {p: np.asarray(targets[p], np.float64) for p in parts if p != "train"}
    target["train"] = class_totals - sum(target.values(), np.zeros(n_classes))
    assigned = {p: np.zeros(n_classes, np.int64) for p in parts}
    rank = {g: hash_key(seed, g) for g in members}
    part_of = {}
    for g in sorted(members, key=lambda g: (-len(members[g]), rank[g])):
        c = counts[g]
        # Increase of sum_k w_k (a_k + c_k - t_k)^2 over sum_k w_k (a_k - t_k)^2.
        cost = [float(np.sum(weight * c * (2.0 * (assigned[p] - target[p]) + c))) for p in parts]
        best = parts[int(np.argmin(cost))]
        part_of[g] = best
        assigned[best] += c

    names = class_names or [str(k) for k in range(n_classes)]
    by_size = sorted(members, key=lambda g: (len(members[g]), rank[g]))
    while True:
        holes = [(p, k) for p in parts for k in range(n_classes) if assigned[p][k] == 0]
        if not holes:
            break
        p, k = holes[0]
        mover = next((g for g in by_size if counts[g][k] > 0 and part_of[g] != p
                      and _keeps_classes(assigned[part_of[g]], counts[g])), None)
        if mover is None:
            n_groups = sum(1 for g in members if counts[g][k] > 0)
            raise DataError(root, f"{describe} leaves no group of class {names[k]!r} for {p} "
                            f"(class {names[k]!r} is in {n_groups} group(s), shared with other classes' "
                            f"groups as they are); each class needs images in {len(parts)} groups "
                            f"({', '.join(reversed(parts))}) that can be split apart")
        assigned[part_of[mover]] -= counts[mover]
        assigned[p] += counts[mover]
        part_of[mover] = p
    return part_of


def _keeps_classes(have: np.ndarray, leaving: np.ndarray) -> bool:
    """Whether a part still has a file of every class it has now after ``leaving`` goes."""
    return bool(np.all((have - leaving > 0) | (have == 0)))


def group_counts(part_of: Dict[str, str]) -> Dict[str, int]:
    """Number of groups in each of train, val, test (for ``split.json``)."""
    out = {p: 0 for p in ("train", "val", "test")}
    for p in part_of.values():
        out[p] += 1
    return out


def check_group_counts(group_ids, labels, class_names, parts, root, describe) -> None:
    """Refuse data whose classes lie in fewer groups than parts to fill (before assigning).

    Raises:
        DataError: one line naming the data and the groups per class.
    """
    labels = np.asarray(labels)
    per_class = [len({g for g, lab in zip(group_ids, labels) if lab == k}) for k in range(len(class_names))]
    short = [name for name, n in zip(class_names, per_class) if n < len(parts)]
    if short:
        listed = ", ".join(f"{name} {n}" for name, n in zip(class_names, per_class))
        raise DataError(root, f"{describe} puts class{'es' if len(short) > 1 else ''} "
                        f"{', '.join(map(repr, short))} in too few groups (groups per class: {listed}); "
                        f"each class needs at least {len(parts)} ({', '.join(parts)})")


def describe_groups(image_set, grouping: "Grouping") -> dict:
    """What ``kerasssl inspect --group-by/--groups`` reports of a grouping, before any split.

    Returns:
        ``{"rule", "n_groups", "groups_per_class" (class -> groups holding it),
        "mixed_groups" (groups with images of several classes), "largest_group"}``.

    Example:
        >>> describe_groups(data, Grouping(group_by=r"^(?:nl_)?(\\d+)_"))["mixed_groups"]
        40
    """
    ids = grouping.group_ids(image_set)
    classes: Dict[str, set] = {}
    sizes: Dict[str, int] = {}
    for g, label in zip(ids, np.asarray(image_set.labels).tolist()):
        classes.setdefault(g, set()).add(label)
        sizes[g] = sizes.get(g, 0) + 1
    return {
        "rule": grouping.record(),
        "n_groups": len(sizes),
        "groups_per_class": {name: sum(1 for c in classes.values() if k in c)
                             for k, name in enumerate(image_set.class_names)},
        "mixed_groups": sum(1 for c in classes.values() if len(c) > 1),
        "largest_group": max(sizes.values(), default=0),
    }
