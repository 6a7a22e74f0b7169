"""Register the allocation modifiers with llmcompressor's ``ModifierFactory`` (on import).

YAML recipes resolve modifiers by bare class name; llmcompressor discovers only its own
package, so outside classes must be registered explicitly.
"""

from llmcompressor.modifiers import ModifierFactory

from owl_plugin.integrations.llmcompressor.alpha import AlphaAllocationModifier
from owl_plugin.integrations.llmcompressor.atp import ATPAllocationModifier
from owl_plugin.integrations.llmcompressor.base import APPLIED_PROFILES, AllocationModifier
from owl_plugin.integrations.llmcompressor.dlp import DLPAllocationModifier
from owl_plugin.integrations.llmcompressor.owl import OWLAllocationModifier
from owl_plugin.integrations.llmcompressor.saved import ProfileAllocationModifier

ALLOCATION_MODIFIERS = (
    OWLAllocationModifier, AlphaAllocationModifier, DLPAllocationModifier, ATPAllocationModifier,
    ProfileAllocationModifier,
)

for _cls in ALLOCATION_MODIFIERS:
    ModifierFactory.register(_cls.__name__, _cls)

__all__ = ["ALLOCATION_MODIFIERS", "APPLIED_PROFILES", "ATPAllocationModifier", "AllocationModifier",
           "AlphaAllocationModifier", "DLPAllocationModifier", "OWLAllocationModifier", "ProfileAllocationModifier"]
