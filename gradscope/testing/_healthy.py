"""``assert_healthy``: the watch's diagnosis shows no error and no warning."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from .._diagnose.finding import KINDS
from .._errors import GradscopeError
from .._naming import describe, suggest
from ._common import Failure, fail, plural

if TYPE_CHECKING:
    from .._watch.watch import Watch

__all__ = ["assert_healthy"]


def _kinds(allow: str | Iterable[str], function: str) -> set[str]:
    items = [allow] if isinstance(allow, str) else allow
    if not isinstance(items, Iterable):
        raise GradscopeError(f"{function}: allow= takes finding kinds, not {describe(allow)}")
    kinds = set()
    for kind in items:
        if not isinstance(kind, str) or kind not in KINDS:
            raise GradscopeError(
                f"{function}: allow= takes finding kinds; {kind!r} is not one"
                f"{suggest(kind, KINDS) if isinstance(kind, str) else ''} (kinds: "
                f"{', '.join(KINDS)})"
            )
        kinds.add(kind)
    return kinds


def assert_healthy(
    watch: Watch, *, allow: str | Iterable[str] = (), msg: str | None = None
) -> None:
    """``watch.diagnose()`` has no error and no warning, except the kinds in ``allow``.

    The message lists every finding at once, each with where it was seen and its fix. Info
    findings never fail.

    >>> import torch, gradscope, gradscope.testing as gt
    >>> net = torch.nn.Linear(3, 1)
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
    >>> with gradscope.watch(net, optimizer=opt) as w:
    ...     for _ in range(3):
    ...         opt.zero_grad()
    ...         net(torch.ones(2, 3)).pow(2).mean().backward()
    ...         opt.step()
    >>> gt.assert_healthy(w)
    """
    __tracebackhide__ = True
    function = "assert_healthy"
    from .._watch.watch import Watch

    if not isinstance(watch, Watch):
        raise GradscopeError(
            f"{function}: expected the object gradscope.watch(model) returned, got "
            f"{describe(watch)}; train inside the watch, then pass it here"
        )
    allowed = _kinds(allow, function)
    diagnosis = watch.diagnose()
    bad = [f for f in diagnosis if f.severity in ("error", "warning") and f.kind not in allowed]
    if not bad:
        return
    failures = []
    for finding in bad:
        where = finding.where()
        failures.append(
            Failure(
                f"{finding.severity} {finding.kind}",
                None,
                finding.message
                + (f" [{where}]" if where else "")
                + (f" Fix: {finding.hint}" if finding.hint else ""),
            )
        )
    raise fail(
        function,
        f"the diagnosis of {diagnosis.model or 'the model'} found {plural(len(bad), 'problem')} "
        f"in {plural(diagnosis.passes, 'recorded backward pass', 'recorded backward passes')}",
        failures,
        "each line ends with its most likely fix; allow=['kind', ...] accepts a kind you expect "
        "(print(w.diagnose()) shows the evidence)",
        msg,
    )
