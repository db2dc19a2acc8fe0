"""Reporting: a fixed-width per-parameter table of one backward pass."""

from __future__ import annotations

from dataclasses import dataclass

from .._watch.records import BackwardRecord

__all__ = ["Summary", "SummaryRow"]

_COLUMNS = ("parameter", "shape", "norm", "mean", "std", "abs max", "nan", "inf", "zero%", "note")


@dataclass(frozen=True)
class SummaryRow:
    """One parameter's line of the table; statistics are None when it got no gradient."""

    name: str
    shape: tuple[int, ...]
    norm: float | None
    mean: float | None
    std: float | None
    abs_max: float | None
    nan: int | None
    inf: int | None
    zero_fraction: float | None
    note: str


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3e}"


def _finite_part(numel: int, nonfinite: int) -> str:
    """Says what mean/std/abs max of a NaN/Inf gradient were taken over: its finite elements.

    Without it a row whose finite part is all zero (``0.000e+00``) reads as a contradiction
    next to a row with no finite element at all (``-``).

    >>> _finite_part(6, 2), _finite_part(6, 6)
    ('stats over the 4 finite of 6 elements', 'no finite element')
    """
    finite = numel - nonfinite
    return (
        "no finite element"
        if finite == 0
        else f"stats over the {finite} finite of {numel} elements"
    )


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


@dataclass(frozen=True)
class Summary:
    """Per-parameter statistics of one backward pass; ``str()`` gives a fixed-width table."""

    index: int
    rows: tuple[SummaryRow, ...]
    loss_scale: float | None = None
    errors: int = 0
    failed: bool = False
    dropped: str | None = None

    @classmethod
    def of(cls, record: BackwardRecord) -> Summary:
        """The table of one backward pass."""
        shapes = record.shapes
        order = list(dict.fromkeys(record.aliases.values())) or list(record.grads)
        order += [n for n in [*record.grads, *record.missing, *record.frozen] if n not in order]
        rows = []
        for name in order:
            grad = record.grads.get(name)
            if grad is None:
                note = "frozen" if name in record.frozen else "no gradient"
                if name not in record.frozen and name not in record.missing:
                    continue
                rows.append(
                    SummaryRow(
                        name, shapes.get(name, ()), None, None, None, None, None, None, None, note
                    )
                )
                continue
            stats = grad.stats
            notes = []
            if not stats.finite:
                notes.append("NON-FINITE")
                notes.append(_finite_part(stats.numel, stats.nan + stats.inf))
            if not grad.accumulated:
                notes.append("autograd.grad")
            if grad.aliases:
                notes.append("tied: " + ", ".join(grad.aliases))
            if name in record.replaced:
                notes.append("replaced")
            rows.append(
                SummaryRow(
                    name=name,
                    shape=tuple(grad.shape),
                    norm=stats.norm,
                    mean=stats.mean,
                    std=stats.std,
                    abs_max=stats.abs_max,
                    nan=stats.nan,
                    inf=stats.inf,
                    zero_fraction=stats.zero_fraction,
                    note="; ".join(notes),
                )
            )
        return cls(
            record.index,
            tuple(rows),
            record.loss_scale,
            len(record.errors),
            failed=record.failed,
            dropped=record.dropped,
        )

    def _repr_html_(self) -> str:
        """Jupyter/VS Code: the same table in HTML."""
        from .notebook import summary_html

        return summary_html(self)

    def __str__(self) -> str:
        cells = [
            (
                row.name,
                "x".join(map(str, row.shape)) or "-",
                _number(row.norm),
                _number(row.mean),
                _number(row.std),
                _number(row.abs_max),
                _count(row.nan),
                _count(row.inf),
                "-" if row.zero_fraction is None else f"{100 * row.zero_fraction:.1f}",
                row.note,
            )
            for row in self.rows
        ]
        widths = [max(len(c[i]) for c in [_COLUMNS, *cells]) for i in range(len(_COLUMNS))]
        right = {2, 3, 4, 5, 6, 7, 8}

        def line(values: tuple[str, ...]) -> str:
            parts = [
                v.rjust(w) if i in right else v.ljust(w)
                for i, (v, w) in enumerate(zip(values, widths, strict=True))
            ]
            return "  ".join(parts).rstrip()

        title = f"gradscope: backward pass {self.index}, {len(self.rows)} parameters"
        if self.loss_scale is not None:
            title += f" (statistics unscaled by GradScaler scale {self.loss_scale:g})"
        if self.failed:
            title += "; this pass raised before it finished: only the gradients that arrived"
        if self.dropped == "max_bytes":
            title += '; tensors dropped to stay within max_bytes (keep="all")'
        out = [title, line(_COLUMNS), line(tuple("-" * w for w in widths))]
        out += [line(c) for c in cells]
        if self.errors:
            out.append(f"{self.errors} error(s) inside gradscope's hooks: see watch.errors")
        return "\n".join(out)
