"""The model families by `model.family`, without importing them (a config validates without torch models).

Adding a family: a module under training/models/ with a `training.family.Family` subclass whose
scorer is a `training.models.scoring_module.ScoringModule`, and one entry here naming it and the
score components its scorer outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

# model.backbone (pretrained features): GANomaly on the backbone's feature maps, and what it scores
BACKBONE_FAMILY = "training.models.feature_ganomaly:FeatureGANomalyFamily"
BACKBONE_COMPONENTS = frozenset({"patch_residual", "patch_knn"})
GENERATOR_COMPONENTS = frozenset({"latent_distance", "residual_mean", "residual_max", "structure_max", "latent_knn",
                                  "latent_lof"})
IMAGE_ONLY_COMPONENTS = frozenset({"structure_max"})  # a window over pixels: no meaning for a table row


@dataclass(frozen=True)
class FamilyEntry:
    family: str  # "module:Class"
    components: frozenset[str]  # the score components its scoring module outputs
    about: str


FAMILIES: dict[str, FamilyEntry] = {
    "ganomaly": FamilyEntry("training.models.ganomaly_family:GANomalyFamily", GENERATOR_COMPONENTS,
                            "GANomaly: encoder-decoder-encoder generator and a discriminator"),
    "autoencoder": FamilyEntry("training.models.autoencoder:AutoencoderFamily", GENERATOR_COMPONENTS,
                               "the reference: GANomaly's generator on the reconstruction loss alone"),
    "anogan": FamilyEntry("training.models.anogan_family:AnoGANFamily",
                          frozenset({"residual_mean", "residual_max", "feature_residual", "latent_knn", "latent_lof"}),
                          "f-AnoGAN: WGAN-GP generator and critic, then an encoder"),
}
