"""Records a later stage keeps in an exported graph's own metadata (``ModelProto.metadata_props``), for the stages
that read the graph after it.

``FloatLmHead``: weight-only calibration (``luvc.calibration.weight_only``) quantizes the LM head to INT8 and records
which float table it came from; the TensorRT builder (``luvc.engines.weight_inputs``) reads the record to multiply by
that table again. The record sits here, below both, so that the builder never imports calibration.
"""

from __future__ import annotations

import dataclasses
import json

import onnx

FLOAT_LM_HEAD_KEY = "luvc.float_lm_head"  # model metadata: ``FloatLmHead``


@dataclasses.dataclass(frozen=True)
class FloatLmHead:
    """Where an INT8 LM head came from, kept in its graph's metadata (``FLOAT_LM_HEAD_KEY``): the float ``table``
    (stored ``(vocab, hidden)``, the tied embedding table the export's embedding graph keeps reading) and the
    ``DequantizeLinear`` output the head's product reads instead. A TensorRT engine that computes the head once per
    request multiplies by that table again (``luvc.engines.weight_inputs.with_float_lm_head``): the table is on the
    device anyway, and TensorRT would keep the INT8 copy inside each engine."""

    table: str
    dequantized: str

    def record(self, model: onnx.ModelProto) -> None:
        """Write this into ``model``'s metadata (replacing an earlier record)."""
        kept = [prop for prop in model.metadata_props if prop.key != FLOAT_LM_HEAD_KEY]
        del model.metadata_props[:]
        model.metadata_props.extend(kept)
        model.metadata_props.add(key=FLOAT_LM_HEAD_KEY, value=json.dumps(dataclasses.asdict(self)))

    @classmethod
    def of(cls, model: onnx.ModelProto) -> FloatLmHead | None:
        """The record in ``model``'s metadata, or None."""
        for prop in model.metadata_props:
            if prop.key == FLOAT_LM_HEAD_KEY:
                return cls(**json.loads(prop.value))
        return None
