"""Models. Each family has a training module (`nn.Module` with named outputs) and an exportable
scoring module whose forward returns the score components and the anomaly map by name."""

from .ganomaly import GANomaly, GANomalyScoring, GANomalyDiscriminator  # noqa: F401
