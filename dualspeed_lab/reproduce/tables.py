"""A results table: rows of Stats (or text) written as Markdown and CSV.

    t = Table("table2", "Table 2: ...", [("Normal", "acc"), ("Speedup", "speedup")])
    t.add("Baseline", [R.acc("baseline", "normal"), R.speedup("baseline")])
    t.markdown(); t.write_csv("table2.csv")

Column kinds: acc (a fraction, shown in %), rel (%), time (s), speedup (×), text (shown as given). Markdown
shows mean ± sample std; the CSV has mean, std and the number of seeds k for each column.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from typing import List, Tuple

from dualspeed_lab.reproduce.stats import Stat


def fmt_stat(st, kind: str) -> str:
    if st is None:
        return "–"
    if isinstance(st, str):
        return st
    if not isinstance(st, Stat):
        st = Stat([float(st)])
    if st.mean is None:
        return "–"
    scale, digits, suffix = {"acc": (100, 1, ""), "rel": (1, 1, ""), "time": (1, 1, ""),
                             "speedup": (1, 2, "×")}[kind]
    text = f"{st.mean * scale:.{digits}f}"
    if st.std is not None:
        text += f" ± {st.std * scale:.{digits}f}"
    return text + suffix


@dataclass
class Table:
    key: str
    title: str
    columns: List[Tuple[str, str]]          # (header, kind: acc | rel | time | speedup | text)
    rows: List[Tuple[str, List[object]]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    def add(self, label: str, values: List[object]) -> None:
        self.rows.append((label, values))

    def markdown(self) -> str:
        head = ["", *[h for h, _ in self.columns]]
        lines = [f"### {self.title}", "", "| " + " | ".join(head) + " |",
                 "|" + "|".join(["---"] + ["---:"] * len(self.columns)) + "|"]
        for label, vals in self.rows:
            cells = [v if kind == "text" else fmt_stat(v, kind) for (h, kind), v in zip(self.columns, vals)]
            lines.append("| " + " | ".join([label] + [str(c) for c in cells]) + " |")
        if self.notes:
            lines += [""] + [f"{n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def write_csv(self, path: str) -> None:
        header = ["row"]
        for h, kind in self.columns:
            header += [h] if kind == "text" else [f"{h} mean", f"{h} std", f"{h} k"]
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            for label, vals in self.rows:
                row = [label]
                for (h, kind), v in zip(self.columns, vals):
                    if kind == "text":
                        row.append(v if v is not None else "")
                        continue
                    if isinstance(v, Stat):
                        st = v
                    elif isinstance(v, (int, float)):
                        st = Stat([float(v)])
                    else:  # None or a placeholder such as "–"
                        st = Stat([])
                    scale = 100 if kind == "acc" else 1
                    row += ["" if st.mean is None else round(st.mean * scale, 4),
                            "" if st.std is None else round(st.std * scale, 4), st.k]
                w.writerow(row)
