"""Task accuracy against speed on a user's question set: token-reduction methods at equal per-layer budgets in
PyTorch, and exports on their backend (``luvc-export eval``). Names load on first use."""

from luvc.lazy import lazy_exports

_EXPORTS = {
    "BudgetPoint": "luvc.eval.points",
    "EvalFromModel": "luvc.eval.runner",
    "EvalResults": "luvc.eval.results",
    "EvalSet": "luvc.eval.data",
    "Question": "luvc.eval.data",
    "load_eval_set": "luvc.eval.data",
    "write_report": "luvc.eval.report",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
