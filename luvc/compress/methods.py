"""Token-reduction methods, compared by ``luvc-export eval`` at equal per-layer budgets: LUVC, its two parts, and
other strategies from the literature.

A method says where visual tokens are reduced: OIM merges them inside the encoder (``merges``), and a pruning
criterion (``luvc.compress.criteria``) drops them in the LLM following the budget point's per-layer budgets. Every
method that prunes gets the same budgets for the same image, so their decoder layers see the same token counts and
cost the same FLOPs; they differ in which tokens they keep (and LUVC's encoder, which merges, in its cost).
``none`` and ``oim-only`` prune nothing: each is one point of its own, whatever the budgets.
"""

from __future__ import annotations

import dataclasses

from luvc.compress.config import SPU_VARIANTS, LUVCConfig
from luvc.compress.criteria import CRITERIA
from luvc.errors import critical

SPU = "spu"  # the criterion of the methods that prune with SPU: the configured SPU variant


@dataclasses.dataclass(frozen=True)
class Method:
    """A token-reduction method: whether OIM merges in the encoder, and the LLM's pruning criterion (``"none"``: no
    pruning; ``"spu"``: the configured SPU variant)."""

    name: str
    summary: str
    merges: bool
    criterion: str

    @property
    def follows_budgets(self) -> bool:
        """Whether the method prunes in the LLM to a budget point's per-layer budgets."""
        return self.criterion != "none"

    def criterion_for(self, base: LUVCConfig) -> str:
        """The ``spu_variant`` this method runs with on top of ``base`` (whose SPU knobs, ``spu_keep``, ``spu_input``
        and ``spu_lowpass``, only the methods that prune with SPU keep)."""
        if self.criterion != SPU:
            return self.criterion
        return base.spu_variant if base.spu_variant in SPU_VARIANTS[:-1] else SPU_VARIANTS[0]

    @property
    def export_refusal(self) -> str | None:
        """Why this method cannot be exported (``None``: it exports with static budgets, as LUVC)."""
        return CRITERIA[self.criterion].export_refusal if self.criterion in CRITERIA else None

    def config(self, base: LUVCConfig | None = None, budgets: tuple[int, ...] | None = None) -> LUVCConfig:
        """The method's ``LUVCConfig``: ``base``'s knobs (OIM layers and axes, SPU variant and rho, seed, pivots) with
        the method's merging and criterion, and ``budgets`` (visual tokens entering each decoder layer; ``None``: the
        default schedule) for a method that follows them."""
        if self.name == "none":
            return LUVCConfig.off()
        base = base or LUVCConfig()
        spu_knobs = {} if self.criterion == SPU else {"spu_keep": None, "spu_input": None, "spu_lowpass": None}
        return dataclasses.replace(
            base,
            oim_layers=base.oim_layers if self.merges else (),
            spu_variant=self.criterion_for(base),
            budgets=budgets if self.follows_budgets else None,
            **spu_knobs,
        )


METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        Method("none", "the uncompressed model (the reference every agreement is measured against)", False, "none"),
        Method("luvc", "LUVC: OIM merges in the encoder, SPU prunes in the LLM", True, SPU),
        Method("spu-only", "SPU alone: the encoder's tokens are pruned in the LLM, no merging", False, SPU),
        Method("oim-only", "OIM alone: the encoder merges, the LLM keeps every merged token", True, "none"),
        *(
            Method(name, CRITERIA[name].summary, False, name)
            for name in ("random", "fastv", "dart", "l2-norm", "visionzip", "pdrop", "v2drop", "todre")
        ),
    )
}


def method(name: str) -> Method:
    """The method called ``name``; an unknown name gets an error listing them."""
    if name not in METHODS:
        critical(f"Method {name!r} is not one of {list(METHODS)}.")
    return METHODS[name]


def method_of(config: LUVCConfig) -> str | None:
    """The name of the method a resolved ``config`` runs (``None``: a combination no method names, such as OIM with a
    baseline criterion)."""
    merges = bool(config.oim_layers)
    for candidate in METHODS.values():
        if candidate.merges == merges and candidate.criterion_for(config) == config.spu_variant:
            return candidate.name
    return None
