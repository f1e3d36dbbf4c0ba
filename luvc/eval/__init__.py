"""Task accuracy against speed on a user's question set: token-reduction methods at equal per-layer budgets in
PyTorch, and exports on their backend (``luvc-export eval``). Names load on first use."""

from luvc.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "luvc.eval.data": ("EvalSet", "Question", "load_eval_set"),
        "luvc.eval.points": ("BudgetPoint",),
        "luvc.eval.report": ("write_report",),
        "luvc.eval.results": ("EvalResults",),
        "luvc.eval.runner": ("EvalFromModel",),
    },
)
