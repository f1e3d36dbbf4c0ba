"""Task accuracy against speed on a user's question set: token-reduction methods at equal per-layer budgets in
PyTorch, and exports on their backend (``luvc-export eval``)."""

from luvc.eval.data import EvalSet, Question, load_eval_set
from luvc.eval.report import write_report
from luvc.eval.results import EvalResults
from luvc.eval.runner import BudgetPoint, EvalFromModel

__all__ = ["BudgetPoint", "EvalFromModel", "EvalResults", "EvalSet", "Question", "load_eval_set", "write_report"]
