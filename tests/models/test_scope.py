"""Scope: a call by a module path (so traced graphs name it), adding nothing to the model's state."""

import torch

from luvc.compress.oim import merge_units, plan_oim
from luvc.models.scope import Scope, scopes


def test_scope_calls_its_function_and_adds_no_state():
    layers = scopes(merge_units, 3)
    assert len(layers) == 3 and layers[0] is not layers[1]
    assert list(layers.state_dict()) == [] and list(layers.parameters()) == []
    (step,) = plan_oim([(1, 2, 4)], ["W"])
    units = torch.randn(8, 5)
    assert torch.equal(layers[1](units, step), merge_units(units, step))
    assert "merge_units" in repr(Scope(merge_units))


def test_a_traced_call_is_named_by_its_module_path():
    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unit = Scope(torch.relu)

        def forward(self, x):
            return self.unit(x) + 1

    program = torch.export.export(Model(), (torch.randn(3),))
    stacks = [node.meta.get("nn_module_stack", {}) for node in program.graph.nodes if node.op == "call_function"]
    assert any("unit" in str(stack) for stack in stacks)
