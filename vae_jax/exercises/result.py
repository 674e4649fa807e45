"""What a check says: passed or not, and the hint, shown as one verdict line."""

from __future__ import annotations

import dataclasses
import html


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """The verdict on a learner's function: `passed`, and a one-sentence `hint` (empty when
    it passed). Printed or displayed in a notebook it is one line."""

    name: str
    passed: bool
    hint: str = ""

    def __str__(self) -> str:
        if self.passed:
            return f"✓ {self.name}: passed"
        return f"✗ {self.name}: {self.hint}"

    __repr__ = __str__

    def _repr_html_(self) -> str:
        colour, background = ("#1a7f37", "#dafbe1") if self.passed else ("#9a3412", "#fff1e6")
        return (f'<div style="border-left: 4px solid {colour}; background: {background}; '
                f'color: #1f2328; padding: 6px 10px; font-family: sans-serif">'
                f"{html.escape(str(self))}</div>")

    def as_dict(self) -> dict:
        """`{"name", "passed", "hint"}`, for JSON."""
        return dataclasses.asdict(self)
